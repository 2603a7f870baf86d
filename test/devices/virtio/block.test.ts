import { describe, expect, test } from "bun:test";
import { guestAddress as ga } from "../../../src/memory/mod.ts";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Block, VIRTIO_BLK_F, VIRTIO_BLK_S, VIRTIO_BLK_T } from "../../../src/devices/virtio/block/block.ts";
import { EventFd } from "../../../src/base/event_fd.ts";
import { FakeLoop } from "../../support/virtio_pci_driver.ts";
import { DiskFile } from "../../../src/disk/disk_file.ts";
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from "../../../src/devices/virtio/descriptor_chain.ts";
import { tempDir } from "../../support/tsvm.ts";
import { BUFFERS, VirtqueueDriver } from "../../support/virtqueue_driver.ts";

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
