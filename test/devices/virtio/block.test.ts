import { describe, expect, test } from "bun:test";
import { guestAddress as ga } from "../../../src/memory/mod.ts";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Block, VIRTIO_BLK_F, VIRTIO_BLK_S, VIRTIO_BLK_T } from "../../../src/devices/virtio/block/block.ts";
import { EventFd } from "../../../src/base/event_fd.ts";
import { FakeLoop } from "../../support/virtio_pci_driver.ts";
import { DiskFile, type DiskImage } from "../../../src/disk/disk_file.ts";
import { createQcow2, openDiskImage } from "../../../src/disk/qcow2.ts";
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from "../../../src/devices/virtio/descriptor_chain.ts";
import { tempDir } from "../../support/tsvm.ts";
import { socket } from "../../../ffi/mod.ts";
import { diskTry } from "../../../ffi/aio.ts";
import { BUFFERS, VirtqueueDriver } from "../../support/virtqueue_driver.ts";

/** How a device's I/O pool starts its requests (Block.aioOffload, Block.aioThreadsOnly); unset: the default. */
type AioMode = { readonly offload?: boolean; readonly threadsOnly?: boolean };

const HAS_QEMU_IMG = Bun.which("qemu-img") !== null && Bun.which("qemu-io") !== null;
if (!HAS_QEMU_IMG) console.warn("tsvm tests: qemu-img/qemu-io (Debian qemu-utils) missing; the qcow2 requests-in-flight test is skipped");

const HDR = BUFFERS;
const DATA = BUFFERS + 0x1000;
const STATUS = BUFFERS + 0x3000;
const DISK_SIZE = 64 * 1024;

function disk(readOnly = false): { path: string; file: DiskFile } {
  const path = join(tempDir(), "disk.img");
  const bytes = new Uint8Array(DISK_SIZE);
  bytes.set(new TextEncoder().encode("SECTOR0"), 0);
  writeFileSync(path, bytes);
  return { path, file: DiskFile.open(path, readOnly) };
}

/** Posts header + data + status and runs the request through Block.handle. */
function request(dev: Block, d: VirtqueueDriver, type: number, sector: number, dataLen: number, deviceWrites: boolean) {
  d.memory.writeU32(ga(HDR), type);
  d.memory.writeU64(ga(HDR + 8), BigInt(sector));
  d.memory.writeU8(ga(STATUS), 0xff);
  let n = 0;
  d.writeDesc(n++, { addr: HDR, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 1 });
  if (dataLen > 0) d.writeDesc(n++, { addr: DATA, len: dataLen, flags: VIRTQ_DESC_F_NEXT | (deviceWrites ? VIRTQ_DESC_F_WRITE : 0), next: n });
  d.writeDesc(n, { addr: STATUS, len: 1, flags: VIRTQ_DESC_F_WRITE, next: 0 });
  d.publish(0);
  const r = d.queue.pop();
  if (r?.kind !== "chain") throw new Error("expected a chain");
  const used = dev.handle(r.chain);
  return { used, status: d.memory.readU8(ga(STATUS)) };
}

