#!/usr/bin/env bash
# Runs a command with a working /dev/kvm on a host that has none: inside a QEMU TCG virtual machine
# whose emulated CPU has AMD SVM with nested paging, running Debian's cloud kernel with kvm_amd.
#
#   bash scripts/nested_kvm.sh [--cpus N] [--mem SIZE] [--timeout S] -- COMMAND [ARG...]
#
# The guest sees this host's whole file system through virtio-fs (virtiofsd, read-write), switches
# its root to it and runs COMMAND as root from the repository root, with /tmp, /dev/shm and /run on
# tmpfs of its own, kvm_amd, tun, veth, vhost_vsock and vhost_net loaded. COMMAND's output is the
# guest's serial console (this script's stdout) and its exit code is this script's. It needs
# qemu-system-x86 (QEMU 7.2 or later: its TCG runs AVX2, which Bun needs), busybox-static and
# scripts/fetch_linux.sh's kernel. Everything in the guest runs at TCG speed (some 5-20x slower than
# native), but guest ring 0 under the nested KVM runs as fast as ring 3, unlike kvm_pvm hosts.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
cpus=2
mem=12G
timeout_s=3600
while [ $# -gt 0 ]; do
  case "$1" in
    --cpus) cpus=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "nested_kvm.sh: unknown option $1 (usage: nested_kvm.sh [--cpus N] [--mem SIZE] [--timeout S] -- COMMAND...)" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "nested_kvm.sh: no command given" >&2; exit 2; }

qemu=$(command -v qemu-system-x86_64) || { echo "nested_kvm.sh: qemu-system-x86_64 is missing (apt-get install qemu-system-x86)" >&2; exit 3; }
virtiofsd=/usr/lib/qemu/virtiofsd
[ -x "$virtiofsd" ] || virtiofsd=$(command -v virtiofsd || true)
[ -n "$virtiofsd" ] || { echo "nested_kvm.sh: virtiofsd is missing (apt-get install qemu-system-common)" >&2; exit 3; }
[ -x /bin/busybox ] || { echo "nested_kvm.sh: /bin/busybox is missing (apt-get install busybox-static)" >&2; exit 3; }
bash scripts/fetch_linux.sh >/dev/null
kernel=build/linux/vmlinuz
modules=build/linux/modules
[ -d "$modules/kernel" ] || { echo "nested_kvm.sh: no module tree in $modules" >&2; exit 3; }

# The guest mounts tmpfs of its own on these, so a repository below one of them is out of its sight.
case "$repo/" in
  /tmp/*|/run/*|/dev/shm/*) echo "nested_kvm.sh: the repository is under ${repo%"${repo#/*/}"}, which the nested machine replaces with its own tmpfs; move it elsewhere" >&2; exit 3 ;;
esac
mkdir -p build/nested
work=$(mktemp -d "$repo/build/nested/run.XXXXXX")
vfsd_pid=
cleanup() {
  [ -n "$vfsd_pid" ] && kill "$vfsd_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The command, as a script on the shared file system (the guest reads it after switching root).
{
  echo "#!/bin/bash"
  echo "cd $(printf %q "$repo")"
  for v in CI TSVM_BIN TSVM_TEST_TIME_SCALE TSVM_DEVICE_START_TIMEOUT_MS TSVM_DEVICE_TIMEOUT_MS PATH HOME TERM; do
    [ -n "${!v:-}" ] && printf 'export %s=%q\n' "$v" "${!v}"
  done
  printf '%q ' "$@"
  echo
} > "$work/command.sh"
chmod +x "$work/command.sh"

# A small initramfs: busybox and the modules needed to reach the shared root; the rest is loaded
# from the shared module tree once it is mounted.
root="$work/initramfs"
mkdir -p "$root"/{bin,proc,sys,dev,mnt,lib/modules}
cp /bin/busybox "$root/bin/busybox"
for applet in sh mount insmod modprobe depmod mkdir echo cat switch_root poweroff sleep; do ln -s busybox "$root/bin/$applet"; done
for m in virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci fuse virtiofs; do
  f=$(find "$modules/kernel" -name "$m.ko" -o -name "${m//_/-}.ko" | head -1)
  [ -n "$f" ] && cp "$f" "$root/lib/modules/"
done
cat > "$root/init" <<INIT
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
# Dependencies first: retry until every module is in (insmod has no dependency resolution).
for pass in 1 2 3; do
  for m in virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci fuse virtiofs; do insmod /lib/modules/\$m.ko 2>/dev/null; done
done
mount -t virtiofs host /mnt || { echo "nested_kvm: cannot mount the host's file system"; poweroff -f; }
mkdir -p /lib/modules/\$(busybox uname -r)
mount --bind /mnt$repo/$modules /lib/modules/\$(busybox uname -r)
# The dependency list modprobe reads (Debian's package ships none), written once into build/linux.
[ -s /lib/modules/\$(busybox uname -r)/modules.dep ] || depmod
for m in kvm_amd tun veth vhost_vsock vhost_net; do modprobe \$m nested=1 2>/dev/null || modprobe \$m 2>/dev/null; done
for d in proc sys dev; do mount --move /\$d /mnt/\$d; done
mount -t tmpfs -o mode=1777 tmp /mnt/tmp
mount -t tmpfs tmp /mnt/run
mount -t tmpfs -o mode=1777 shm /mnt/dev/shm 2>/dev/null || { mkdir -p /mnt/dev/shm && mount -t tmpfs -o mode=1777 shm /mnt/dev/shm; }
mkdir -p /mnt/dev/pts && mount -t devpts -o ptmxmode=0666 devpts /mnt/dev/pts
exec switch_root /mnt /bin/bash -c 'ip link set lo up 2>/dev/null; $work/command.sh < /dev/null; echo \$? > $work/rc; sync; echo o > /proc/sysrq-trigger; sleep 5'
INIT
chmod +x "$root/init"
(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$work/initramfs.gz"

"$virtiofsd" --socket-path="$work/vfs.sock" -o source=/ -o cache=auto -o sandbox=chroot >"$work/virtiofsd.log" 2>&1 &
vfsd_pid=$!
for _ in $(seq 100); do [ -S "$work/vfs.sock" ] && break; sleep 0.05; done

set +e
timeout "$timeout_s" "$qemu" -accel tcg,thread=multi -cpu max -smp "$cpus" -m "$mem" -nographic -no-reboot \
  -object memory-backend-memfd,id=mem,size="$mem",share=on -numa node,memdev=mem \
  -chardev socket,id=vfs,path="$work/vfs.sock" -device vhost-user-fs-pci,chardev=vfs,tag=host \
  -kernel "$kernel" -initrd "$work/initramfs.gz" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 sysrq_always_enabled=1"
qemu_rc=$?
set -e
if [ -s "$work/rc" ]; then exit "$(cat "$work/rc")"; fi
echo "nested_kvm.sh: the guest ended without the command's exit code (qemu exit $qemu_rc)" >&2
exit 1
