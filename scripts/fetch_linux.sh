#!/usr/bin/env bash
# Fetches Debian's cloud kernel into build/linux/: vmlinuz (a bzImage), vmlinux (the ELF inside it,
# decompressed from its LZ4 payload) and modules/ (its module tree). Used by
# test/integration/linux_boot.test.ts and scripts/build_linux_guest.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/linux
if [ -s "$out/vmlinux" ] && [ -s "$out/vmlinuz" ] && [ -d "$out/modules" ]; then exit 0; fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[ -n "$pkg" ] || { echo "no linux-image-cloud-amd64 in the apt lists (run apt-get update)" >&2; exit 1; }
(cd "$work" && apt-get download -qq "$pkg" 2>/dev/null)
dpkg -x "$work"/*.deb "$work/root"
cp "$work"/root/boot/vmlinuz-* "$out/vmlinuz"
# Keep the module tree (for the initramfs of scripts/build_linux_guest.sh) and its dependency list.
rm -rf "$out/modules"
cp -r "$work"/root/lib/modules/* "$out/modules"
python3 - "$out/vmlinuz" "$work/payload.lz4" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
start = data.find(b"\x02\x21\x4c\x18")  # LZ4 legacy frame magic
if start < 0:
    sys.exit("no LZ4 payload in the bzImage")
open(sys.argv[2], "wb").write(data[start:])
PY
lz4 -dc "$work/payload.lz4" > "$out/vmlinux" 2>/dev/null || true
head -c 4 "$out/vmlinux" | grep -q ELF || { echo "failed to extract vmlinux" >&2; rm -f "$out/vmlinux"; exit 1; }
echo "fetched $pkg into $out"
