import { afterEach, describe, expect, test } from "bun:test";
import { heapStats } from "bun:jsc";
import { event, sys } from "../../../ffi/mod.ts";
import { ByteWriter } from "../../../src/base/codec.ts";
import { EventFd } from "../../../src/base/event_fd.ts";
import { VhostUserBackend } from "../../../src/devices/vhost_user/backend.ts";
import {
  decodeU64, decodeVringState, encodeConfig, encodeMemoryTable, encodeU64, encodeVringAddress, encodeVringState, VHOST_USER,
  VHOST_USER_F_PROTOCOL_FEATURES, VHOST_USER_PROTOCOL_F,
} from "../../../src/devices/vhost_user/protocol.ts";
import { Rng } from "../../../src/devices/virtio/rng.ts";
import { TSVM_RING_FEATURES, type VirtioDevice } from "../../../src/devices/virtio/virtio_device.ts";
import { Block } from "../../../src/devices/virtio/block/block.ts";
import { DiskFile } from "../../../src/disk/disk_file.ts";
import { guestAddress as ga } from "../../../src/memory/mod.ts";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "../../support/tsvm.ts";
import { openFds, QUEUE_BASE, RAM_SIZE, TestFrontend, TestLoop } from "../../support/vhost_user_driver.ts";

const VERSION_1 = 1n << 32n;
/** A deterministic entropy source: fills buffers with 0x5a. */
const entropy = (b: Uint8Array): number => {
  b.fill(0x5a);
  return b.byteLength;
};

type Setup = { loop: TestLoop; backend: VhostUserBackend; frontend: TestFrontend; drops: string[]; logs: string[] };
const open: Setup[] = [];

function setup(device: VirtioDevice = new Rng(entropy)): Setup {
  const loop = new TestLoop();
  const drops: string[] = [];
  const logs: string[] = [];
  const backend = new VhostUserBackend(device, loop, { disconnected: (reason) => drops.push(reason), log: (_level, message) => logs.push(message) });
  const frontend = new TestFrontend();
  backend.serve(frontend.backendFd);
  const s = { loop, backend, frontend, drops, logs };
  open.push(s);
  return s;
}

afterEach(() => {
  for (const s of open.splice(0)) {
    s.frontend.close();
    s.backend.close();
    s.loop.wait.close();
  }
});

