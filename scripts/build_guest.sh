#!/usr/bin/env bash
# Builds the test guest (test/guest) into build/guest/tsvm-guest.elf: freestanding, no SSE, no red
# zone, so it avoids what an emulated guest ring 0 cannot execute (see docs/architecture.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/guest
mkdir -p "$out"
flags=(-m64 -O2 -ffreestanding -fno-pic -fno-pie -no-pie -nostdlib -static -mno-red-zone -mgeneral-regs-only
  -mno-sse -mno-mmx -fno-stack-protector -fno-asynchronous-unwind-tables -fcf-protection=none -Wall -Wextra -Werror)
gcc "${flags[@]}" -c test/guest/entry.S -o "$out/entry.o"
for c in guest pci interrupts virtio; do gcc "${flags[@]}" -c "test/guest/$c.c" -o "$out/$c.o"; done
gcc "${flags[@]}" -Wl,-T,test/guest/guest.ld -Wl,--build-id=none -Wl,-z,noexecstack -o "$out/tsvm-guest.elf" "$out/entry.o" "$out/guest.o" "$out/pci.o" "$out/interrupts.o" "$out/virtio.o"