describe("Block", () => {
  test("reads land in guest memory and report data + status bytes", () => {
    const { file } = disk();
    const dev = new Block(file, "id");
    const d = new VirtqueueDriver();
    expect(request(dev, d, VIRTIO_BLK_T.IN, 0, 512, true)).toEqual({ used: 513, status: VIRTIO_BLK_S.OK });
    expect(new TextDecoder().decode(d.memory.slice(ga(DATA), 7)!)).toBe("SECTOR0");
  });

  test("writes reach the file", () => {
    const { path, file } = disk();
    const dev = new Block(file, "id");
    const d = new VirtqueueDriver();
    d.memory.write(ga(DATA), new TextEncoder().encode("HELLO"));
    expect(request(dev, d, VIRTIO_BLK_T.OUT, 2, 512, false).status).toBe(VIRTIO_BLK_S.OK);
    expect(new TextDecoder().decode(readFileSync(path).subarray(1024, 1029))).toBe("HELLO");
  });

  test("requests past the capacity fail without touching the file", () => {
    const { path, file } = disk();
    const dev = new Block(file, "id");
    const d = new VirtqueueDriver();
    expect(request(dev, d, VIRTIO_BLK_T.OUT, DISK_SIZE / 512, 512, false).status).toBe(VIRTIO_BLK_S.IOERR);
    expect(request(dev, d, VIRTIO_BLK_T.IN, DISK_SIZE / 512 - 1, 1024, true).status).toBe(VIRTIO_BLK_S.IOERR);
    expect(request(dev, d, VIRTIO_BLK_T.IN, 2 ** 60, 512, true).status).toBe(VIRTIO_BLK_S.IOERR);
    expect(readFileSync(path).byteLength).toBe(DISK_SIZE);
  });

  test("a read-only disk refuses writes and offers VIRTIO_BLK_F_RO", () => {
    const { file } = disk(true);
    const dev = new Block(file, "id");
    expect((dev.features >> 5n) & 1n).toBe(1n);
    expect(request(dev, new VirtqueueDriver(), VIRTIO_BLK_T.OUT, 0, 512, false).status).toBe(VIRTIO_BLK_S.IOERR);
  });

  test("get-id returns the configured serial", () => {
    const { file } = disk();
    const d = new VirtqueueDriver();
    expect(request(new Block(file, "serial-42"), d, VIRTIO_BLK_T.GET_ID, 0, 20, true).status).toBe(VIRTIO_BLK_S.OK);
    expect(new TextDecoder().decode(d.memory.slice(ga(DATA), 9)!)).toBe("serial-42");
  });

  test("the status goes to the last writable byte, past data the device did not fill and an empty last buffer", () => {
    const { file } = disk();
    const d = new VirtqueueDriver();
    d.memory.writeU32(ga(HDR), VIRTIO_BLK_T.GET_ID);
    d.memory.writeU64(ga(HDR + 8), 0n);
    d.memory.write(ga(DATA), new Uint8Array(40).fill(0xee));
    d.writeDesc(0, { addr: HDR, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 1 });
    d.writeDesc(1, { addr: DATA, len: 31, flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, next: 2 }); // 20 of id, 10 unused, status
    d.writeDesc(2, { addr: DATA + 0x100, len: 0, flags: VIRTQ_DESC_F_WRITE, next: 0 });
    d.publish(0);
    const r = d.queue.pop();
    if (r?.kind !== "chain") throw new Error("expected a chain");
    expect(new Block(file, "serial-7").handle(r.chain)).toBe(31);
    expect(new TextDecoder().decode(d.memory.slice(ga(DATA), 8)!)).toBe("serial-7");
    expect([...d.memory.slice(ga(DATA + 20), 11)!]).toEqual([...new Array<number>(10).fill(0xee), VIRTIO_BLK_S.OK]);
  });

  test("unknown request types are unsupported", () => {
    const { file } = disk();
    expect(request(new Block(file, "id"), new VirtqueueDriver(), 77, 0, 0, false).status).toBe(VIRTIO_BLK_S.UNSUPP);
  });

  test("write-zeroes clears a range", () => {
    const { path, file } = disk();
    const dev = new Block(file, "id");
    const d = new VirtqueueDriver();
    d.memory.writeU64(ga(DATA), 0n);
    d.memory.writeU32(ga(DATA + 8), 1);
    d.memory.writeU32(ga(DATA + 12), 0);
    expect(request(dev, d, VIRTIO_BLK_T.WRITE_ZEROES, 0, 16, false).status).toBe(VIRTIO_BLK_S.OK);
    expect(readFileSync(path).subarray(0, 7).every((b) => b === 0)).toBe(true);
  });

  test("write-zeroes on a qcow2 image (zeros written on the loop) is limited to one segment of 16 MiB, advertised and enforced", () => {
    const path = join(tempDir(), "wz.qcow2");
    createQcow2(path, 64 << 20);
    const image = openDiskImage(path, false, "qcow2");
    const dev = new Block(image, "id");
    const cfg = new DataView(new ArrayBuffer(60));
    dev.readConfig(0, new Uint8Array(cfg.buffer));
    expect([cfg.getUint32(48, true), cfg.getUint32(52, true)]).toEqual([32768, 1]);
    const d = new VirtqueueDriver();
    const segment = (at: number, sector: number, sectors: number): void => {
      d.memory.writeU64(ga(DATA + at), BigInt(sector));
      d.memory.writeU32(ga(DATA + at + 8), sectors);
      d.memory.writeU32(ga(DATA + at + 12), 0);
    };
    segment(0, 0, 32768 + 8);
    expect(request(dev, d, VIRTIO_BLK_T.WRITE_ZEROES, 0, 16, false).status).toBe(VIRTIO_BLK_S.IOERR);
    segment(0, 0, 8);
    segment(16, 64, 8);
    expect(request(dev, d, VIRTIO_BLK_T.WRITE_ZEROES, 0, 32, false).status).toBe(VIRTIO_BLK_S.IOERR);
    expect(request(dev, d, VIRTIO_BLK_T.WRITE_ZEROES, 0, 16, false).status).toBe(VIRTIO_BLK_S.OK);
    image.close();
  });

  test("the configuration reports the capacity in sectors", () => {
    const { file } = disk();
    const cfg = new Uint8Array(8);
    new Block(file, "id").readConfig(0, cfg);
    expect(new DataView(cfg.buffer).getBigUint64(0, true)).toBe(BigInt(DISK_SIZE / 512));
  });

  test("a second read-write open of the same image is refused", () => {
    const { path } = disk();
    expect(() => DiskFile.open(path, false)).toThrow(/another VM has it open/);
  });
});

describe("Block durability (virtio 1.2 §5.2.6.2)", () => {
  /** A disk that counts its flushes. */
  function countingDisk() {
    const { file } = disk();
    let flushes = 0;
    const flush = file.flush.bind(file);
    file.flush = () => {
      flushes++;
      return flush();
    };
    return { disk: file, flushes: () => flushes };
  }
  /** Activates `dev` as a driver that accepted `features` would. */
  function activate(dev: Block, features: bigint): void {
    using kick = new EventFd();
    const interrupt = { signalUsedQueue: () => {}, signalConfigChanged: () => {}, queueNotifier: () => kick, onNotifiersChanged: () => {} };
    dev.activate({ memory: new VirtqueueDriver().memory, queues: [null], kicks: [kick], interrupt, features, loop: new FakeLoop(), needsReset: () => {} }).stop();
  }

  for (const [accepted, expected] of [[true, 0], [false, 2]] as const) {
    test(`a driver that ${accepted ? "accepted" : "did not accept"} VIRTIO_BLK_F_FLUSH gets ${accepted ? "write-back" : "write-through"}: ${expected} flushes for a write and a write-zeroes`, () => {
      const c = countingDisk();
      const dev = new Block(c.disk, "id");
      activate(dev, (1n << 32n) | (accepted ? 1n << VIRTIO_BLK_F.FLUSH : 0n));
      const d = new VirtqueueDriver();
      expect(request(dev, d, VIRTIO_BLK_T.OUT, 0, 512, false).status).toBe(VIRTIO_BLK_S.OK);
      d.memory.writeU64(ga(DATA), 4n);
      d.memory.writeU32(ga(DATA + 8), 1);
      d.memory.writeU32(ga(DATA + 12), 0);
      expect(request(dev, d, VIRTIO_BLK_T.WRITE_ZEROES, 0, 16, false).status).toBe(VIRTIO_BLK_S.OK);
      expect(c.flushes()).toBe(expected);
    });
  }

  test("before any driver has said, writes are write-through", () => {
    const c = countingDisk();
    expect(request(new Block(c.disk, "id"), new VirtqueueDriver(), VIRTIO_BLK_T.OUT, 0, 512, false).status).toBe(VIRTIO_BLK_S.OK);
    expect(c.flushes()).toBe(1);
  });

  test("a write whose flush fails is reported as an I/O error", () => {
    const c = countingDisk();
    c.disk.flush = () => false;
    expect(request(new Block(c.disk, "id"), new VirtqueueDriver(), VIRTIO_BLK_T.OUT, 0, 512, false).status).toBe(VIRTIO_BLK_S.IOERR);
  });
});

