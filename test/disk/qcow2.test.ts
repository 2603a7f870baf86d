// qcow2 against QEMU's own tools: images either side writes, the other reads and checks.
import { describe, expect, test } from "bun:test";
import { readFileSync, symlinkSync, truncateSync, writeFileSync } from "node:fs";
import { sys } from "../../ffi/mod.ts";
import { loadDeviceKinds, resourcesFromFds } from "../../src/devices/create_device.ts";
import type { DeviceSpec } from "../../src/devices/device_spec.ts";
import { join } from "node:path";
import { DiskFile } from "../../src/disk/disk_file.ts";
import { createQcow2, openDiskImage } from "../../src/disk/qcow2.ts";
import { tempDir } from "../support/tsvm.ts";

const HAS_QEMU_IMG = Bun.which("qemu-img") !== null && Bun.which("qemu-io") !== null;
if (!HAS_QEMU_IMG) console.warn("tsvm tests: qemu-img/qemu-io (Debian qemu-utils) missing; the qcow2 interoperability tests are skipped");
const MIB = 1024 * 1024;

function sh(...cmd: string[]): { code: number; out: string } {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode ?? -1, out: r.stdout.toString() + r.stderr.toString() };
}

function pattern(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (i * 31 + seed) & 0xff);
}

describe.skipIf(!HAS_QEMU_IMG)("qcow2", () => {
  test("create_qcow2 makes an image qemu-img checks clean and reads as zeros", () => {
    const path = join(tempDir(), "new.qcow2");
    createQcow2(path, 64 * MIB);
    expect(sh("qemu-img", "check", path).code).toBe(0);
    expect(JSON.parse(sh("qemu-img", "info", "--output=json", path).out)["virtual-size"]).toBe(64 * MIB);
    const disk = openDiskImage(path, true, null);
    const buf = new Uint8Array(4096).fill(7);
    expect(disk.readInto([buf], 10 * MIB)).toBe(true);
    expect(buf.every((b) => b === 0)).toBe(true);
    disk.close();
  });

  test("data tsvm writes passes qemu-img check and converts back to the same bytes", () => {
    const dir = tempDir();
    const path = join(dir, "w.qcow2");
    createQcow2(path, 16 * MIB);
    const disk = openDiskImage(path, false, null);
    const writes: [number, Uint8Array][] = [[0, pattern(4096, 1)], [65536 - 512, pattern(1024, 2)], [5 * MIB + 512, pattern(200_000, 3)], [16 * MIB - 4096, pattern(4096, 4)]];
    for (const [offset, data] of writes) expect(disk.writeFrom([data], offset)).toBe(true);
    expect(disk.flush()).toBe(true);
    disk.close();
    expect(sh("qemu-img", "check", path)).toMatchObject({ code: 0 });
    const raw = join(dir, "w.raw");
    expect(sh("qemu-img", "convert", "-O", "raw", path, raw).code).toBe(0);
    const bytes = readFileSync(raw);
    for (const [offset, data] of writes) expect(Buffer.compare(bytes.subarray(offset, offset + data.byteLength), Buffer.from(data))).toBe(0);
  });

  test("an image qemu-io filled reads back the same in tsvm", () => {
    const path = join(tempDir(), "q.qcow2");
    sh("qemu-img", "create", "-f", "qcow2", path, "8M");
    expect(sh("qemu-io", "-c", "write -P 0xab 1M 192k", "-c", "write -z 1088k 64k", path).code).toBe(0);
    const disk = openDiskImage(path, true, null);
    const buf = new Uint8Array(256 * 1024);
    expect(disk.readInto([buf], 1 * MIB)).toBe(true);
    expect(buf.subarray(0, 64 * 1024).every((b) => b === 0xab)).toBe(true);
    expect(buf.subarray(64 * 1024, 128 * 1024).every((b) => b === 0)).toBe(true); // a zero cluster
    expect(buf.subarray(128 * 1024, 192 * 1024).every((b) => b === 0xab)).toBe(true);
    expect(buf.subarray(192 * 1024).every((b) => b === 0)).toBe(true); // never written
    disk.close();
  });

  test("compressed clusters are read (deflate)", () => {
    const dir = tempDir();
    const raw = join(dir, "c.raw");
    const data = pattern(2 * MIB, 9);
    writeFileSync(raw, data);
    const path = join(dir, "c.qcow2");
    expect(sh("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, path).code).toBe(0);
    const disk = openDiskImage(path, false, null);
    const buf = new Uint8Array(2 * MIB);
    expect(disk.readInto([buf], 0)).toBe(true);
    expect(Buffer.compare(Buffer.from(buf), Buffer.from(data))).toBe(0);
    // Writing over part of a compressed cluster keeps the rest of it.
    expect(disk.writeFrom([new Uint8Array(512).fill(1)], 4096)).toBe(true);
    const after = new Uint8Array(8192);
    expect(disk.readInto([after], 0)).toBe(true);
    expect([after[0], after[4096], after[4608]]).toEqual([data[0], 1, data[4608]]);
    disk.close();
    expect([0, 3]).toContain(sh("qemu-img", "check", path).code); // 3: leaked clusters, allowed
  });

  test("a raw backing file shows through; writes go to the overlay only", () => {
    const dir = tempDir();
    const base = join(dir, "base.raw");
    writeFileSync(base, pattern(4 * MIB, 5));
    const overlay = join(dir, "overlay.qcow2");
    expect(sh("qemu-img", "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", overlay).code).toBe(0);
    const disk = openDiskImage(overlay, false, null);
    const buf = new Uint8Array(4096);
    expect(disk.readInto([buf], MIB)).toBe(true);
    expect(buf[0]).toBe(pattern(4 * MIB, 5)[MIB]);
    expect(disk.writeFrom([new Uint8Array(512).fill(0xee)], MIB + 512)).toBe(true);
    expect(disk.readInto([buf], MIB)).toBe(true);
    expect([buf[0], buf[512], buf[1024]]).toEqual([pattern(4 * MIB, 5)[MIB], 0xee, pattern(4 * MIB, 5)[MIB + 1024]]);
    disk.close();
    expect(readFileSync(base)[MIB + 512]).toBe(pattern(4 * MIB, 5)[MIB + 512]);
    expect(sh("qemu-img", "check", overlay).code).toBe(0);
  });

  test("version 2 images work", () => {
    const path = join(tempDir(), "v2.qcow2");
    sh("qemu-img", "create", "-f", "qcow2", "-o", "compat=0.10", path, "4M");
    const disk = openDiskImage(path, false, null);
    expect(disk.writeFrom([pattern(8192, 6)], 65536)).toBe(true);
    const buf = new Uint8Array(8192);
    expect(disk.readInto([buf], 65536)).toBe(true);
    expect(buf[100]).toBe(pattern(8192, 6)[100]);
    disk.close();
    expect(sh("qemu-img", "check", path).code).toBe(0);
  });

  test("unknown incompatible feature bits are refused with a clear error", () => {
    const path = join(tempDir(), "bad.qcow2");
    createQcow2(path, 4 * MIB);
    const bytes = readFileSync(path);
    bytes[79] = 0x20; // incompatible_features bit 5: unknown
    writeFileSync(path, bytes);
    expect(() => openDiskImage(path, false, null)).toThrow(/incompatible feature bit 5 \(unknown\)/);
  });

  test("a header with an absurd L1 size is refused before anything is allocated", () => {
    const path = join(tempDir(), "huge.qcow2");
    createQcow2(path, 4 * MIB);
    const bytes = readFileSync(path);
    new DataView(bytes.buffer, bytes.byteOffset).setUint32(36, 0xffffffff, false);
    writeFileSync(path, bytes);
    expect(() => openDiskImage(path, false, null)).toThrow(/L1 table .* is larger than/);
  });

  test("a raw image stays raw", () => {
    const path = join(tempDir(), "plain.img");
    writeFileSync(path, new Uint8Array(MIB));
    const disk = openDiskImage(path, true, null);
    expect([disk.format, disk instanceof DiskFile]).toEqual(["raw", true]);
    disk.close();
  });
});

describe.skipIf(!HAS_QEMU_IMG)("hostile images", () => {
  test("a compressed cluster that inflates beyond its cluster reads as an error, with no memory to speak of", () => {
    const dir = tempDir();
    // A compressed image whose first cluster's L2 entry is then pointed at a deflate stream of 64 MiB
    // of zeros (a bomb): inflating must stop at one cluster.
    const raw = join(dir, "data.raw");
    const data = new Uint8Array(4 * MIB);
    data.set(pattern(65536, 3)); // an allocated first cluster, so its L2 table exists
    writeFileSync(raw, data);
    const path = join(dir, "bomb.qcow2");
    expect(sh("qemu-img", "convert", "-c", "-O", "qcow2", raw, path).code).toBe(0);
    const bytes = readFileSync(path);
    const bomb = Bun.deflateSync(new Uint8Array(64 * MIB), { level: 9 });
    const at = Math.ceil(bytes.byteLength / 65536) * 65536;
    const grown = new Uint8Array(at + bomb.byteLength + 65536);
    grown.set(bytes);
    grown.set(bomb, at);
    // L1 -> L2 -> the first cluster's entry: compressed, at `at`, spanning the bomb's sectors.
    const v = new DataView(grown.buffer);
    const l1 = Number(v.getBigUint64(40, false));
    const l2 = Number(v.getBigUint64(l1, false) & 0x00ff_ffff_ffff_fe00n);
    expect(l2).toBeGreaterThan(0);
    const x = 62n - (16n - 8n);
    const sectors = BigInt(Math.ceil(bomb.byteLength / 512)) - 1n;
    v.setBigUint64(l2, (1n << 62n) | (sectors << x) | BigInt(at), false);
    writeFileSync(path, grown);
    const rssBefore = process.memoryUsage().rss;
    const disk = openDiskImage(path, true, "qcow2");
    expect(disk.readInto([new Uint8Array(4096)], 0)).toBe(false);
    disk.close();
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(150 * MIB);
  });

  test("a backing file is found beside its image, wherever tsvm runs from", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "base.raw"), pattern(MIB, 9));
    const overlay = join(dir, "overlay.qcow2");
    expect(sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", overlay).code).toBe(0);
    const disk = openDiskImage(overlay, true, null);
    const buf = new Uint8Array(16);
    expect(disk.readInto([buf], 4096)).toBe(true);
    expect([...buf]).toEqual([...pattern(MIB, 9).subarray(4096, 4112)]);
    expect(disk.chainFds.length).toBe(2);
    disk.close();
  });

  test("a backing chain deeper than 8 is refused", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "d0.raw"), new Uint8Array(MIB));
    for (let i = 1; i <= 10; i++) {
      const previous = i === 1 ? "d0.raw" : `d${i - 1}.qcow2`;
      sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", previous, "-F", i === 1 ? "raw" : "qcow2", join(dir, `d${i}.qcow2`));
    }
    expect(() => openDiskImage(join(dir, "d10.qcow2"), true, null)).toThrow(/the backing chain is deeper than 8/);
  });

  test("a guest cannot turn a probed raw image into a qcow2 with a backing file of its choosing", () => {
    const dir = tempDir();
    const path = join(dir, "probed.img");
    writeFileSync(path, new Uint8Array(MIB));
    const header = new Uint8Array(512);
    header.set([0x51, 0x46, 0x49, 0xfb]);
    const probed = openDiskImage(path, false, null);
    expect(probed.writeFrom([header], 0)).toBe(false);
    expect(probed.writeFrom([Uint8Array.of(0x46, 0x49, 0xfb)], 1)).toBe(true); // not yet a magic: byte 0 is 0
    expect(probed.writeFrom([Uint8Array.of(0x51)], 0)).toBe(false); // would complete "QFI\xfb"
    // What is checked is what is written: the guest's buffer changed after the check (by another
    // vCPU, while the request waits for the I/O pool) does not reach the first bytes.
    const buffer = new Uint8Array(512);
    const views = probed.writable([buffer.subarray(0, 2), buffer.subarray(2)], 0)!;
    buffer.set([0x51, 0x46, 0x49, 0xfb]);
    expect(views.reduce((n, v) => n + v.byteLength, 0)).toBe(512);
    expect([...views[0]!.subarray(0, 2), ...views[1]!.subarray(0, 2)]).toEqual([0, 0, 0, 0]);
    probed.close();
    // With format=raw the user said what it is: nothing is probed, so nothing is guarded.
    const declared = openDiskImage(path, false, "raw");
    expect(declared.writeFrom([header], 0)).toBe(true);
    declared.close();
    // ... and read as raw again later, it stays raw.
    const again = openDiskImage(path, true, "raw");
    expect(again.format).toBe("raw");
    again.close();
  });

  test("backing files come from the image's own directory only, unless backing_files=any; none with backing_files=off", () => {
    const dir = tempDir();
    const elsewhere = tempDir();
    writeFileSync(join(dir, "base.raw"), pattern(MIB, 1));
    writeFileSync(join(elsewhere, "secret"), pattern(MIB, 2)); // a host file the image's author would like to read
    const beside = join(dir, "beside.qcow2");
    const outside = join(dir, "outside.qcow2");
    const linked = join(dir, "linked.qcow2");
    symlinkSync(join(elsewhere, "secret"), join(dir, "link.raw"));
    expect(sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", join(dir, "base.raw"), "-F", "raw", beside).code).toBe(0); // absolute, but beside
    expect(sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", join(elsewhere, "secret"), "-F", "raw", outside).code).toBe(0);
    expect(sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "link.raw", "-F", "raw", linked).code).toBe(0);
    openDiskImage(beside, true, null).close();
    expect(() => openDiskImage(outside, true, null)).toThrow(/outside the image's directory .*backing_files=any/);
    expect(() => openDiskImage(linked, true, null)).toThrow(/link\.raw.* is .*secret, outside the image's directory/);
    const any = openDiskImage(outside, true, null, { backingFiles: "any" });
    const buf = new Uint8Array(4);
    expect(any.readInto([buf], 0)).toBe(true);
    expect([...buf]).toEqual([...pattern(MIB, 2).subarray(0, 4)]);
    any.close();
    expect(() => openDiskImage(beside, true, null, { backingFiles: "off" })).toThrow(/names a backing file .* and backing_files=off/);
  });

  test("a backing file must be a regular file: a device an image names is never opened", () => {
    const overlay = join(tempDir(), "dev.qcow2");
    expect(sh("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/dev/zero", "-F", "raw", overlay, "1M").code).toBe(0);
    expect(() => openDiskImage(overlay, true, null, { backingFiles: "any" })).toThrow(/\/dev\/zero: not a regular file$/);
  });

  test("a backing file is read as the format its image records for it, not probed", () => {
    const dir = tempDir();
    // A raw disk whose guest wrote a qcow2 header into it (it was used with format=raw).
    const base = new Uint8Array(MIB);
    base.set([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);
    writeFileSync(join(dir, "base.raw"), base);
    const overlay = join(dir, "overlay.qcow2");
    expect(sh("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "base.raw", "-F", "raw", overlay, "1M").code).toBe(0);
    const disk = openDiskImage(overlay, true, null);
    const buf = new Uint8Array(8);
    expect(disk.readInto([buf], 0)).toBe(true);
    expect([...buf]).toEqual([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);
    disk.close();
  });

  test("a jailed device reads the backing chain in the formats the VMM read it in", async () => {
    const dir = tempDir();
    const base = new Uint8Array(MIB);
    base.set([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]); // a raw disk that looks like a qcow2 header
    writeFileSync(join(dir, "base.raw"), base);
    const overlay = join(dir, "overlay.qcow2");
    expect(sh("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "base.raw", "-F", "raw", overlay, "1M").code).toBe(0);
    const opened = openDiskImage(overlay, true, null);
    await loadDeviceKinds(["block"]);
    const spec: DeviceSpec = { kind: "block", label: "block0", path: overlay, readOnly: true, id: "", format: null, direct: false, backingFiles: "dir", queues: 1 };
    // The fds a device process receives (duplicates here: the test keeps its own copies).
    const received = resourcesFromFds(spec, opened.chainFds.map((fd) => sys.dup(fd)));
    expect(received.ok).toBe(true); // before: the base was probed again in the device and parsed as a qcow2
    if (received.ok && received.value.kind === "block") {
      const buf = new Uint8Array(8);
      expect(received.value.image.readInto([buf], 0)).toBe(true);
      expect([...buf]).toEqual([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);
      received.value.image.close();
    }
    opened.close();
  });

  test("a backing name is resolved beside the name the user gave, even when that is a link to an image elsewhere", () => {
    const real = tempDir();
    const linkDir = tempDir();
    writeFileSync(join(linkDir, "base.raw"), pattern(MIB, 4));
    expect(sh("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "base.raw", "-F", "raw", join(real, "img.qcow2"), "1M").code).toBe(0);
    symlinkSync(join(real, "img.qcow2"), join(linkDir, "img.qcow2"));
    const disk = openDiskImage(join(linkDir, "img.qcow2"), true, null); // as QEMU: base.raw beside the link
    const buf = new Uint8Array(4);
    expect(disk.readInto([buf], 0)).toBe(true);
    expect([...buf]).toEqual([...pattern(MIB, 4).subarray(0, 4)]);
    disk.close();
  });

  test("a writable image whose tables lie past the end of its file is refused (read-only it opens)", () => {
    const path = join(tempDir(), "cut.qcow2");
    createQcow2(path, 16 * MIB);
    truncateSync(path, 2 * 65536); // header and refcount table; the L1 table (cluster 3) is gone
    expect(() => openDiskImage(path, false, null)).toThrow(/the L1 table lies beyond the end of the file/);
    openDiskImage(path, true, null).close();
  });

  test("a data cluster said to lie past the end of the file is never written in place (the next allocation would land on it)", () => {
    const path = join(tempDir(), "far.qcow2");
    createQcow2(path, 16 * MIB);
    const disk = openDiskImage(path, false, null);
    expect(disk.writeFrom([pattern(4096, 1)], 0)).toBe(true);
    disk.close();
    // Point guest cluster 0 one cluster past the end of the file, as a truncated or hostile image would.
    const bytes = readFileSync(path);
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    const l2 = Number(view.getBigUint64(3 * 65536, false) & 0x00ff_ffff_ffff_fe00n);
    const far = bytes.byteLength + 65536;
    view.setBigUint64(l2, BigInt(far) | (1n << 63n), false); // QCOW_OFLAG_COPIED
    writeFileSync(path, bytes);
    const again = openDiskImage(path, false, null);
    // Before: the first write went in place at `far`, and the second allocation (at the old end of
    // the file plus one cluster, which is `far`) overwrote it.
    const writes: [number, Uint8Array][] = [[0, pattern(4096, 2)], [4 * MIB, pattern(4096, 3)], [8 * MIB, pattern(4096, 4)]];
    for (const [at, data] of writes) expect(again.writeFrom([data], at)).toBe(true);
    for (const [at, data] of writes) {
      const buf = new Uint8Array(4096);
      expect(again.readInto([buf], at)).toBe(true);
      expect([...buf]).toEqual([...data]);
    }
    again.close();
  });
});

const CAN_LOOP = process.getuid?.() === 0 && Bun.which("losetup") !== null;

describe.skipIf(!CAN_LOOP)("disk images on host block devices", () => {
  test("a block device's size is the device's (its st_size is 0), raw and as a qcow2 that allocates", () => {
    const file = join(tempDir(), "loop.img");
    writeFileSync(file, new Uint8Array(8 * MIB));
    const attached = sh("losetup", "-f", "--show", file);
    if (attached.code !== 0) return console.warn(`tsvm tests: losetup failed (${attached.out.trim()}); block-device test skipped`);
    const device = attached.out.trim();
    try {
      const raw = openDiskImage(device, true, "raw");
      expect(raw.size).toBe(8 * MIB);
      raw.close();
      // A qcow2 image on the device: the first allocation goes after the device's end, so it fails
      // instead of landing on the header (the size was 0 before, and the header was overwritten).
      const image = join(tempDir(), "small.qcow2");
      createQcow2(image, 4 * MIB);
      const head = readFileSync(image);
      const fd = sys.open(device, 2);
      expect(sys.writeRaw(fd, head)).toBe(head.byteLength);
      sys.close(fd);
      const onDevice = openDiskImage(device, false, "qcow2");
      onDevice.writeFrom([pattern(4096, 3)], 0);
      onDevice.close();
      const check = new Uint8Array(head.byteLength);
      const rfd = sys.open(device, 0);
      sys.readRaw(rfd, check);
      sys.close(rfd);
      expect(check.subarray(0, 4 * 65536)).toEqual(Uint8Array.from(head.subarray(0, 4 * 65536)));
    } finally {
      sh("losetup", "-d", device);
    }
  });
});
