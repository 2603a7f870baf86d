import { describe, expect, test } from "bun:test";
import { ChainReader, ChainWriter, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from "../../../src/devices/virtio/descriptor_chain.ts";
import { Queue } from "../../../src/devices/virtio/queue.ts";
import { GuestMemory, guestAddress as ga } from "../../../src/memory/mod.ts";
import { BUFFERS, RAM_SIZE, VirtqueueDriver } from "../../support/virtqueue_driver.ts";

const NEXT = VIRTQ_DESC_F_NEXT;
const WRITE = VIRTQ_DESC_F_WRITE;
const INDIRECT = VIRTQ_DESC_F_INDIRECT;

describe("Queue.pop", () => {
  test("returns nothing until the driver publishes", () => {
    expect(new VirtqueueDriver().queue.pop()).toBeNull();
  });

  test("walks a chain of readable then writable buffers", () => {
    const d = new VirtqueueDriver();
    d.memory.write(ga(BUFFERS), Uint8Array.of(1, 2, 3, 4));
    d.writeDesc(0, { addr: BUFFERS, len: 4, flags: NEXT, next: 5 });
    d.writeDesc(5, { addr: BUFFERS + 0x100, len: 8, flags: WRITE, next: 0 });
    d.publish(0);
    const r = d.queue.pop();
    expect(r?.kind).toBe("chain");
    if (r?.kind !== "chain") return;
    expect([r.chain.head, r.chain.readableLength, r.chain.writableLength]).toEqual([0, 4, 8]);
    const got = new Uint8Array(4);
    expect(new ChainReader(r.chain).read(got)).toBe(true);
    expect([...got]).toEqual([1, 2, 3, 4]);
    const w = new ChainWriter(r.chain);
    expect(w.write(Uint8Array.of(9, 9))).toBe(true);
    expect([w.written, d.memory.readU8(ga(BUFFERS + 0x100))]).toEqual([2, 9]);
  });

  test("reads and writes cross buffer boundaries, byte by byte for a few bytes and in bulk for many, and refuse more than is left", () => {
    const d = new VirtqueueDriver();
    const source = Uint8Array.from({ length: 200 }, (_, i) => i + 1);
    d.memory.write(ga(BUFFERS), source.subarray(0, 10));
    d.memory.write(ga(BUFFERS + 0x100), source.subarray(10, 200));
    d.writeDesc(0, { addr: BUFFERS, len: 10, flags: NEXT, next: 1 });
    d.writeDesc(1, { addr: BUFFERS + 0x100, len: 190, flags: NEXT, next: 2 });
    d.writeDesc(2, { addr: BUFFERS + 0x400, len: 3, flags: WRITE | NEXT, next: 3 });
    d.writeDesc(3, { addr: BUFFERS + 0x500, len: 150, flags: WRITE, next: 0 });
    d.publish(0);
    const r = d.queue.pop();
    if (r?.kind !== "chain") throw new Error("expected a chain");
    const reader = new ChainReader(r.chain);
    const small = new Uint8Array(16); // 10 bytes of the first buffer, 6 of the second
    const large = new Uint8Array(184);
    expect(reader.read(small)).toBe(true);
    expect(reader.read(large.subarray(0, 5))).toBe(true);
    expect(reader.read(new Uint8Array(180))).toBe(false); // 179 left: nothing read
    expect(reader.read(large.subarray(5, 184))).toBe(true);
    expect([...small, ...large.subarray(0, 184)]).toEqual([...source]);
    const writer = new ChainWriter(r.chain);
    const out = Uint8Array.from({ length: 100 }, (_, i) => 200 - i);
    expect(writer.write(out)).toBe(true); // 3 bytes, then 97 in bulk
    expect(writer.write(new Uint8Array(54))).toBe(false);
    expect(writer.written).toBe(100);
    expect([...d.memory.slice(ga(BUFFERS + 0x400), 3)!, ...d.memory.slice(ga(BUFFERS + 0x500), 97)!]).toEqual([...out]);
  });

  test("follows an indirect table", () => {
    const d = new VirtqueueDriver();
    const table = BUFFERS + 0x1000;
    d.writeDesc(0, { addr: BUFFERS, len: 16, flags: NEXT, next: 1 }, table);
    d.writeDesc(1, { addr: BUFFERS + 0x200, len: 32, flags: WRITE, next: 0 }, table);
    d.writeDesc(3, { addr: table, len: 32, flags: INDIRECT, next: 0 });
    d.publish(3);
    const r = d.queue.pop();
    expect(r?.kind === "chain" && [r.chain.head, r.chain.readableLength, r.chain.writableLength]).toEqual([3, 16, 32]);
  });

  const hostile: [string, (d: VirtqueueDriver) => void, string][] = [
    ["a chain that loops", (d) => {
      d.writeDesc(0, { addr: BUFFERS, len: 4, flags: NEXT, next: 1 });
      d.writeDesc(1, { addr: BUFFERS, len: 4, flags: NEXT, next: 0 });
      d.publish(0);
    }, "loops"],
    ["a buffer beyond RAM", (d) => {
      d.writeDesc(0, { addr: RAM_SIZE - 2, len: 4, flags: 0, next: 0 });
      d.publish(0);
    }, "outside guest RAM"],
    ["an address that overflows", (d) => {
      d.writeDesc(0, { addr: 2 ** 53, len: 4, flags: 0, next: 0 });
      d.publish(0);
    }, "beyond the physical address space"],
    ["a next index past the table", (d) => {
      d.writeDesc(0, { addr: BUFFERS, len: 4, flags: NEXT, next: 200 });
      d.publish(0);
    }, "outside a table"],
    ["a readable buffer after a writable one", (d) => {
      d.writeDesc(0, { addr: BUFFERS, len: 4, flags: NEXT | WRITE, next: 1 });
      d.writeDesc(1, { addr: BUFFERS, len: 4, flags: 0, next: 0 });
      d.publish(0);
    }, "after a device-writable"],
    ["an indirect table inside an indirect table", (d) => {
      const table = BUFFERS + 0x1000;
      d.writeDesc(0, { addr: table, len: 16, flags: INDIRECT, next: 0 }, table);
      d.writeDesc(0, { addr: table, len: 16, flags: INDIRECT, next: 0 });
      d.publish(0);
    }, "inside an indirect table"],
    ["an indirect table of odd length", (d) => {
      d.writeDesc(0, { addr: BUFFERS, len: 17, flags: INDIRECT, next: 0 });
      d.publish(0);
    }, "multiple of 16"],
    ["an indirect descriptor that also has NEXT", (d) => {
      d.writeDesc(0, { addr: BUFFERS, len: 16, flags: INDIRECT | NEXT, next: 1 });
      d.publish(0);
    }, "VIRTQ_DESC_F_NEXT"],
    ["an indirect table loop", (d) => {
      const table = BUFFERS + 0x1000;
      d.writeDesc(0, { addr: BUFFERS, len: 4, flags: NEXT, next: 1 }, table);
      d.writeDesc(1, { addr: BUFFERS, len: 4, flags: NEXT, next: 0 }, table);
      d.writeDesc(0, { addr: table, len: 32, flags: INDIRECT, next: 0 });
      d.publish(0);
    }, "loops"],
  ];
  for (const [name, setup, reason] of hostile) {
    test(`reports ${name} as a bad chain and carries on`, () => {
      const d = new VirtqueueDriver();
      setup(d);
      const r = d.queue.pop();
      expect(r?.kind).toBe("bad_chain");
      expect(r?.kind === "bad_chain" && r.reason).toContain(reason);
      d.writeDesc(2, { addr: BUFFERS, len: 4, flags: 0, next: 0 });
      d.publish(2);
      expect(d.queue.pop()?.kind).toBe("chain");
    });
  }

  test("an avail index that jumps past the queue size is fatal", () => {
    const d = new VirtqueueDriver();
    d.setAvailIdx(100);
    expect(d.queue.pop()).toEqual({ kind: "fatal", reason: "avail index jumped by 100 on a queue of 8" });
  });

  test("a head index past the table is fatal", () => {
    const d = new VirtqueueDriver();
    d.publish(9);
    expect(d.queue.pop()?.kind).toBe("fatal");
  });

  test("indirect descriptors need the feature", () => {
    const d = new VirtqueueDriver(8, { eventIdx: false, indirect: false });
    d.writeDesc(0, { addr: BUFFERS, len: 16, flags: INDIRECT, next: 0 });
    d.publish(0);
    expect(d.queue.pop()?.kind).toBe("bad_chain");
  });
});

describe("Queue used ring and notifications", () => {
  test("addUsed publishes the element and then the index", () => {
    const d = new VirtqueueDriver();
    d.queue.addUsed(3, 42);
    expect([d.usedIdx(), d.used(0)]).toEqual([1, { id: 3, len: 42 }]);
  });

  test("without event idx, NO_INTERRUPT suppresses notifications", () => {
    const d = new VirtqueueDriver();
    d.queue.addUsed(0, 0);
    expect(d.queue.shouldNotify()).toBe(true);
    d.memory.writeU16(ga(0x2000), 1);
    d.queue.addUsed(1, 0);
    expect(d.queue.shouldNotify()).toBe(false);
  });

  test("with event idx, the device notifies only when used_event is crossed", () => {
    const d = new VirtqueueDriver(8, { eventIdx: true, indirect: true });
    d.setUsedEvent(1);
    d.queue.addUsed(0, 0);
    expect(d.queue.shouldNotify()).toBe(false); // new idx 1 has not passed used_event 1
    d.queue.addUsed(1, 0);
    expect(d.queue.shouldNotify()).toBe(true); // idx 2 passed 1
    d.queue.addUsed(2, 0);
    expect(d.queue.shouldNotify()).toBe(false);
  });

  test("with event idx, enableNotification asks for a kick after the next buffer", () => {
    const d = new VirtqueueDriver(8, { eventIdx: true, indirect: true });
    d.writeDesc(0, { addr: BUFFERS, len: 4, flags: 0, next: 0 });
    d.publish(0);
    d.queue.pop();
    d.queue.enableNotification();
    expect(d.availEvent()).toBe(1);
  });

  test("notification suppression: VIRTQ_USED_F_NO_NOTIFY without event idx; with it, avail_event left behind", () => {
    const plain = new VirtqueueDriver(8);
    plain.queue.disableNotification();
    expect(plain.usedFlags()).toBe(1);
    plain.queue.enableNotification();
    expect(plain.usedFlags()).toBe(0);
    const withIdx = new VirtqueueDriver(8, { eventIdx: true, indirect: true });
    withIdx.writeDesc(0, { addr: BUFFERS, len: 4, flags: 0, next: 0 });
    withIdx.publish(0);
    withIdx.queue.pop();
    withIdx.queue.disableNotification();
    expect([withIdx.usedFlags(), withIdx.availEvent()]).toEqual([0, 0]); // a driver at idx 1 does not kick for idx 2
    withIdx.queue.enableNotification();
    expect(withIdx.availEvent()).toBe(1);
  });

  test("reset returns the queue to its initial configuration", () => {
    const d = new VirtqueueDriver();
    d.queue.reset();
    expect([d.queue.active, d.queue.config]).toEqual([false, Queue.initialConfig(8)]);
  });

  test("activate refuses rings outside RAM, misaligned, or of a bad size", () => {
    const memory = GuestMemory.fromBuffers([{ base: 0, bytes: new Uint8Array(0x4000) }]);
    const q = new Queue(8);
    const features = { eventIdx: false, indirect: false };
    Object.assign(q.config, { size: 8, desc: 0x1000n, driver: 0x2000n, device: 0x8000n });
    expect(q.activate(memory, features)).toEqual({ ok: false, error: "a ring lies outside guest RAM" });
    Object.assign(q.config, { device: 0x3002n });
    expect(q.activate(memory, features)).toEqual({ ok: false, error: "ring addresses are misaligned" });
    Object.assign(q.config, { device: 2n ** 60n });
    expect(q.activate(memory, features)).toEqual({ ok: false, error: "a ring address lies beyond the physical address space" });
    Object.assign(q.config, { size: 6, device: 0x3000n });
    expect(q.activate(memory, features)).toEqual({ ok: false, error: "queue size 6 is not a power of two up to 8" });
  });
});

describe("Queue against random guest input", () => {
  test("100k random descriptor tables and avail rings never throw or reach outside RAM", () => {
    const d = new VirtqueueDriver(16);
    const ram = d.memory.regions[0]!.bytes;
    let seed = 0x12345678;
    const rand = (): number => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return seed >>> 0;
    };
    const counts = { chain: 0, bad_chain: 0, fatal: 0, none: 0 };
    for (let round = 0; round < 100_000; round++) {
      // Scribble over the descriptor table and avail ring; sometimes point buffers at valid RAM.
      for (let i = 0; i < 8; i++) {
        const at = 0x1000 + (rand() % (16 * 16));
        ram[at] = rand() & 0xff;
      }
      const slot = rand() % 16;
      d.writeDesc(slot, { addr: rand() % 2 ? BUFFERS + (rand() % 0x1000) : rand() * 4096, len: rand() % 512, flags: rand() & 7, next: rand() % 20 });
      if (rand() % 2) d.publish(rand() % 18);
      if (rand() % 64 === 0) d.setAvailIdx(rand());
      const r = d.queue.pop();
      if (r === null) counts.none++;
      else {
        counts[r.kind]++;
        if (r.kind === "chain") {
          // Every view lies inside guest RAM and together they are exactly the chain's lengths.
          const views = [...r.chain.readable, ...r.chain.writable];
          for (const b of views) expect(b.byteOffset + b.byteLength <= ram.byteLength && b.buffer === ram.buffer).toBe(true);
          expect(views.reduce((n, b) => n + b.byteLength, 0)).toBe(r.chain.readableLength + r.chain.writableLength);
          d.queue.addUsed(r.chain.head, 0);
        }
        if (r.kind === "fatal") {
          d.queue.reset();
          Object.assign(d.queue.config, { size: 16, desc: 0x1000, driver: 0x2000, device: 0x3000, ready: true });
          d.queue.activate(d.memory, { eventIdx: rand() % 2 === 0, indirect: true });
          d.setAvailIdx(0);
        }
      }
    }
    expect(counts.chain).toBeGreaterThan(1000);
    expect(counts.bad_chain).toBeGreaterThan(1000);
  });
});
