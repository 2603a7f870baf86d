// A console device served by `tsvm devices` that writes to stdout: the jailed device gets a pipe the
// serving process copies out, never the terminal itself; the guest's bytes arrive in order.
import { afterEach, describe, expect, test } from "bun:test";
import { readdirSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import { socket } from "../../../ffi/mod.ts";
import { guestAddress as ga } from "../../../src/memory/mod.ts";
import { childPids } from "../../support/process_memory.ts";
import { tempDir, TIME_SCALE, TsvmProcess } from "../../support/tsvm.ts";
import { BUFFER_BASE, TestFrontend } from "../../support/vhost_user_driver.ts";

const VERSION_1 = 1n << 32n;
const TRANSMITQ = 1;
const IS_ROOT = process.getuid?.() === 0;

const cleanup: (() => void)[] = [];
afterEach(() => {
  while (cleanup.length > 0) cleanup.pop()!();
});

describe.skipIf(!IS_ROOT)("a jailed console on stdout", () => {
  test("gets a pipe, not tsvm's stdout, and the guest's bytes reach stdout in order", async () => {
    const path = join(tempDir(), "con.sock");
    const devices = new TsvmProcess(["devices", "--log-level", "info", "--console", `vhost=${path},type=stdout`]);
    cleanup.push(() => devices[Symbol.dispose]());
    await devices.waitForOutput(/serving vhost-user/, 20_000, "stderr");
    const fd = socket.unixConnect(path, socket.SOCK_STREAM);
    expect(fd).toBeGreaterThanOrEqual(0);
    const frontend = new TestFrontend(fd);
    cleanup.push(() => frontend.close());
    frontend.start(2, VERSION_1);
    const lines = Array.from({ length: 40 }, (_, i) => `line ${i} from the guest\n`);
    for (const [i, line] of lines.entries()) {
      const address = BUFFER_BASE + 0x10000 + (i % 8) * 0x100;
      frontend.memory.write(ga(address), new TextEncoder().encode(line));
      frontend.postChain(TRANSMITQ, [{ addr: address, len: line.length, write: false }]);
      const deadline = performance.now() + 10_000 * TIME_SCALE;
      while (frontend.used(TRANSMITQ).idx !== i + 1) {
        if (performance.now() > deadline) throw new Error(`the console returned ${frontend.used(TRANSMITQ).idx} buffers, not ${i + 1}`);
        socket.waitReadable(frontend.calls[TRANSMITQ]!.fd, 10);
        frontend.calls[TRANSMITQ]!.read();
      }
    }
    await devices.waitForOutput((out) => out.includes(lines.at(-1)!), 10_000);
    expect(devices.stdout).toBe(lines.join(""));
    const [device] = childPids(devices.child.pid);
    const stdout = readlinkSync(`/proc/${devices.child.pid}/fd/1`);
    const held = readdirSync(`/proc/${device}/fd`).map((f) => readlinkSync(`/proc/${device}/fd/${f}`));
    expect(held).not.toContain(stdout);
  }, 60_000);
});
