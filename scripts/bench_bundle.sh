#!/usr/bin/env bash
# The benchmarks on a Linux x86-64 machine with KVM but neither Bun nor QEMU installed (a lent
# machine with no network): `pack` here, copy the checkout and build/bundle there, `run` there.
#
#   bash scripts/bench_bundle.sh pack              # after npm run build: writes build/bundle/
#   bash scripts/bench_bundle.sh run [BENCH ARGS]  # there: unpacks, probes, runs scripts/bench.ts
#
# The bundle (~55 MB): the compiled tsvm (xz), which runs the bench script as Bun (BUN_BE_BUN=1), and
# this host's QEMU with its libraries, its loader and the firmware `-M pc` needs, run through a
# wrapper that passes the loader the library path and QEMU the firmware directory. `run` needs
# build/guest/tsvm-guest.elf and build/libtsvm.so beside it (the bench script loads both), picks a
# directory with O_DIRECT for TSVM_BENCH_DIR, and first runs each VMM once on a small O_DIRECT job
# with a 60 s limit, so a VMM that cannot start there says so in a minute, not at the bench's
# ten-minute deadline. With no arguments it runs section 8 with O_DIRECT at depth 32 (with the device's
# batches offloaded, and with every request on its threads, beside the default), then at depth 1,
# then its page-cache rows, while BUDGET seconds (default 540) last. (Split by depth, the depth-gain
# rows need a run of both: pass `--only 8 --blk-direct-only --blk-rounds 3` for that.)
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=build/bundle
case "${1:-}" in
pack)
  [ -x dist/tsvm ] || { echo "bench_bundle.sh: build dist/tsvm first (npm run build)" >&2; exit 2; }
  qemu=$(readlink -f "$(command -v qemu-system-x86_64)") || { echo "bench_bundle.sh: qemu-system-x86_64 is missing" >&2; exit 2; }
  staging=$(mktemp -d)
  trap 'rm -rf "$staging"' EXIT
  q=$staging/q
  mkdir -p "$q/lib" "$q/share" "$q/mod" "$q/bin" "$bundle"
  cp "$qemu" "$q/qemu-system-x86_64"
  ldd "$qemu" | awk '/=>/ { print $3 }' | while read -r lib; do [ -f "$lib" ] && cp -L "$lib" "$q/lib/"; done
  cp -L "$(ldd "$qemu" | awk '/ld-linux/ { print $1 }')" "$q/ld-linux-x86-64.so.2"
  cp -L /usr/share/seabios/bios-256k.bin /usr/share/seabios/bios.bin "$q/share/"
  for f in kvmvapic.bin linuxboot.bin linuxboot_dma.bin multiboot_dma.bin pvh.bin qboot.rom; do cp -L "/usr/share/qemu/$f" "$q/share/"; done
  # (Debian builds TCG as a module; with KVM it is not loaded, but a TCG check here needs it)
  cp /usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so "$q/mod/" 2>/dev/null || true
  cat > "$q/bin/qemu-system-x86_64" <<'EOF'
#!/bin/sh
d=$(dirname "$(readlink -f "$0")")/..
QEMU_MODULE_DIR="$d/mod" exec "$d/ld-linux-x86-64.so.2" --library-path "$d/lib" "$d/qemu-system-x86_64" -L "$d/share" "$@"
EOF
  chmod +x "$q/bin/qemu-system-x86_64"
  tar cJf "$bundle/qemu.tar.xz" -C "$staging" q
  xz -T0 -6 -c dist/tsvm > "$bundle/tsvm.xz"
  echo "bench_bundle.sh: $(du -sh "$bundle" | cut -f1) in $bundle; carry it with build/guest/tsvm-guest.elf and build/libtsvm.so"
  ;;