describe("VhostUserBackend with a well-behaved front-end", () => {
  test("offers the device's features, the protocol-features bit and its protocol features", () => {
    const { loop, frontend } = setup();
    frontend.send(VHOST_USER.GET_FEATURES);
    frontend.send(VHOST_USER.GET_PROTOCOL_FEATURES);
    frontend.send(VHOST_USER.GET_QUEUE_NUM);
    loop.pump();
    const features = decodeU64(frontend.reply().payload);
    const protocol = decodeU64(frontend.reply().payload);
    const queues = decodeU64(frontend.reply().payload);
    expect(features).toEqual({ ok: true, value: TSVM_RING_FEATURES | (1n << VHOST_USER_F_PROTOCOL_FEATURES) });
    // rng has no configuration space, so no CONFIG
    expect(protocol.ok && protocol.value & (1n << VHOST_USER_PROTOCOL_F.CONFIG)).toBe(0n);
    expect(queues).toEqual({ ok: true, value: 1n });
  });

  test("serves a ring: the buffer is filled, the used ring and the call eventfd say so", () => {
    const { loop, frontend } = setup();
    frontend.start(1, VERSION_1);
    loop.pump();
    const buffer = frontend.postWritable(0, 64);
    loop.pump();
    expect(frontend.used(0)).toEqual({ idx: 1, len: 64 });
    expect(frontend.memory.slice(ga(buffer), 64)!.every((b) => b === 0x5a)).toBe(true);
    expect(frontend.calls[0]!.read()).toBe(1);
  });

  test("GET_VRING_BASE stops the ring and reports where it stopped; it resumes from there", () => {
    const { loop, frontend } = setup();
    frontend.start(1, VERSION_1);
    frontend.postWritable(0, 8);
    loop.pump();
    frontend.send(VHOST_USER.GET_VRING_BASE, encodeVringState({ index: 0, num: 0 }));
    loop.pump();
    expect(decodeVringState(frontend.reply().payload)).toEqual({ ok: true, value: { index: 0, num: 1 } });
    frontend.postWritable(0, 8); // not served: the ring is stopped
    loop.pump();
    expect(frontend.used(0).idx).toBe(1);
  });

  test("GET_VRING_BASE on one queue of a multiqueue disk returns the writes in flight on the other before it answers", () => {
    const dir = tempDir();
    const path = join(dir, "d.img");
    writeFileSync(path, new Uint8Array(1 << 20));
    const { loop, frontend } = setup(new Block(DiskFile.open(path, false), "id", "block", 2));
    frontend.start(2, VERSION_1 | (1n << 12n));
    loop.pump();
    // Two writes of 64 KiB (the same chain twice) on queue 1: the second finds the first in flight.
    const header = 0x40000;
    const data = 0x50000;
    const status = 0x70000;
    frontend.memory.write(ga(header), new Uint8Array([1, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0])); // OUT, sector 8
    frontend.memory.write(ga(data), new Uint8Array(65536).fill(0x3c));
    const chain = [{ addr: header, len: 16, write: false }, { addr: data, len: 65536, write: false }, { addr: status, len: 1, write: true }];
    frontend.postChain(1, chain);
    frontend.postChain(1, chain);
    frontend.send(VHOST_USER.GET_VRING_BASE, encodeVringState({ index: 0, num: 0 }));
    loop.pump();
    expect(decodeVringState(frontend.reply().payload)).toEqual({ ok: true, value: { index: 0, num: 0 } });
    // The worker restarted for queue 1 alone; its requests were finished, not dropped.
    expect(frontend.used(1)).toEqual({ idx: 2, len: 1 });
    expect(frontend.memory.readU8(ga(status))).toBe(0);
    expect(readFileSync(path).subarray(4096, 4096 + 65536).every((b) => b === 0x3c)).toBe(true);
  });

  test("a notify that finds nothing new allocates nothing (no garbage for the device to collect)", () => {
    const { loop, frontend } = setup();
    frontend.start(1, VERSION_1);
    loop.pump();
    const kick = frontend.kicks[0]!;
    const notify = (times: number): void => {
      for (let i = 0; i < times; i++) {
        kick.signal();
        for (const { token } of loop.wait.wait(0)) token();
      }
    };
    const N = 20000;
    notify(N); // JIT tiers settle
    Bun.gc(true);
    const before = heapStats().objectTypeCounts as Record<string, number>;
    notify(N);
    const after = heapStats().objectTypeCounts as Record<string, number>;
    // Before this was fixed each notify made two closures and a BigInt (40,000 and 20,000 here).
    const grown = Object.entries(after).filter(([kind, count]) => count - (before[kind] ?? 0) >= N / 10);
    expect(grown).toEqual([]);
  });

  test("REPLY_ACK: a request flagged NEED_REPLY is acknowledged with 0", () => {
    const { loop, frontend } = setup();
    frontend.send(VHOST_USER.SET_PROTOCOL_FEATURES, encodeU64(1n << VHOST_USER_PROTOCOL_F.REPLY_ACK));
    frontend.send(VHOST_USER.SET_OWNER, new Uint8Array(0), [], 1 << 3);
    loop.pump();
    expect(decodeU64(frontend.reply().payload)).toEqual({ ok: true, value: 0n });
  });

  test("GET_CONFIG answers with the size asked for, zeros past the device's configuration", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "d.img"), new Uint8Array(1 << 20));
    const { loop, frontend } = setup(new Block(DiskFile.open(join(dir, "d.img"), false), "id"));
    frontend.send(VHOST_USER.SET_PROTOCOL_FEATURES, encodeU64(1n << VHOST_USER_PROTOCOL_F.CONFIG));
    frontend.send(VHOST_USER.GET_CONFIG, encodeConfig({ offset: 0, size: 72, flags: 0, data: new Uint8Array(72) }));
    loop.pump();
    const reply = frontend.reply().payload;
    expect(reply.byteLength).toBe(12 + 72);
    expect(new DataView(reply.buffer, reply.byteOffset).getBigUint64(12, true)).toBe(2048n); // capacity in sectors
    expect([...reply.subarray(12 + 60)]).toEqual(new Array(12).fill(0));
  });
});

/** Sends `attack` and expects the connection dropped with `reason`, every fd it sent closed, and the back-end ready for the next front-end. */
function expectDropped(attack: (s: Setup) => void, reason: RegExp): void {
  const before = openFds();
  const s = setup();
  attack(s);
  s.loop.pump();
  expect(s.drops.length).toBe(1);
  expect(s.drops[0]).toMatch(reason);
  expect(s.backend.connected).toBe(false);
  s.frontend.close();
  // Everything the connection held is gone again (the test's own loop and memory aside).
  open.splice(open.indexOf(s), 1);
  s.backend.close();
  s.loop.wait.close();
  expect(openFds()).toBe(before);
}

