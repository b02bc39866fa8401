#!/usr/bin/env bash
# Runs Vessel's tests: typecheck, lint, then every *.test.ts with Node's test runner.
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh --unit     only fast tests (files not named *.e2e.test.ts)
#   scripts/test.sh --e2e      only end-to-end tests (*.e2e.test.ts: real server, etcd, kubectl)
#   scripts/test.sh --scenarios  the long scenario tests (*.scenario.test.ts: minutes each, several
#                                guests; CI skips them, run them before resolving an issue)
#   scripts/test.sh FILE...    just these files
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

mode=all
files=()
unit=()
e2e=()
for a in "$@"; do
  case "$a" in
    --unit) mode=unit ;;
    --e2e) mode=e2e ;;
    --scenarios) mode=scenarios ;;
    *) files+=("$a") ;;
  esac
done

if [ $mode = scenarios ]; then
  mapfile -t e2e < <(find packages e2e guest -name '*.scenario.test.ts' -not -path '*/node_modules/*' | sort)
elif [ ${#files[@]} -eq 0 ]; then
  echo "== typecheck"; npx tsc -p tsconfig.json --noEmit
  echo "== format"; npx prettier --check . >/dev/null || { npx prettier --list-different .; echo "run npm run format"; exit 1; }
  echo "== lint"; npx eslint --max-warnings=0 .
  [ $mode = e2e ] || mapfile -t unit < <(find packages e2e guest -name '*.test.ts' -not -name '*.e2e.test.ts' -not -name '*.scenario.test.ts' -not -path '*/node_modules/*' | sort)
  [ $mode = unit ] || mapfile -t e2e < <(find packages e2e guest -name '*.e2e.test.ts' -not -path '*/node_modules/*' | sort)
else
  for f in "${files[@]}"; do case "$f" in *.e2e.test.ts | *.scenario.test.ts) e2e+=("$f") ;; *) unit+=("$f") ;; esac; done
fi

# Unit tests run two files at a time. End-to-end files run one at a time: each boots TCG guests
# that need a core of their own, and two at once on a 2-core machine starve each other's guests.
status=0
run() {
  local concurrency=$1; shift
  [ $# -gt 0 ] || return 0
  echo "== tests ($# files, $concurrency at a time)"
  node --import tsx --test --test-concurrency="$concurrency" --test-reporter=spec "$@" || status=1
}
run 2 "${unit[@]}"
run 1 "${e2e[@]}"
exit $status
