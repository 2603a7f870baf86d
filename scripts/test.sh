#!/usr/bin/env bash
# The default test suite: build everything, type-check, run `bun test` against the built executable,
# and finish with one line "N passed, N failed" (the type check counts as one test).
set -uo pipefail
cd "$(dirname "$0")/.."
bun=node_modules/.bin/bun
passed=0
failed=0

if ! bash scripts/build.sh; then
  echo "build failed"
  echo "0 passed, 1 failed"
  exit 1
fi

if "$bun" check; then passed=$((passed + 1)); else failed=$((failed + 1)); fi

log=$(mktemp)
TSVM_BIN=dist/tsvm "$bun" test --timeout 120000 "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
p=$(grep -E '^ *[0-9]+ pass$' "$log" | tail -1 | tr -dc '0-9')
f=$(grep -E '^ *[0-9]+ fail$' "$log" | tail -1 | tr -dc '0-9')
rm -f "$log"
passed=$((passed + ${p:-0}))
failed=$((failed + ${f:-0}))
if [ "$status" -ne 0 ] && [ "${f:-0}" -eq 0 ]; then failed=$((failed + 1)); fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
