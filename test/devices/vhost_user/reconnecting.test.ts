import { afterEach, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { socket } from "../../../ffi/mod.ts";
import { EventFd } from "../../../src/base/event_fd.ts";
import { err } from "../../../src/base/result.ts";
import { DEVICE_TYPES } from "../../../src/devices/vhost_user/device_types.ts";
import { VhostUserFrontend } from "../../../src/devices/vhost_user/frontend.ts";
import { ReconnectingFrontend, RETRY_MS } from "../../../src/devices/vhost_user/reconnecting.ts";
import type { VirtioInterrupt } from "../../../src/devices/virtio/interrupt.ts";
import { Queue } from "../../../src/devices/virtio/queue.ts";
import { GuestMemory, guestAddress as ga } from "../../../src/memory/mod.ts";
import { tempDir, TsvmProcess } from "../../support/tsvm.ts";
import { TestLoop } from "../../support/vhost_user_driver.ts";

const VERSION_1 = 1n << 32n;
const SANDBOX = process.getuid?.() === 0 ? [] : ["--disable-sandbox"];

const cleanup: (() => void)[] = [];
afterEach(() => {
  while (cleanup.length > 0) cleanup.pop()!();
});

async function startRngBackend(path: string): Promise<TsvmProcess> {
  const devices = new TsvmProcess(["devices", ...SANDBOX, "--log-level", "info", "--rng", `vhost=${path}`]);
  cleanup.push(() => devices[Symbol.dispose]());
  await devices.waitForOutput(/serving vhost-user/, 20_000, "stderr");
  return devices;
}

describe("ReconnectingFrontend (--vhost-user ...,reconnect=true)", () => {
  test("a back-end that dies and comes back takes over the running rings, serving what waited meanwhile", async () => {
    const path = join(tempDir(), "rng.sock");
    const first = await startRngBackend(path);
    const loop = new TestLoop();
    const events: string[] = [];
    const failures: string[] = [];
    const connected = ReconnectingFrontend.connect((onFailure) => {
      const fd = socket.unixConnect(path, socket.SOCK_STREAM);
      if (fd < 0) return err("not listening");
      return VhostUserFrontend.connect(fd, { label: "rng", type: DEVICE_TYPES.rng, loop, timeoutMs: 2000, onFailure });
    }, { onEvent: (m) => events.push(m), onFailure: (m) => failures.push(m) });
    expect(connected.ok).toBe(true);
    if (!connected.ok) return;
    const device = connected.value;
    cleanup.push(() => device.close());

    using memory = GuestMemory.create([{ base: 0, size: 1 << 20 }]);
    const queue = new Queue(8, 0);
    Object.assign(queue.config, { size: 8, desc: 0x1000n, driver: 0x2000n, device: 0x3000n, ready: true });
    expect(queue.activate(memory, { eventIdx: false, indirect: false }).ok).toBe(true);
    using kick = new EventFd();
    using call = new EventFd();
    const interrupt: VirtioInterrupt = { signalUsedQueue: () => call.signal(), signalConfigChanged: () => {}, queueNotifier: () => call, onNotifiersChanged: () => {} };
    const resets: string[] = [];
    const worker = device.activate({ memory, queues: [queue], kicks: [kick], interrupt, features: VERSION_1, loop, needsReset: (r) => resets.push(r) });
    /** Posts a 32-byte writable buffer at `address` as avail entry `n` and notifies. */
    const post = (n: number, address: number): void => {
      memory.writeU64(ga(0x1000 + n * 16), BigInt(address));
      memory.writeU32(ga(0x1008 + n * 16), 32);
      memory.writeU16(ga(0x100c + n * 16), 2);
      memory.writeU16(ga(0x2004 + n * 2), n);
      memory.writeU16(ga(0x2002), n + 1);
      kick.signal();
    };
    const usedIdx = (): number => memory.readU16(ga(0x3002));

    post(0, 0x8000);
    expect(socket.waitReadable(call.fd, 10_000)).toBe(1);
    call.read();
    expect(usedIdx()).toBe(1);

    // The back-end dies; the front-end notices on its socket and waits.
    first.child.kill("SIGKILL");
    await first.child.exited;
    for (let i = 0; i < 200 && device.connected; i++) {
      socket.waitReadable(loop.wait.fd, 25);
      loop.pump();
    }
    expect(device.connected).toBe(false);
    expect(events.at(-1)).toMatch(/the back-end failed .*; waiting for it to come back/);
    // The driver keeps going: a request posted now waits for a back-end.
    post(1, 0x9000);
    device.poll(performance.now()); // nobody listens yet: nothing happens
    expect(device.connected).toBe(false);

    await startRngBackend(path);
    const deadline = performance.now() + 10_000;
    while (!device.connected && performance.now() < deadline) {
      device.poll(performance.now());
      await Bun.sleep(RETRY_MS / 5);
    }
    expect(device.connected).toBe(true);
    expect(events.at(-1)).toBe("the back-end is back; the device carries on");
    expect(socket.waitReadable(call.fd, 10_000)).toBe(1);
    expect(usedIdx()).toBe(2);
    expect(memory.readU32(ga(0x3008 + 8))).toBe(32);
    expect(memory.slice(ga(0x9000), 32)!.some((b) => b !== 0)).toBe(true);
    worker.stop();
    expect([failures, resets]).toEqual([[], []]);
  }, 60_000);

  test("a back-end that comes back without a feature it offered before ends the VM instead", () => {
    const failures: string[] = [];
    let offers = VERSION_1 | (1n << 28n);
    let lose: (reason: string) => void = () => {};
    // A stand-in for a connected front-end: only what ReconnectingFrontend reads.
    const fake = (features: bigint) => ({
      debugLabel: "rng", deviceType: 4, queueMaxSizes: [8], features, configSize: 0,
      readConfig: () => {}, writeConfig: () => {}, activate: () => ({ stop: () => {} }), resume: () => ({ stop: () => {} }),
      onConfigChanged: () => {}, close: () => {},
    }) as unknown as VhostUserFrontend;
    const connected = ReconnectingFrontend.connect((onFailure) => {
      lose = onFailure;
      return { ok: true, value: fake(offers) };
    }, { onEvent: () => {}, onFailure: (m) => failures.push(m) });
    expect(connected.ok).toBe(true);
    if (!connected.ok) return;
    lose("gone");
    offers = VERSION_1;
    connected.value.poll(performance.now());
    expect(failures).toEqual(["the back-end came back without features it offered before (0x10000000)"]);
    expect(connected.value.connected).toBe(false);
  });
});
