import { afterEach, describe, expect, test } from "bun:test";
import { join, resolve } from "node:path";
import { socket } from "../../../ffi/mod.ts";
import { EventFd } from "../../../src/base/event_fd.ts";
import { DEVICE_TYPES } from "../../../src/devices/vhost_user/device_types.ts";
import { VhostUserFrontend } from "../../../src/devices/vhost_user/frontend.ts";
import type { VirtioInterrupt } from "../../../src/devices/virtio/interrupt.ts";
import { Queue } from "../../../src/devices/virtio/queue.ts";
import { GuestMemory, guestAddress as ga } from "../../../src/memory/mod.ts";
import { tempDir, TsvmProcess } from "../../support/tsvm.ts";
import { TestLoop } from "../../support/vhost_user_driver.ts";

const ROOT = resolve(import.meta.dir, "../../..");
const VERSION_1 = 1n << 32n;
const TIMEOUT_MS = 500;
const SANDBOX = process.getuid?.() === 0 ? [] : ["--disable-sandbox"];

const cleanup: (() => void)[] = [];
afterEach(() => {
  while (cleanup.length > 0) cleanup.pop()!();
});

/** Connects a front-end to the back-end listening at `path`. */
function connect(path: string, failures: string[], loop = new TestLoop()) {
  const fd = socket.unixConnect(path, socket.SOCK_STREAM);
  expect(fd).toBeGreaterThanOrEqual(0);
  return VhostUserFrontend.connect(fd, {
    label: "rng", type: DEVICE_TYPES.rng, loop, timeoutMs: TIMEOUT_MS, onFailure: (reason) => failures.push(reason),
  });
}

/** A call eventfd standing for the transport's interrupt. */
function fakeInterrupt(call: EventFd): VirtioInterrupt {
  return { signalUsedQueue: () => call.signal(), signalConfigChanged: () => {}, queueNotifier: () => call, onNotifiersChanged: () => {} };
}

describe("VhostUserFrontend against tsvm's own back-end (tsvm devices)", () => {
  test("negotiates, hands over memory and a ring, and the back-end fills the driver's buffer", async () => {
    const path = join(tempDir(), "rng.sock");
    const devices = new TsvmProcess(["devices", ...SANDBOX, "--log-level", "info", "--rng", `vhost=${path}`]);
    cleanup.push(() => devices[Symbol.dispose]());
    await devices.waitForOutput(/serving vhost-user/, 20_000, "stderr");
    const failures: string[] = [];
    const loop = new TestLoop();
    const frontend = connect(path, failures, loop);
    expect(frontend.ok).toBe(true);
    if (!frontend.ok) return;
    cleanup.push(() => frontend.value.close());
    using memory = GuestMemory.create([{ base: 0, size: 1 << 20 }]);
    const queue = new Queue(8, 0);
    Object.assign(queue.config, { size: 8, desc: 0x1000n, driver: 0x2000n, device: 0x3000n, ready: true });
    expect(queue.activate(memory, { eventIdx: false, indirect: false }).ok).toBe(true);
    using kick = new EventFd();
    using call = new EventFd();
    const resets: string[] = [];
    const worker = frontend.value.activate({
      memory, queues: [queue], kicks: [kick], interrupt: fakeInterrupt(call), features: VERSION_1, loop, needsReset: (r) => resets.push(r),
    });
    // The driver posts one 32-byte writable buffer and notifies.
    memory.writeU64(ga(0x1000), 0x8000n);
    memory.writeU32(ga(0x1008), 32);
    memory.writeU16(ga(0x100c), 2);
    memory.writeU16(ga(0x2004), 0);
    memory.writeU16(ga(0x2002), 1);
    kick.signal();
    expect(socket.waitReadable(call.fd, 10_000)).toBe(1);
    expect([memory.readU16(ga(0x3002)), memory.readU32(ga(0x3008))]).toEqual([1, 32]);
    expect(memory.slice(ga(0x8000), 32)!.some((b) => b !== 0)).toBe(true);
    worker.stop();
    expect([failures, resets]).toEqual([[], []]);
  }, 30_000);
});

