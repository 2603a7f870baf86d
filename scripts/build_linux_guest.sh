#!/usr/bin/env bash
# Builds the real-Linux guest of the Linux tests from Debian packages, into build/linux/:
#   initramfs.cpio.gz  busybox-static and the virtio modules; its /init loads them, mounts the
#                      virtio-blk disk, reads /dev/hwrng, brings eth0 up, writes to hvc0, prints a
#                      "result <device>: ..." line for each, and reboots (reboot=k: the i8042 ends tsvm).
#                      Kernel command-line options ask for more: tsvm.write=TEXT mounts the disk
#                      read-write and writes TEXT to /written.txt; tsvm.ip=ADDR/LEN and tsvm.ping=HOST
#                      give eth0 an address and ping HOST; tsvm.vsock=1 accepts one vsock connection
#                      on port 1234 (echoing it) and connects to the host's port 5000 (vsock_probe, a
#                      small static program built from scripts/linux_guest/vsock_probe.c).
#   disk.img           an ext4 image holding hello.txt
# Used by the full-boot test under tsvm (hardware virtualization) and by the vhost-user tests, where
# QEMU with TCG runs this guest on devices `tsvm devices` serves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_linux.sh
out=build/linux
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$work" && apt-get download -qq busybox-static 2>/dev/null)
dpkg -x "$work"/busybox-static_*.deb "$work/bb"
root="$work/root"
mkdir -p "$root"/{bin,sbin,proc,sys,dev,mnt,lib/modules}
cp "$work/bb/bin/busybox" "$root/bin/busybox"
for applet in sh mount umount insmod cat echo head od ip mkdir sleep reboot ls ping sync grep; do ln -s busybox "$root/bin/$applet"; done
gcc -static -Os -Wall -Wextra -Werror -o "$root/bin/vsock_probe" scripts/linux_guest/vsock_probe.c

# The modules in load order, each after the modules its .modinfo "depends=" names (Debian's package
# ships no modules.dep, and depmod may be missing).
python3 - "$out/modules" "$root" <<'PY'
import os, re, shutil, sys
tree, root = sys.argv[1], sys.argv[2]
paths = {}
for dirpath, _, files in os.walk(tree):
    for f in files:
        if f.endswith(".ko"):
            paths[f[:-3].replace("-", "_")] = os.path.join(dirpath, f)
wanted = ["virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk",
          "virtio_net", "virtio_console", "virtio_rng", "virtio_balloon", "vsock", "vmw_vsock_virtio_transport_common",
          "vmw_vsock_virtio_transport"]
order = []
def add(name):
    name = name.replace("-", "_")
    if name in order or name not in paths:
        return
    data = open(paths[name], "rb").read()
    m = re.search(rb"depends=([A-Za-z0-9_,-]*)", data)
    for dep in (m.group(1).decode().split(",") if m and m.group(1) else []):
        add(dep)
    order.append(name)
for w in wanted:
    add(w)
with open(os.path.join(root, "modules.order"), "w") as out:
    for name in order:
        shutil.copy(paths[name], os.path.join(root, "lib/modules", os.path.basename(paths[name])))
        out.write("/lib/modules/%s\n" % os.path.basename(paths[name]))
print("modules:", " ".join(order))
PY

cat > "$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod "$m" 2>/dev/null; done
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    tsvm.write=*) WRITE="${arg#tsvm.write=}" ;;
    tsvm.ip=*) IP="${arg#tsvm.ip=}" ;;
    tsvm.ping=*) PING="${arg#tsvm.ping=}" ;;
    tsvm.vsock=*) VSOCK="${arg#tsvm.vsock=}" ;;
  esac
done
sleep 1
if [ -n "$WRITE" ]; then
  if mount -t ext4 /dev/vda /mnt && [ "$(cat /mnt/hello.txt)" = "hello from the disk" ] && echo "$WRITE" > /mnt/written.txt && sync && umount /mnt; then
    echo "result blk: ok (wrote /written.txt)"
  else echo "result blk: FAIL"; fi
elif mount -t ext4 -o ro /dev/vda /mnt && [ "$(cat /mnt/hello.txt)" = "hello from the disk" ]; then echo "result blk: ok"; else echo "result blk: FAIL"; fi
# blk-mq lists one directory per hardware queue the driver set up (VIRTIO_BLK_F_MQ: more than one)
if [ -d /sys/block/vda/mq ]; then echo "result blk queues:" $(ls /sys/block/vda/mq); fi
if head -c 16 /dev/hwrng | od -An -tx1 | grep -q .; then echo "result rng: ok"; else echo "result rng: FAIL"; fi
if [ ! -e /sys/class/net/eth0 ]; then echo "result net: absent"
elif [ -n "$IP" ]; then
  ip link set lo up; ip link set eth0 up; ip addr add "$IP" dev eth0
  if ping -c 3 -W 5 "$PING" >/dev/null 2>&1; then echo "result net: ok (ping $PING)"; else echo "result net: FAIL (no answer from $PING)"; fi
else ip link set eth0 up && echo "result net: ok"; fi
if [ -e /dev/hvc0 ]; then echo "hello over hvc0" > /dev/hvc0 && echo "result console: ok"; else echo "result console: absent"; fi
if [ -n "$VSOCK" ]; then
  vsock_probe echo 1234 & echoer=$!
  if vsock_probe connect 5000 "hello from linux over vsock"; then echo "result vsock connect: ok"; else echo "result vsock connect: FAIL"; fi
  if wait $echoer; then echo "result vsock accept: ok"; else echo "result vsock accept: FAIL"; fi
fi
echo "result done"
reboot -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | "$work/bb/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -9) > "$out/initramfs.cpio.gz"

mkdir -p "$work/disk"
echo -n "hello from the disk" > "$work/disk/hello.txt"
rm -f "$out/disk.img"
mke2fs -q -t ext4 -d "$work/disk" "$out/disk.img" 16M
echo "built $out/initramfs.cpio.gz ($(du -h "$out/initramfs.cpio.gz" | cut -f1)) and $out/disk.img"
