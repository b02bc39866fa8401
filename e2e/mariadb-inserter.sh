#!/bin/bash
# The MariaDB scenario's writer (e2e/mariadb-migration.scenario.test.ts), run in the Debian guest as
# `inserter HOST`. Every 100 ms: INSERT row n, then SELECT n as its acknowledgement, over one long-lived client.
# On an error or 10 s without an answer: a new client (VESSEL-DB-CONNECT k counts them), which
# resumes after the last row the server has.
trap '' PIPE
export MYSQL_PWD=vessel
k=0
while :; do
  coproc M { exec mariadb --no-defaults -h "$1" -u vessel -D vessel --batch --skip-column-names --unbuffered --skip-reconnect --connect-timeout=5 2>&1; }
  k=$((k + 1))
  echo "SELECT COALESCE(MAX(n), 0) FROM t;" >&"${M[1]}"
  if read -r -t 10 -u "${M[0]}" n && [[ $n =~ ^[0-9]+$ ]]; then
    echo "VESSEL-DB-CONNECT $k after $n"
    next=${EPOCHREALTIME/./}
    while :; do
      i=$((n + 1))
      printf 'INSERT INTO t (n, conn, ts) VALUES (%d, CONNECTION_ID(), NOW(6)); SELECT %d;\n' $i $i >&"${M[1]}" || break
      read -r -t 10 -u "${M[0]}" ack || break
      [ "$ack" = "$i" ] || { echo "VESSEL-DB-ERROR $ack"; break; }
      n=$i
      ((n % 100 == 0)) && echo "VESSEL-DB-ROWS $n"
      next=$((next + 100000)); now=${EPOCHREALTIME/./}; d=$((next - now))
      if ((d > 0)); then sleep "$(printf '0.%06d' $d)"; elif ((d < -1000000)); then next=$now; fi
    done
  fi
  echo "VESSEL-DB-LOST $k"
  kill "$M_PID" 2>/dev/null; wait "$M_PID" 2>/dev/null
  sleep 0.5
done