describe("VhostUserFrontend: a multiqueue block back-end (VHOST_USER_PROTOCOL_F_MQ, VIRTIO_BLK_F_MQ)", () => {
  test("the device gets as many queues as wanted and the back-end has, and its configuration says that count", async () => {
    const dir = tempDir();
    const image = join(dir, "disk.img");
    await Bun.write(image, new Uint8Array(1 << 20));
    const path = join(dir, "blk.sock");
    const devices = new TsvmProcess(["devices", ...SANDBOX, "--log-level", "info", "--block", `vhost=${path},path=${image},num-queues=4`]);
    cleanup.push(() => devices[Symbol.dispose]());
    await devices.waitForOutput(/serving vhost-user/, 20_000, "stderr");
    for (const [wanted, expected] of [[2, 2], [8, 4], [undefined, 1]] as const) {
      const fd = socket.unixConnect(path, socket.SOCK_STREAM);
      const failures: string[] = [];
      const frontend = VhostUserFrontend.connect(fd, {
        label: "block", type: DEVICE_TYPES.block, ...(wanted === undefined ? {} : { queues: wanted }), loop: new TestLoop(), timeoutMs: 5000,
        onFailure: (reason) => failures.push(reason),
      });
      expect(frontend.ok).toBe(true);
      if (!frontend.ok) return;
      expect(frontend.value.queueMaxSizes).toEqual(new Array(expected).fill(256));
      expect((frontend.value.features >> 12n) & 1n).toBe(1n); // VIRTIO_BLK_F_MQ: the back-end has 4
      const count = new Uint8Array(2);
      frontend.value.readConfig(34, count);
      expect(count[0]! | (count[1]! << 8)).toBe(expected);
      frontend.value.close();
      expect(failures).toEqual([]);
    }
  }, 30_000);
});

describe("VhostUserFrontend against a hostile back-end", () => {
  /** Starts the hostile back-end in `mode`; returns its socket path. */
  async function hostile(mode: string): Promise<string> {
    const path = join(tempDir(), "hostile.sock");
    const child = Bun.spawn([process.execPath, join(ROOT, "test/support/hostile_backend.ts"), path, mode], { stdout: "pipe", stderr: "inherit" });
    cleanup.push(() => child.kill("SIGKILL"));
    const reader = (child.stdout as ReadableStream<Uint8Array>).getReader();
    await reader.read(); // "listening"
    return path;
  }

  const modes: [string, RegExp][] = [
    ["silent", /GET_FEATURES: the peer did not answer in time/],
    ["wrong-reply", /GET_FEATURES: the back-end answered with VHOST_USER_GET_QUEUE_NUM/],
    ["close", /GET_FEATURES: the peer closed the connection/],
    ["half-reply", /GET_FEATURES: the peer did not answer in time/],
    ["huge-reply", /GET_FEATURES: malformed message: a payload of 1048576 bytes/],
  ];
  for (const [mode, reason] of modes) {
    test(`a back-end that ${mode === "silent" ? "never answers" : `sends a ${mode}`} is refused within the deadline`, async () => {
      const path = await hostile(mode);
      const started = performance.now();
      const r = connect(path, []);
      expect(performance.now() - started).toBeLessThan(TIMEOUT_MS * 4);
      expect(r.ok ? "" : r.error).toMatch(reason);
    });
  }

  test("a back-end flooding the back-end channel fails once, without taking the loop", async () => {
    const path = await hostile("flood");
    const failures: string[] = [];
    const loop = new TestLoop();
    const r = connect(path, failures, loop);
    expect(r.ok).toBe(true);
    const deadline = performance.now() + 5000;
    while (failures.length === 0 && performance.now() < deadline) {
      socket.waitReadable(loop.wait.fd, 100);
      loop.pump();
    }
    expect(failures).toEqual(["the back-end sent more than 1000 requests in a second"]);
    if (r.ok) r.value.close();
  });
});