run)
  shift
  started=$(date +%s)
  elapsed() { echo $(( $(date +%s) - started )); }
  unpacked=$(mktemp -d)
  tar xJf "$bundle/qemu.tar.xz" -C "$unpacked" || exit 1
  mkdir -p dist && xz -dc "$bundle/tsvm.xz" > dist/tsvm && chmod +x dist/tsvm || exit 1
  export PATH=$unpacked/q/bin:$PATH
  echo "unpacked in $(elapsed) s; $(uname -r), $(nproc) CPUs; /dev/kvm: $(ls -l /dev/kvm 2>&1)"
  dir=
  for d in "$PWD/build" /var/tmp /tmp /dev/shm; do
    if dd if=/dev/zero of="$d/odirect.probe" bs=4k count=1 oflag=direct status=none 2>/dev/null; then dir=$d; rm -f "$d/odirect.probe"; break; fi
    rm -f "$d/odirect.probe"
  done
  echo "a directory with O_DIRECT: ${dir:-none (the O_DIRECT rows will fail)}"
  dir=${dir:-/tmp}
  # the disk under it: how many hardware queues it has says whether submitting from one thread (the
  # device's loop) or from many (a pool's threads) can reach more of it
  part=$(basename "$(readlink -f "$(df --output=source "$dir" | tail -1)")")
  disk=/sys/class/block/$part
  [ -e "$disk/partition" ] && disk=$(dirname "$(readlink -f "$disk")")
  if [ -d "$disk/queue" ]; then
    echo "its disk: $(basename "$disk"), $(ls "$disk/mq" 2>/dev/null | wc -l) hardware queues, scheduler $(cat "$disk/queue/scheduler"), rotational $(cat "$disk/queue/rotational")"
  else
    echo "its disk: $part (no block queue found)"
  fi
  dd if=/dev/urandom of="$dir/probe.img" bs=1M count=16 status=none
  probe() {
    local t0 out
    t0=$(date +%s%N)
    out=$(timeout 60 "$@" 2>&1 | tr -d '\r' | grep -a "bench blkq\|rror\|fatal\|failed" | tail -3)
    echo "  ${out:-no benchmark line} ($(( ($(date +%s%N) - t0) / 1000000 )) ms)"
  }
  echo "QEMU, 500 O_DIRECT reads:"
  probe qemu-system-x86_64 -enable-kvm -cpu qemu64,-cx16 -M pc -m 256 -nodefaults -no-user-config -nographic -no-reboot -serial stdio \
    -kernel build/guest/tsvm-guest.elf -append tsvm.bench=blkq:rr:4:1:500:3:100 \
    -drive "file=$dir/probe.img,if=none,id=d0,format=raw,aio=threads,cache=none" -device virtio-blk-pci,drive=d0,disable-legacy=on,num-queues=1
  echo "tsvm, 500 O_DIRECT reads:"
  probe dist/tsvm run --serial type=stdout,num=1 -p tsvm.bench=blkq:rr:4:1:500:3:100 --block "path=$dir/probe.img,o_direct=true"
  rm -f "$dir/probe.img"
  budget=${BUDGET:-540}
  bench() {
    local left=$(( budget - $(elapsed) ))
    [ "$left" -gt 30 ] || { echo "no time left for: $*"; return; }
    echo "scripts/bench.ts $* (at most $left s)"
    TSVM_BENCH_DIR=$dir BUN_BE_BUN=1 timeout "$left" dist/tsvm scripts/bench.ts "$@" 2>&1 | while IFS= read -r line; do echo "$(elapsed) $line"; done
  }
  if [ $# -gt 0 ]; then
    bench "$@"
  else
    # depth 32 first: the rows that miss there, and the offloaded device beside the default
    bench --only 8 --blk-direct-only --blk-rounds 3 --blk-depths 32
    bench --only 8 --blk-direct-only --blk-rounds 3 --blk-depths 1
    bench --only 8 --blk-cache-only --blk-rounds 3
  fi
  rm -rf "$unpacked"
  ;;
*)
  echo "usage: bench_bundle.sh pack | run [BENCH ARGS]" >&2
  exit 2
  ;;
esac
