#!/usr/bin/env bash
# The KVM integration tests (test/integration), where they can run: directly when /dev/kvm works,
# otherwise inside scripts/nested_kvm.sh (a QEMU TCG machine with nested SVM, about 20x slower, so
# deadlines are stretched with TSVM_TEST_TIME_SCALE). Ends with one line "N passed, N failed".
# Expects `npm run build` (or `npm test`) to have built dist/tsvm.
set -uo pipefail
cd "$(dirname "$0")/.."
bun=node_modules/.bin/bun
log=$(mktemp)
# vhost_user_linux needs no KVM (QEMU TCG drives tsvm's back-ends): npm test runs it already.
files=$(ls test/integration/*.test.ts | grep -v vhost_user_linux)
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
  TSVM_BIN=dist/tsvm "$bun" test --timeout 300000 $files "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
else
  echo "no usable /dev/kvm here: running the KVM tests in a nested-KVM machine (scripts/nested_kvm.sh)"
  bash scripts/nested_kvm.sh --timeout 4800 -- env TSVM_BIN=dist/tsvm TSVM_TEST_TIME_SCALE=6 TSVM_DEVICE_START_TIMEOUT_MS=90000 TSVM_DEVICE_TIMEOUT_MS=60000 \
    "$bun" test --timeout 1800000 $files "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
fi
# (the nested machine's console ends its lines with \r\n)
clean=$(sed 's/\x1b\[[0-9;]*m//g; s/\r$//' "$log")
p=$(echo "$clean" | grep -E '^ *[0-9]+ pass$' | tail -1 | tr -dc '0-9')
f=$(echo "$clean" | grep -E '^ *[0-9]+ fail$' | tail -1 | tr -dc '0-9')
rm -f "$log"
failed=${f:-0}
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
# No summary at all means the run died before bun test finished: not a pass.
if [ -z "$p" ] && [ -z "$f" ] && [ "$failed" -eq 0 ]; then echo "test_kvm.sh: bun test printed no summary"; failed=1; fi
echo "${p:-0} passed, $failed failed"
[ "$failed" -eq 0 ]