describe("Block requests in flight (raw image, I/O pool)", () => {
  const SLOT = 0x2000; // bytes of guest memory per request: header, data, status
  /** An activated block device on a queue of `size`, its driver, loop and interrupt count. */
  function activated(size: number, features: bigint, bytes = DISK_SIZE, direct = false, cachedOnLoop = false, aio: AioMode = {}) {
    const path = join(tempDir(), "disk.img");
    writeFileSync(path, Uint8Array.from({ length: bytes }, (_, i) => (i * 7 + (i >> 9)) & 0xff));
    const file = DiskFile.open(path, false, direct);
    return { path, file, ...activatedOn(file, size, features, cachedOnLoop, aio) };
  }
  /**
   * Block over `image`, activated on a queue of `size`; requests at depth go to the pool unless
   * `cachedOnLoop`; with `aio.offload`, a pool thread starts its batches of kernel requests, with
   * `aio.threadsOnly` the pool's threads serve every request.
   */
  function activatedOn(image: DiskImage, size: number, features: bigint, cachedOnLoop = false, aio: AioMode = {}) {
    const dev = new Block(image, "id");
    dev.serveCachedOnLoop = cachedOnLoop;
    dev.aioOffload = aio.offload ?? false;
    dev.aioThreadsOnly = aio.threadsOnly ?? false;
    const d = new VirtqueueDriver(size);
    const kick = new EventFd();
    const loop = new FakeLoop();
    let interrupts = 0;
    const interrupt = { signalUsedQueue: () => void interrupts++, signalConfigChanged: () => {}, queueNotifier: () => kick, onNotifiersChanged: () => {} };
    const worker = dev.activate({ memory: d.memory, queues: [d.queue], kicks: [kick], interrupt, features, loop, needsReset: (why) => { throw new Error(why); } });
    /** Runs the completion handler each time the pool signals, until `count` used entries are there. */
    const pump = (count: number): void => {
      const deadline = Date.now() + 5000;
      while (d.usedIdx() < count && Date.now() < deadline) {
        for (const [fd, handler] of [...loop.handlers]) {
          if (fd !== kick.fd && socket.waitReadable(fd, 100) > 0) handler();
        }
      }
    };
    return { dev, d, kick, loop, worker, pump, interrupts: () => interrupts };
  }
  /** Posts request `n` (descriptors 3n..3n+2, memory slot n of `slot` bytes) without kicking. */
  function post(d: VirtqueueDriver, n: number, type: number, sector: number, dataLen: number, slot = SLOT): { data: number; status: number } {
    const hdr = BUFFERS + n * slot;
    const data = hdr + 0x200;
    const status = hdr + 0x200 + dataLen;
    d.memory.writeU32(ga(hdr), type);
    d.memory.writeU64(ga(hdr + 8), BigInt(sector));
    d.memory.writeU8(ga(status), 0xff);
    const deviceWrites = type === VIRTIO_BLK_T.IN;
    if (dataLen > 0) {
      d.writeDesc(3 * n, { addr: hdr, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 3 * n + 1 });
      d.writeDesc(3 * n + 1, { addr: data, len: dataLen, flags: VIRTQ_DESC_F_NEXT | (deviceWrites ? VIRTQ_DESC_F_WRITE : 0), next: 3 * n + 2 });
      d.writeDesc(3 * n + 2, { addr: status, len: 1, flags: VIRTQ_DESC_F_WRITE, next: 0 });
    } else {
      d.writeDesc(3 * n, { addr: hdr, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 3 * n + 1 });
      d.writeDesc(3 * n + 1, { addr: status, len: 1, flags: VIRTQ_DESC_F_WRITE, next: 0 });
    }
    d.publish(3 * n);
    return { data, status };
  }
  const FEATURES = (1n << 32n) | (1n << VIRTIO_BLK_F.FLUSH);

  test("eight reads posted at once all complete with their data, returned by the loop, with interrupts", () => {
    const t = activated(32, FEATURES);
    const posted = Array.from({ length: 8 }, (_, n) => post(t.d, n, VIRTIO_BLK_T.IN, n * 8, 4096));
    t.kick.signal();
    t.loop.handlers.get(t.kick.fd)!();
    t.pump(8);
    expect(t.d.usedIdx()).toBe(8);
    const disk = readFileSync(t.path);
    const heads = new Set<number>();
    for (let i = 0; i < 8; i++) {
      const used = t.d.used(i);
      heads.add(used.id);
      expect(used.len).toBe(4097);
    }
    expect([...heads].sort((a, b) => a - b)).toEqual([0, 3, 6, 9, 12, 15, 18, 21]);
    posted.forEach(({ data, status }, n) => {
      expect(t.d.memory.readU8(ga(status))).toBe(VIRTIO_BLK_S.OK);
      expect(Buffer.from(t.d.memory.slice(ga(data), 4096)!).equals(disk.subarray(n * 4096, (n + 1) * 4096))).toBe(true);
    });
    expect(t.interrupts()).toBeGreaterThan(0);
    t.worker.stop();
    t.file.close();
  });

  test("requests that continue one another go to the pool merged, up to 512 KiB; others stay apart", () => {
    const KIB64 = 65536;
    const t = activated(64, FEATURES, 4 << 20);
    // 10 sequential 64 KiB reads, posted out of order, and 2 reads with gaps between them.
    const order = [3, 0, 1, 2, 7, 4, 5, 6, 9, 8];
    const slot = KIB64 + 0x1000;
    const posted = order.map((k, n) => ({ k, ...post(t.d, n, VIRTIO_BLK_T.IN, k * (KIB64 / 512), KIB64, slot) }));
    const gaps = [0, 1].map((k, i) => ({ k: 20 + 2 * k, ...post(t.d, 10 + i, VIRTIO_BLK_T.IN, (20 + 2 * k) * (KIB64 / 512), KIB64, slot) }));
    t.loop.handlers.get(t.kick.fd)!();
    t.pump(12);
    expect(t.d.usedIdx()).toBe(12);
    // 8 + 2 sequential reads make two pool requests (512 KiB at most each); the 2 apart, two.
    expect(t.dev.poolRequests).toEqual({ submitted: 4, parts: 12 });
    const disk = readFileSync(t.path);
    for (const { k, data, status } of [...posted, ...gaps]) {
      expect(t.d.memory.readU8(ga(status))).toBe(VIRTIO_BLK_S.OK);
      expect(Buffer.from(t.d.memory.slice(ga(data), KIB64)!).equals(disk.subarray(k * KIB64, (k + 1) * KIB64))).toBe(true);
    }
    t.worker.stop();
    t.file.close();
  });

  test("requests at depth that the page cache can serve at once are served on the loop, without a pool thread", () => {
    const t = activated(32, FEATURES, DISK_SIZE, false, true);
    const cached = diskTry(t.file.fd, [new Uint8Array(4096)], 0, false) === 4096; // RWF_NOWAIT where the file system has it
    const reads = [5, 1, 7, 3].map((k, n) => ({ k, ...post(t.d, n, VIRTIO_BLK_T.IN, k * 8, 4096) }));
    const { data: written } = post(t.d, 4, VIRTIO_BLK_T.OUT, 100 * 8, 4096);
    t.d.memory.write(ga(written), new Uint8Array(4096).fill(0x5e));
    t.loop.handlers.get(t.kick.fd)!();
    t.pump(5);
    expect(t.d.usedIdx()).toBe(5);
    const disk = readFileSync(t.path);
    for (const { k, data, status } of reads) {
      expect(t.d.memory.readU8(ga(status))).toBe(VIRTIO_BLK_S.OK);
      expect(Buffer.from(t.d.memory.slice(ga(data), 4096)!).equals(disk.subarray(k * 4096, (k + 1) * 4096))).toBe(true);
    }
    expect(disk.subarray(100 * 4096, 101 * 4096).every((b) => b === 0x5e)).toBe(true);
    if (cached) expect(t.dev.poolRequests.parts).toBeLessThanOrEqual(1); // the reads at least; the write if the file system can
    t.worker.stop();
    t.file.close();
  });

  test("a slow buffered write on the loop sends the writes after it to the pool", () => {
    const t = activated(32, FEATURES, DISK_SIZE, false, true);
    if (diskTry(t.file.fd, [new Uint8Array(512)], 0, true) !== -95) { // EOPNOTSUPP: ext4's answer; tmpfs tries writes itself
      t.worker.stop();
      t.file.close();
      return console.warn("tsvm tests: this file system tries buffered writes without blocking; the slow-write test is skipped");
    }
    t.dev.slowWriteMs = -1; // every write counts as slow
    const statuses: number[] = [];
    for (let n = 0; n < 4; n++) {
      const { data, status } = post(t.d, n, VIRTIO_BLK_T.OUT, n * 16, 4096); // 8 KiB apart: no merging
      t.d.memory.write(ga(data), new Uint8Array(4096).fill(0x30 + n));
      statuses.push(status);
    }
    t.loop.handlers.get(t.kick.fd)!();
    t.pump(4);
    expect(t.d.usedIdx()).toBe(4);
    expect(t.dev.poolRequests.parts).toBe(3); // the first on the loop, the rest on the pool
    const disk = readFileSync(t.path);
    for (let n = 0; n < 4; n++) expect(disk.subarray(n * 8192, n * 8192 + 4096).every((b) => b === 0x30 + n)).toBe(true);
    expect(statuses.map((at) => t.d.memory.readU8(ga(at)))).toEqual([0, 0, 0, 0]);
    t.worker.stop();
    t.file.close();
  });

  test("writes into the page cache that continue one another are written on the loop in one call, before a read and a FLUSH taken after them", () => {
    const t = activated(32, FEATURES, DISK_SIZE, false, true);
    const SLOT_16K = 0x4000;
    const statuses: number[] = [];
    for (let n = 0; n < 3; n++) {
      const { data, status } = post(t.d, n, VIRTIO_BLK_T.OUT, n * 8, 4096, SLOT_16K); // 4 KiB each, one after another
      t.d.memory.write(ga(data), new Uint8Array(4096).fill(0x11 * (n + 1)));
      statuses.push(status);
    }
    const read = post(t.d, 3, VIRTIO_BLK_T.IN, 0, 3 * 4096, SLOT_16K);
    statuses.push(read.status, post(t.d, 4, VIRTIO_BLK_T.FLUSH, 0, 0, SLOT_16K).status);
    t.loop.handlers.get(t.kick.fd)!();
    t.pump(5);
    expect(t.d.usedIdx()).toBe(5);
    expect(statuses.map((at) => t.d.memory.readU8(ga(at)))).toEqual([0, 0, 0, 0, 0]);
    expect(t.dev.loopWrites).toEqual({ calls: 1, parts: 3 });
    const expected = [0x11, 0x22, 0x33].flatMap((b) => new Array<number>(4096).fill(b));
    expect([...t.d.memory.slice(ga(read.data), 3 * 4096)!]).toEqual(expected); // the read saw the writes
    expect([...readFileSync(t.path).subarray(0, 3 * 4096)]).toEqual(expected);
    t.worker.stop();
    t.file.close();
  });

  test("a ring the driver breaks while requests are in flight stops the device: no other ring is served after", () => {
    const path = join(tempDir(), "mq.img");
    writeFileSync(path, new Uint8Array(1 << 20));
    const file = DiskFile.open(path, false);
    const block = new Block(file, "id", "block", 2);
    block.serveCachedOnLoop = false;
    const a = new VirtqueueDriver(16);
    const b = new VirtqueueDriver(16, { eventIdx: false, indirect: true }, { memory: a.memory, rings: 0x8000, index: 1 });
    let slot = 0;
    const postRead = (q: VirtqueueDriver, sector: number): void => {
      const base = 0x20000 + slot * 0x2000;
      const d = slot * 3;
      slot++;
      a.memory.writeU32(ga(base), VIRTIO_BLK_T.IN);
      a.memory.writeU64(ga(base + 8), BigInt(sector));
      q.writeDesc(d, { addr: base, len: 16, flags: VIRTQ_DESC_F_NEXT, next: d + 1 });
      q.writeDesc(d + 1, { addr: base + 0x1000, len: 512, flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, next: d + 2 });
      q.writeDesc(d + 2, { addr: base + 0x800, len: 1, flags: VIRTQ_DESC_F_WRITE, next: 0 });
      q.publish(d);
    };
    const loop = new FakeLoop();
    const kicks = [new EventFd(), new EventFd()];
    const interrupt = { signalUsedQueue: () => {}, signalConfigChanged: () => {}, queueNotifier: (q: number) => kicks[q]!, onNotifiersChanged: () => {} };
    let atReset: number | null = null;
    postRead(a, 1);
    postRead(a, 2);
    const worker = block.activate({
      memory: a.memory, queues: [a.queue, b.queue], kicks, interrupt, features: 0n, loop,
      needsReset: () => {
        worker.stop(); // returns what was in flight
        atReset = b.usedIdx();
      },
    });
    postRead(b, 3);
    postRead(b, 4);
    loop.handlers.get(kicks[1]!.fd)!();
    const done = [...loop.handlers.keys()].find((fd) => fd !== kicks[0]!.fd && fd !== kicks[1]!.fd)!;
    a.setAvailIdx(a.queue.nextAvail + 100); // queue 0's driver breaks its ring
    postRead(b, 5); // and queue 1 has more
    postRead(b, 6);
    // Completions drain the queues they came from; queue 0's drain meets the broken ring. Before: queue
    // 1 was drained after the stop anyway (its new requests served), and then the handler threw.
    const deadline = Date.now() + 5000;
    while (atReset === null && Date.now() < deadline) if (socket.waitReadable(done, 100) > 0) loop.handlers.get(done)!();
    expect(atReset).not.toBeNull();
    expect(b.usedIdx()).toBe(atReset!);
    file.close();
  });

  test("writes in flight land in the file, and a FLUSH after them completes after them", () => {
    const t = activated(32, FEATURES);
    for (let n = 0; n < 6; n++) {
      const { data } = post(t.d, n, VIRTIO_BLK_T.OUT, n * 8, 4096);
      t.d.memory.write(ga(data), new Uint8Array(4096).fill(0xa0 + n));
    }
    const flush = post(t.d, 6, VIRTIO_BLK_T.FLUSH, 0, 0);
    t.loop.handlers.get(t.kick.fd)!();
    t.pump(7);
    expect(t.d.usedIdx()).toBe(7);
    expect(t.d.used(6)).toEqual({ id: 18, len: 1 }); // the flush is last
    expect(t.d.memory.readU8(ga(flush.status))).toBe(VIRTIO_BLK_S.OK);
    const disk = readFileSync(t.path);
    for (let n = 0; n < 6; n++) expect(disk.subarray(n * 4096, (n + 1) * 4096).every((b) => b === 0xa0 + n)).toBe(true);
    t.worker.stop();
    t.file.close();
  });

  test("a driver that floods FLUSHes behind a write in flight gets every one served, and no longer list than a queue's worth", () => {
    const t = activated(256, FEATURES);
    const write = post(t.d, 0, VIRTIO_BLK_T.OUT, 0, 4096);
    t.d.memory.write(ga(write.data), new Uint8Array(4096).fill(0x5a));
    const flush = post(t.d, 1, VIRTIO_BLK_T.FLUSH, 0, 0);
    for (let i = 0; i < 254; i++) t.d.publish(3); // the same FLUSH head, again and again
    t.loop.handlers.get(t.kick.fd)!(); // the write goes in flight, 255 FLUSHes wait for it
    expect(t.d.usedIdx()).toBe(0);
    for (let i = 0; i < 10; i++) t.d.publish(3);
    t.loop.handlers.get(t.kick.fd)!(); // one more waits; past a queue's worth they wait here for the write
    expect(t.d.usedIdx()).toBe(9);
    expect(readFileSync(t.path).subarray(0, 4096).every((b) => b === 0x5a)).toBe(true); // (the write was done before them)
    t.pump(266);
    expect(t.d.usedIdx()).toBe(266);
    expect([t.d.memory.readU8(ga(write.status)), t.d.memory.readU8(ga(flush.status))]).toEqual([VIRTIO_BLK_S.OK, VIRTIO_BLK_S.OK]);
    t.worker.stop();
    t.file.close();
  });

  test("a driver without FLUSH gets its in-flight writes (write-through) and bad requests fail without touching the file", () => {
    const t = activated(32, 1n << 32n);
    const good = post(t.d, 0, VIRTIO_BLK_T.OUT, 1, 512);
    t.d.memory.write(ga(good.data), new Uint8Array(512).fill(0x5a));
    const outside = post(t.d, 1, VIRTIO_BLK_T.OUT, DISK_SIZE / 512, 512);
    const partial = post(t.d, 2, VIRTIO_BLK_T.IN, 0, 100);
    t.loop.handlers.get(t.kick.fd)!();
    t.pump(3);
    expect(t.d.memory.readU8(ga(good.status))).toBe(VIRTIO_BLK_S.OK);
    expect(t.d.memory.readU8(ga(outside.status))).toBe(VIRTIO_BLK_S.IOERR);
    expect(t.d.memory.readU8(ga(partial.status))).toBe(VIRTIO_BLK_S.IOERR);
    const disk = readFileSync(t.path);
    expect(disk.byteLength).toBe(DISK_SIZE);
    expect(disk.subarray(512, 1024).every((b) => b === 0x5a)).toBe(true);
    t.worker.stop();
    t.file.close();
  });

  test("the same head posted twice while in flight is served twice, and stop finishes and returns what is in flight", () => {
    const t = activated(32, FEATURES, 4 << 20);
    post(t.d, 0, VIRTIO_BLK_T.IN, 0, 4096);
    t.d.publish(0); // a hostile driver: head 0 again before it was used
    for (let n = 1; n < 8; n++) post(t.d, n, VIRTIO_BLK_T.IN, n * 128, 4096);
    t.loop.handlers.get(t.kick.fd)!();
    t.pump(9);
    expect(t.d.usedIdx()).toBe(9);
    expect(Array.from({ length: 9 }, (_, i) => t.d.used(i).id).filter((id) => id === 0).length).toBe(2);
    // More requests, then stop at once: stop returns only after they are done and returned to the
    // used ring, and its completion handler is gone, so nothing more reaches the used ring.
    for (let n = 0; n < 8; n++) post(t.d, n, VIRTIO_BLK_T.IN, n * 256, 4096);
    t.loop.handlers.get(t.kick.fd)!();
    expect(t.d.usedIdx()).toBeLessThan(17);
    t.worker.stop();
    expect(t.loop.handlers.size).toBe(0);
    expect(t.d.usedIdx()).toBe(17);
    for (let i = 9; i < 17; i++) expect(t.d.used(i).len).toBe(4097);
    t.file.close();
  });

  test("two queues (VIRTIO_BLK_F_MQ): requests on both are in flight at once, each returns to its own queue with its own interrupt, and a FLUSH on one waits for writes on the other", () => {
    const path = join(tempDir(), "disk.img");
    writeFileSync(path, Uint8Array.from({ length: DISK_SIZE }, (_, i) => (i * 13) & 0xff));
    const file = DiskFile.open(path, false);
    const dev = new Block(file, "id", "block", 2);
    expect(dev.queueMaxSizes).toEqual([256, 256]);
    expect((dev.features >> VIRTIO_BLK_F.MQ) & 1n).toBe(1n);
    const cfg = new Uint8Array(2);
    dev.readConfig(34, cfg);
    expect(cfg[0]! | (cfg[1]! << 8)).toBe(2); // num_queues
    const q0 = new VirtqueueDriver(32);
    const q1 = new VirtqueueDriver(64, undefined, { memory: q0.memory, rings: 0x5000, index: 1 });
    const kicks = [new EventFd(), new EventFd()];
    const loop = new FakeLoop();
    const signalled: number[] = [];
    const interrupt = { signalUsedQueue: (q: number) => void signalled.push(q), signalConfigChanged: () => {}, queueNotifier: () => kicks[0]!, onNotifiersChanged: () => {} };
    const worker = dev.activate({
      memory: q0.memory, queues: [q0.queue, q1.queue], kicks, interrupt, features: FEATURES | (1n << VIRTIO_BLK_F.MQ), loop,
      needsReset: (why) => { throw new Error(why); },
    });
    // Queue 0: four reads (slots 0-3); queue 1: four writes (slots 8-11) and a FLUSH (slot 12).
    const reads = Array.from({ length: 4 }, (_, n) => post(q0, n, VIRTIO_BLK_T.IN, n * 8, 4096));
    for (let n = 0; n < 4; n++) {
      const { data } = post(q1, 8 + n, VIRTIO_BLK_T.OUT, 64 + n * 8, 4096);
      q1.memory.write(ga(data), new Uint8Array(4096).fill(0xc0 + n));
    }
    const flush = post(q1, 12, VIRTIO_BLK_T.FLUSH, 0, 0);
    loop.handlers.get(kicks[0]!.fd)!();
    loop.handlers.get(kicks[1]!.fd)!();
    const deadline = Date.now() + 5000;
    while ((q0.usedIdx() < 4 || q1.usedIdx() < 5) && Date.now() < deadline) {
      for (const [fd, handler] of [...loop.handlers]) if (!kicks.some((k) => k.fd === fd) && socket.waitReadable(fd, 100) > 0) handler();
    }
    expect([q0.usedIdx(), q1.usedIdx()]).toEqual([4, 5]);
    expect(new Set(Array.from({ length: 4 }, (_, i) => q0.used(i).id))).toEqual(new Set([0, 3, 6, 9]));
    expect(q1.used(4)).toEqual({ id: 36, len: 1 }); // the FLUSH is last on its queue
    expect(q1.memory.readU8(ga(flush.status))).toBe(VIRTIO_BLK_S.OK);
    const bytes = readFileSync(path);
    reads.forEach(({ data, status }, n) => {
      expect(q0.memory.readU8(ga(status))).toBe(VIRTIO_BLK_S.OK);
      expect(Buffer.from(q0.memory.slice(ga(data), 4096)!).equals(bytes.subarray(n * 4096, (n + 1) * 4096))).toBe(true);
    });
    for (let n = 0; n < 4; n++) expect(bytes.subarray((8 + n) * 4096, (9 + n) * 4096).every((b) => b === 0xc0 + n)).toBe(true);
    expect(new Set(signalled)).toEqual(new Set([0, 1]));
    worker.stop();
    expect(loop.handlers.size).toBe(0);
    file.close();
  });

  test("the number of queues is checked", () => {
    const { file } = disk();
    expect(() => new Block(file, "id", "block", 0)).toThrow(/expected 1 to 16/);
    expect(() => new Block(file, "id", "block", 17)).toThrow(/expected 1 to 16/);
    expect((new Block(file, "id").features >> VIRTIO_BLK_F.MQ) & 1n).toBe(0n); // one queue: no MQ
    file.close();
  });

  test.skipIf(!HAS_QEMU_IMG)("qcow2 over a raw backing file: reads and in-place writes in flight, allocating writes served alone, all as qemu-img sees it", () => {
    const dir = tempDir();
    const K = 1024;
    const base = join(dir, "base.raw");
    const baseBytes = Uint8Array.from({ length: 512 * K }, (_, i) => (i * 5 + (i >> 12)) & 0xff);
    writeFileSync(base, baseBytes);
    const overlay = join(dir, "overlay.qcow2");
    const sh = (...cmd: string[]): string => {
      const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
      if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr.toString()}`);
      return r.stdout.toString();
    };
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", "-b", "base.raw", "-F", "raw", overlay, "1M");
    // Clusters 0-1 allocated (0x11), 2-3 from the backing file, 4 zero, 5-15 past the backing file's end.
    sh("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 128k", "-c", "write -z 256k 64k", overlay);
    const expected = new Uint8Array(1024 * K);
    expected.set(baseBytes);
    expected.fill(0x11, 0, 128 * K);
    expected.fill(0, 256 * K, 320 * K);
    const image = openDiskImage(overlay, false, null);
    // The mapping the pool gets: merged allocated clusters, the backing file's own extent, zeros.
    expect(image.extents(0, 128 * K, false)).toEqual([{ target: image.poolTarget, hostOffset: expect.any(Number), length: 128 * K }]);
    const backingFd = image.chainFds[1]!;
    expect(image.extents(128 * K, 128 * K, false)).toEqual([{ target: { fd: backingFd, align: 1 }, hostOffset: 128 * K, length: 128 * K }]);
    expect(image.extents(256 * K, 64 * K, false)).toEqual([{ target: null, hostOffset: 0, length: 64 * K }]);
    expect(image.extents(4 * K, 8 * K, true)?.length).toBe(1); // allocated and ours: written in place
    expect(image.extents(128 * K, 4 * K, true)).toBeNull(); // unallocated: allocation is served alone
    const t = activatedOn(image, 64, FEATURES);
    // Reads at depth across every kind of cluster (4 KiB each, most straddling two clusters)...
    const reads = [0, 62, 126, 200, 254, 318, 510, 600].map((k, n) => ({ at: k * K, ...post(t.d, n, VIRTIO_BLK_T.IN, (k * K) / 512, 4 * K) }));
    t.loop.handlers.get(t.kick.fd)!();
    t.pump(reads.length);
    expect(t.d.usedIdx()).toBe(reads.length);
    for (const r of reads) {
      expect(t.d.memory.readU8(ga(r.status))).toBe(VIRTIO_BLK_S.OK);
      expect(Buffer.from(t.d.memory.slice(ga(r.data), 4 * K)!).equals(expected.subarray(r.at, r.at + 4 * K))).toBe(true);
    }
    // ...then writes at depth: in place (clusters 0-1) and allocating (backing, zero and empty clusters).
    const writes = [8, 62, 140, 260, 700].map((k, n) => ({ at: k * K, fill: 0x40 + n, ...post(t.d, 8 + n, VIRTIO_BLK_T.OUT, (k * K) / 512, 4 * K) }));
    for (const w of writes) {
      t.d.memory.write(ga(w.data), new Uint8Array(4 * K).fill(w.fill));
      expected.fill(w.fill, w.at, w.at + 4 * K);
    }
    t.loop.handlers.get(t.kick.fd)!();
    t.pump(reads.length + writes.length);
    expect(t.d.usedIdx()).toBe(reads.length + writes.length);
    for (const w of writes) expect(t.d.memory.readU8(ga(w.status))).toBe(VIRTIO_BLK_S.OK);
    t.worker.stop();
    image.close();
    expect(Bun.spawnSync(["qemu-img", "check", overlay]).exitCode).toBe(0);
    const raw = join(dir, "out.raw");
    sh("qemu-img", "convert", "-O", "raw", overlay, raw);
    expect(Buffer.from(readFileSync(raw)).equals(Buffer.from(expected))).toBe(true);
  });

  test("while requests are in flight the driver is asked not to notify, and what it posts meanwhile is served when they finish", () => {
    const t = activated(32, FEATURES); // no event idx: VIRTQ_USED_F_NO_NOTIFY
    for (let n = 0; n < 4; n++) post(t.d, n, VIRTIO_BLK_T.IN, n * 8, 4096);
    expect(t.d.usedFlags()).toBe(0);
    t.loop.handlers.get(t.kick.fd)!();
    expect([t.d.usedFlags(), t.d.usedIdx()]).toEqual([1, 0]); // all four on the pool: quiet
    // Posted without a notification (as a driver that honours the flag does): found after the completions.
    for (let n = 4; n < 8; n++) post(t.d, n, VIRTIO_BLK_T.IN, n * 8, 4096);
    t.pump(8);
    expect(t.d.usedIdx()).toBe(8);
    for (let i = 0; i < 8; i++) expect(t.d.used(i).len).toBe(4097);
    expect(t.d.usedFlags()).toBe(0); // idle again: notifications are back on
    t.worker.stop();
    t.file.close();
  });

  test("the host's flush command waits for writes in flight", () => {
    const t = activated(32, FEATURES);
    for (let n = 0; n < 4; n++) {
      const { data } = post(t.d, n, VIRTIO_BLK_T.OUT, n * 8, 4096);
      t.d.memory.write(ga(data), new Uint8Array(4096).fill(0x11 * (n + 1)));
    }
    t.loop.handlers.get(t.kick.fd)!();
    expect(t.dev.control({ kind: "flush" })).toEqual({ kind: "ok" });
    expect(t.d.usedIdx()).toBe(4); // settled: returned to the ring before the flush
    t.worker.stop();
    t.file.close();
  });

  test("with o_direct=true, requests in flight bypass the page cache and sector-sized writes keep their neighbours", () => {
    let t;
    try {
      t = activated(32, 1n << 32n | (1n << VIRTIO_BLK_F.FLUSH), DISK_SIZE, true);
    } catch (e) {
      if (e instanceof Error && /does not support O_DIRECT/.test(e.message)) return console.warn(`skipping: ${e.message}`);
      throw e;
    }
    expect(t.file.align).toBeGreaterThan(1);
    const reads = Array.from({ length: 4 }, (_, n) => post(t.d, n, VIRTIO_BLK_T.IN, n * 8, 4096));
    const write = post(t.d, 4, VIRTIO_BLK_T.OUT, 65, 512); // one 512-byte sector, inside a 4 KiB block
    t.d.memory.write(ga(write.data), new Uint8Array(512).fill(0x77));
    const before = readFileSync(t.path);
    t.loop.handlers.get(t.kick.fd)!();
    t.pump(5);
    expect(t.d.usedIdx()).toBe(5);
    reads.forEach(({ data, status }, n) => {
      expect(t.d.memory.readU8(ga(status))).toBe(VIRTIO_BLK_S.OK);
      expect(Buffer.from(t.d.memory.slice(ga(data), 4096)!).equals(before.subarray(n * 4096, (n + 1) * 4096))).toBe(true);
    });
    expect(t.d.memory.readU8(ga(write.status))).toBe(VIRTIO_BLK_S.OK);
    const after = readFileSync(t.path);
    expect(after.subarray(65 * 512, 66 * 512).every((b) => b === 0x77)).toBe(true);
    expect(after.subarray(64 * 512, 65 * 512).equals(before.subarray(64 * 512, 65 * 512))).toBe(true);
    expect(after.subarray(66 * 512).equals(before.subarray(66 * 512))).toBe(true);
    t.worker.stop();
    t.file.close();
  });

  for (const [how, aio] of [["batches offloaded to a pool thread", { offload: true }], ["every request on the pool's threads", { threadsOnly: true }]] as const) {
    test(`with o_direct=true and ${how}, 32 reads and writes in flight return their bytes and land`, () => {
      let t;
      try {
        t = activated(128, 1n << 32n | (1n << VIRTIO_BLK_F.FLUSH), 64 * 4096, true, false, aio);
      } catch (e) {
        if (e instanceof Error && /does not support O_DIRECT/.test(e.message)) return console.warn(`skipping: ${e.message}`);
        throw e;
      }
      const before = readFileSync(t.path);
      // 20 reads of blocks 0, 2, ... 38 and 12 writes of blocks 41, 43, ... 63, 4 KiB each, none
      // continuing another (nothing merges): all go to the kernel, or all to the threads
      const reads = Array.from({ length: 20 }, (_, n) => post(t.d, n, VIRTIO_BLK_T.IN, 2 * n * 8, 4096));
      const writes = Array.from({ length: 12 }, (_, n) => {
        const w = post(t.d, 20 + n, VIRTIO_BLK_T.OUT, (41 + 2 * n) * 8, 4096);
        t.d.memory.write(ga(w.data), new Uint8Array(4096).fill(0x90 + n));
        return w;
      });
      t.loop.handlers.get(t.kick.fd)!();
      t.pump(32);
      expect(t.d.usedIdx()).toBe(32);
      reads.forEach(({ data, status }, n) => {
        expect(t.d.memory.readU8(ga(status))).toBe(VIRTIO_BLK_S.OK);
        expect(Buffer.from(t.d.memory.slice(ga(data), 4096)!).equals(before.subarray(2 * n * 4096, (2 * n + 1) * 4096))).toBe(true);
      });
      for (const { status } of writes) expect(t.d.memory.readU8(ga(status))).toBe(VIRTIO_BLK_S.OK);
      const after = readFileSync(t.path);
      for (let block = 0; block < 64; block++) {
        const n = (block - 41) / 2;
        const got = after.subarray(block * 4096, (block + 1) * 4096);
        if (block >= 41 && Number.isInteger(n)) expect(got.every((b) => b === 0x90 + n)).toBe(true);
        else expect(got.equals(before.subarray(block * 4096, (block + 1) * 4096))).toBe(true);
      }
      const { calls, offloaded } = t.dev.kernelSubmissions;
      if ("offload" in aio) {
        expect(calls).toBeGreaterThanOrEqual(4); // 32 requests, at most 8 a call
        expect(offloaded).toBe(calls); // every one on the pool's thread
      } else {
        expect(calls).toBe(0); // no io_submit at all
        expect(t.dev.poolRequests).toEqual({ submitted: 32, parts: 32 });
      }
      t.worker.stop();
      t.file.close();
    });
  }
});
