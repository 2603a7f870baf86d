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
files=${KVM_TEST_FILES:-$(ls test/integration/*.test.ts | grep -v vhost_user_linux)}
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
  TSVM_BIN=dist/tsvm "$bun" test --timeout 300000 $files "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
else
  # One nested machine per test file, each bounded. Under nested KVM a run now and then hangs (the
  # whole machine printing nothing, or one tsvm run never finishing its guest) and then passes when
  # run again; the cause is not known yet (see README, Tests). A file whose machine prints no
  # summary within FILE_TIMEOUT_S, or whose tests fail, runs once more in a fresh machine, saying so
  # and keeping the first attempt's output above it; only the second attempt's counts count, so a
  # failure that repeats still fails.
  echo "no usable /dev/kvm here: running the KVM tests in nested-KVM machines (scripts/nested_kvm.sh), one per file"
  FILE_TIMEOUT_S=${FILE_TIMEOUT_S:-900}
  status=0
  strip() { sed 's/\x1b\[[0-9;]*m//g; s/\r$//' "$1"; }
  for file in $files; do
    for attempt in 1 2; do
      one=$(mktemp)
      # (TSVM_TEST_DIRECT_DIR: the nested machine's /tmp is a tmpfs without O_DIRECT; the repository,
      # shared through virtio-fs, has it)
      mkdir -p build/nested/direct
      bash scripts/nested_kvm.sh --timeout "$FILE_TIMEOUT_S" -- env TSVM_BIN=dist/tsvm TSVM_TEST_TIME_SCALE=6 TSVM_DEVICE_START_TIMEOUT_MS=90000 TSVM_DEVICE_TIMEOUT_MS=60000 \
        TSVM_TEST_DIRECT_DIR="$(pwd)/build/nested/direct" \
        "$bun" test --timeout 1800000 "$file" "$@" 2>&1 | tee "$one"
      file_status=${PIPESTATUS[0]}
      summary=$(strip "$one" | grep -E '^ *[0-9]+ (pass|fail)$')
      fails=$(echo "$summary" | grep -E 'fail$' | tr -dc '0-9')
      if [ -n "$summary" ] && [ "${fails:-0}" -eq 0 ] && [ "$file_status" -eq 0 ]; then break; fi
      if [ "$attempt" -eq 2 ]; then break; fi
      if [ -z "$summary" ]; then why="printed no summary within ${FILE_TIMEOUT_S} s"; else why="had ${fails:-0} failing tests (exit $file_status)"; fi
      echo "test_kvm.sh: $file $why under nested KVM; running it once more in a fresh machine"
      rm -f "$one"
    done
    if [ -z "$summary" ]; then echo "test_kvm.sh: $file printed no summary twice" | tee -a "$log"; fi
    strip "$one" >> "$log"
    rm -f "$one"
    if [ "$file_status" -ne 0 ]; then status=$file_status; fi
  done
fi
# (the nested machine's console ends its lines with \r\n)
clean=$(sed 's/\x1b\[[0-9;]*m//g; s/\r$//' "$log")
# (one summary per file when run file by file: add them up)
p=$(echo "$clean" | grep -E '^ *[0-9]+ pass$' | tr -dc '0-9\n' | awk 'NF { s += $1; n++ } END { if (n) print s }')
f=$(echo "$clean" | grep -E '^ *[0-9]+ fail$' | tr -dc '0-9\n' | awk 'NF { s += $1; n++ } END { if (n) print s }')
rm -f "$log"
failed=${f:-0}
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
# No summary at all means the run died before bun test finished: not a pass.
if [ -z "$p" ] && [ -z "$f" ] && [ "$failed" -eq 0 ]; then echo "test_kvm.sh: bun test printed no summary"; failed=1; fi
echo "${p:-0} passed, $failed failed"
[ "$failed" -eq 0 ]
