// A jailed device behind the VMM's transport, without KVM: commands reach the process, and what the
// device changes reaches the driver as a configuration-change interrupt.
import { afterEach, describe, expect, test } from "bun:test";
import { socket } from "../../../ffi/mod.ts";
import { SandboxedDevice } from "../../../src/devices/sandbox/sandboxed_device.ts";
import { jailIdBase } from "../../../src/devices/sandbox/jailed_process.ts";
import type { DeviceReply } from "../../../src/devices/virtio/device_control.ts";
import { GuestMemory } from "../../../src/memory/mod.ts";
import { compileDeviceFilter } from "../../../src/sandbox/policies.ts";
import { TestLoop } from "../../support/vhost_user_driver.ts";
import { tsvmCommand } from "../../support/tsvm.ts";
import { COMMON, VirtioPciDriver } from "../../support/virtio_pci_driver.ts";

const IS_ROOT = process.getuid?.() === 0;
const VERSION_1 = 1n << 32n;
const cleanup: (() => void)[] = [];
afterEach(() => {
  while (cleanup.length > 0) cleanup.pop()!();
});

/** Runs the loop until `done` holds or `ms` pass. */
function pumpUntil(loop: TestLoop, done: () => boolean, ms = 10_000): boolean {
  const deadline = performance.now() + ms;
  while (!done() && performance.now() < deadline) {
    socket.waitReadable(loop.wait.fd, 20);
    loop.pump();
  }
  return done();
}

describe.skipIf(!IS_ROOT)("SandboxedDevice", () => {
  test("a balloon target set by command reaches the driver as a configuration change, though no queue runs", () => {
    const loop = new TestLoop();
    const failures: string[] = [];
    const started = SandboxedDevice.spawn({ kind: "balloon", label: "balloon" }, { kind: "balloon" }, {
      filter: compileDeviceFilter("balloon", null, "kill"), logLevel: "warn", idBase: jailIdBase(process.pid, 40), loop,
      onFailure: (m) => failures.push(m), command: [...tsvmCommand(), "device"],
    });
    if (!started.ok) throw new Error(started.error);
    const device = started.value;
    cleanup.push(() => device.close());
    const memory = GuestMemory.create([{ base: 0, size: 1 << 20 }]);
    cleanup.push(() => memory.close());
    const d = new VirtioPciDriver(device, memory, loop);
    cleanup.push(() => d.pci.close());
    let changes = 0;
    device.onConfigChanged(() => {
      changes++;
      d.pci.notifyConfigChanged();
    });
    expect(d.negotiate(VERSION_1)).toBe(true);
    d.driverOk(); // as the test guest's serve mode does: no queue enabled, so no ring ever starts
    pumpUntil(loop, () => false, 200);
    expect(d.read(COMMON.STATUS, 1) & 0x40).toBe(0); // not DEVICE_NEEDS_RESET
    const replies: DeviceReply[] = [];
    device.command({ kind: "balloon_target", pages: 2048 }, (r) => replies.push(r));
    expect(pumpUntil(loop, () => replies.length > 0 && changes > 0)).toBe(true);
    expect(replies).toEqual([{ kind: "ok" }]);
    expect(d.read(0x1000, 1) & 2).toBe(2); // ISR: configuration changed
    expect(d.read(0x2000, 4)).toBe(2048); // num_pages, read afresh from the device
    expect(failures).toEqual([]);
  });
});
