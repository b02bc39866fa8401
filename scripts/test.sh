#!/usr/bin/env bash
# Runs Vessel's tests: typecheck, lint, then every *.test.ts with Node's test runner.
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh --unit     only fast tests (files not named *.e2e.test.ts)
#   scripts/test.sh --e2e      only end-to-end tests (*.e2e.test.ts: real server, etcd, kubectl)
#   scripts/test.sh FILE...    just these files
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

mode=all
files=()
for a in "$@"; do
  case "$a" in
    --unit) mode=unit ;;
    --e2e) mode=e2e ;;
    *) files+=("$a") ;;
  esac
done

if [ ${#files[@]} -eq 0 ]; then
  echo "== typecheck"; npx tsc -p tsconfig.json --noEmit
  echo "== lint"; npx eslint --max-warnings=0 .
  case $mode in
    unit) mapfile -t files < <(find packages e2e guest -name '*.test.ts' -not -name '*.e2e.test.ts' -not -path '*/node_modules/*' | sort) ;;
    e2e) mapfile -t files < <(find packages e2e guest -name '*.e2e.test.ts' -not -path '*/node_modules/*' | sort) ;;
    all) mapfile -t files < <(find packages e2e guest -name '*.test.ts' -not -path '*/node_modules/*' | sort) ;;
  esac
fi
echo "== tests (${#files[@]} files)"
exec node --import tsx --test --test-concurrency=2 --test-reporter=spec "${files[@]}"