/** Sends `request` with one fresh fd of the kind `make` returns, then closes the test's copy. */
function sendWithFresh(s: Setup, request: number, payload: Uint8Array, make: () => number): void {
  const fd = make();
  s.frontend.send(request, payload, [fd]);
  sys.close(fd);
}

const O_PATH = 0o10000000;
const pipeFd = (): number => {
  const [r, w] = sys.pipe();
  sys.close(w);
  return r;
};
const eventFd = (): number => new EventFd().fd; // closed by sendWithFresh

describe("VhostUserBackend with a hostile front-end", () => {
  const cases: [string, (s: Setup) => void, RegExp][] = [
    ["an unknown request", (s) => s.frontend.send(99), /request not supported/],
    ["a payload beyond 4 KiB", (s) => s.frontend.sendRaw(new ByteWriter().u32(1).u32(1).u32(1 << 20).done()), /payload of 1048576 bytes/],
    ["a wrong protocol version", (s) => s.frontend.sendRaw(new ByteWriter().u32(1).u32(2).u32(0).done()), /protocol version 2/],
    ["fds with a request that takes none", (s) => sendWithFresh(s, VHOST_USER.GET_FEATURES, new Uint8Array(0), pipeFd), /unexpected fds/],
    ["protocol features that were not offered", (s) => s.frontend.send(VHOST_USER.SET_PROTOCOL_FEATURES, encodeU64(1n << 12n)), /not offered/],
    ["a ring index past the device's queues", (s) => s.frontend.send(VHOST_USER.SET_VRING_NUM, encodeVringState({ index: 5, num: 8 })), /no vring 5/],
    ["a ring size that is not a power of two", (s) => s.frontend.send(VHOST_USER.SET_VRING_NUM, encodeVringState({ index: 0, num: 6 })), /not a power of two/],
    ["a kick fd that is not an eventfd", (s) => sendWithFresh(s, VHOST_USER.SET_VRING_KICK, encodeU64(0), pipeFd), /not an eventfd/],
    // fstat cannot tell anonymous inodes apart: an epoll fd (or a timerfd, a landlock ruleset...) looks like an eventfd there.
    ["a kick fd of another anonymous-inode kind (epoll)", (s) => sendWithFresh(s, VHOST_USER.SET_VRING_KICK, encodeU64(0), () => event.epollCreate()), /not an eventfd/],
    ["a call fd that is an O_PATH view of an eventfd", (s) => {
      const e = new EventFd();
      sendWithFresh(s, VHOST_USER.SET_VRING_CALL, encodeU64(0), () => sys.open(`/proc/self/fd/${e.fd}`, O_PATH));
      e.close();
    }, /not an eventfd/],
    ["a memory table whose fd count does not match", (s) => {
      const t = s.frontend.memoryTable();
      s.frontend.send(VHOST_USER.SET_MEM_TABLE, t.payload, []);
    }, /came with 0 fds/],
    ["overlapping memory regions", (s) => {
      const fd = s.frontend.memory.regions[0]!.fd;
      const payload = encodeMemoryTable([
        { guestAddress: 0n, size: 0x2000n, userAddress: 0n, mmapOffset: 0n },
        { guestAddress: 0x1000n, size: 0x1000n, userAddress: 0x10000n, mmapOffset: 0n },
      ]);
      s.frontend.send(VHOST_USER.SET_MEM_TABLE, payload, [fd, fd]);
    }, /overlap in guest memory/],
    ["memory that is not a sealed memfd", (s) => {
      const path = join(tempDir(), "plain");
      writeFileSync(path, new Uint8Array(RAM_SIZE));
      const fd = sys.open(path, 2);
      s.frontend.send(VHOST_USER.SET_MEM_TABLE, encodeMemoryTable([{ guestAddress: 0n, size: BigInt(RAM_SIZE), userAddress: 0n, mmapOffset: 0n }]), [fd]);
      sys.close(fd);
    }, /not a memfd sealed against shrinking/],
    ["a region reaching past the end of its file", (s) => {
      const fd = s.frontend.memory.regions[0]!.fd;
      s.frontend.send(VHOST_USER.SET_MEM_TABLE, encodeMemoryTable([{ guestAddress: 0n, size: BigInt(2 * RAM_SIZE), userAddress: 0n, mmapOffset: 0n }]), [fd]);
    }, /beyond the end of its memory file/],
    ["a ring outside the memory table", (s) => {
      const t = s.frontend.memoryTable();
      s.frontend.send(VHOST_USER.SET_FEATURES, encodeU64(VERSION_1));
      s.frontend.send(VHOST_USER.SET_MEM_TABLE, t.payload, t.fds);
      s.frontend.send(VHOST_USER.SET_VRING_NUM, encodeVringState({ index: 0, num: 8 }));
      s.frontend.send(VHOST_USER.SET_VRING_ADDR, encodeVringAddress({ index: 0, flags: 0, descriptor: 16n, available: 0x1000n, used: 0x2000n, log: 0n }));
      sendWithFresh(s, VHOST_USER.SET_VRING_KICK, encodeU64(0), eventFd);
    }, /lies outside the memory table/],
    ["a ring started before the memory table", (s) => sendWithFresh(s, VHOST_USER.SET_VRING_KICK, encodeU64(0), eventFd), /before the memory table/],
  ];
  for (const [name, attack, reason] of cases) {
    test(`${name} drops the connection with one log line and closes every fd`, () => expectDropped(attack, reason));
  }

  test("half a message blocks nothing: the loop returns and the connection waits for the rest", () => {
    const s = setup();
    s.frontend.sendRaw(new ByteWriter().u32(VHOST_USER.GET_FEATURES).u32(1).done()); // 8 of 12 header bytes
    s.loop.pump();
    expect([s.drops, s.backend.connected]).toEqual([[], true]);
    s.frontend.sendRaw(new ByteWriter().u32(0).done());
    s.loop.pump();
    expect(decodeU64(s.frontend.reply().payload).ok).toBe(true);
  });

  test("a device whose activation fails half-way leaves no handler on the loop", () => {
    let ran = 0;
    const device: VirtioDevice = Object.assign(new Rng(entropy), {
      activate(ctx: { loop: { watch(fd: number, h: () => void): void }; kicks: readonly EventFd[] }) {
        ctx.loop.watch(ctx.kicks[0]!.fd, () => ran++);
        throw new Error("out of fds");
      },
    });
    const s = setup(device);
    s.frontend.start(1, VERSION_1);
    s.loop.pump();
    expect(s.logs.some((l) => l.includes("activation failed: out of fds"))).toBe(true);
    s.frontend.kicks[0]!.signal();
    s.loop.pump();
    expect(ran).toBe(0);
  });

  test("a ring already broken when it starts: the device asks for a reset while activating, and stops", () => {
    const { loop, frontend, logs } = setup();
    frontend.memory.writeU16(ga(QUEUE_BASE + 0x200 + 2), 200); // avail index past the ring's size, before the kick fd
    frontend.start(1, VERSION_1);
    loop.pump();
    expect(logs.some((l) => l.includes("needs a reset"))).toBe(true);
    frontend.memory.writeU16(ga(QUEUE_BASE + 0x200 + 2), 0);
    frontend.postWritable(0, 8); // before: the worker activation returned kept serving the ring
    loop.pump();
    expect(frontend.used(0).idx).toBe(0);
  });

  test("a new memory table while rings run: they go on from where they were, serving no descriptor twice", () => {
    const { loop, frontend } = setup();
    frontend.start(1, VERSION_1);
    frontend.postWritable(0, 8);
    frontend.postWritable(0, 8);
    loop.pump();
    expect(frontend.used(0).idx).toBe(2);
    const table = frontend.memoryTable();
    frontend.send(VHOST_USER.SET_MEM_TABLE, table.payload, table.fds);
    loop.pump();
    frontend.kicks[0]!.signal();
    loop.pump();
    expect(frontend.used(0).idx).toBe(2); // before: both were served again from the ring's starting base
    frontend.postWritable(0, 8);
    loop.pump();
    expect(frontend.used(0).idx).toBe(3);
  });

  test("a flood of messages is handled a batch per turn of the loop, so the loop's other fds are served", () => {
    const s = setup();
    for (let i = 0; i < 200; i++) s.frontend.send(VHOST_USER.SET_OWNER);
    let turns = 0;
    for (let events = s.loop.wait.wait(0); events.length > 0 && turns < 10; events = s.loop.wait.wait(0)) {
      turns++;
      for (const { token } of events) token();
    }
    expect(turns).toBe(Math.ceil(200 / 64));
    expect(s.backend.connected).toBe(true);
  });

  test("after a dropped front-end the next one is served", () => {
    const s = setup();
    s.frontend.send(99);
    s.loop.pump();
    expect(s.backend.connected).toBe(false);
    const next = new TestFrontend();
    s.backend.serve(next.backendFd);
    next.start(1, VERSION_1);
    s.loop.pump();
    next.postWritable(0, 16);
    s.loop.pump();
    expect(next.used(0)).toEqual({ idx: 1, len: 16 });
    next.close();
  });
});
