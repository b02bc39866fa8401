#!/usr/bin/env bash
# Runs Vessel's tests: typecheck, lint, then every *.test.ts with Node's test runner.
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh --unit     only fast tests (files not named *.e2e.test.ts)
#   scripts/test.sh --e2e      only end-to-end tests (*.e2e.test.ts: real server, etcd, kubectl)
#   scripts/test.sh --scenarios  the long scenario tests (*.scenario.test.ts: minutes each, several
#                                guests; CI skips them, run them before resolving an issue)
#   scripts/test.sh FILE...    just these files
# Unit files run two at a time. An end-to-end file that boots no TCG guest says so with a line
# `// e2e: light` (see LIGHT below); those run two at a time, before the others, which run one at
# a time.
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

# Unit tests run two files at a time. End-to-end files that boot TCG guests run one at a time: a
# guest needs a core of its own, and two such files at once on a 2-core machine starve each
# other's guests. A file that boots none (API, kubectl, importers, network namespaces) marks
# itself with a line `// e2e: light`; the file decides, as it is the one place that knows. Those
# run two at a time: most of their time is waiting on child processes (kubectl, qemu-img, etcd),
# and each uses its own data directory, random port and random namespace names.
LIGHT='^// e2e: light'
light=()
heavy=()
for f in "${e2e[@]}"; do
  if grep -q "$LIGHT" "$f"; then light+=("$f"); else heavy+=("$f"); fi
done
status=0
run() {
  local what=$1 concurrency=$2; shift 2
  [ $# -gt 0 ] || return 0
  echo "== $what ($# files, $concurrency at a time)"
  node --import tsx --test --test-concurrency="$concurrency" --test-reporter=spec "$@" || status=1
}
run 'unit tests' 2 "${unit[@]}"
run 'light e2e tests (no guest)' 2 "${light[@]}"
run 'e2e tests' 1 "${heavy[@]}"
exit $status
