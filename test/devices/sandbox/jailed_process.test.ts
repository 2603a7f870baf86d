// The VMM's side of a device process against hostile device processes on a real tube: every kind
// of misbehaviour ends in SIGKILL, a reaped child and one line naming it, within its deadline.
import { afterEach, describe, expect, test } from "bun:test";
import { socket, sys } from "../../../ffi/mod.ts";
import { captureLog } from "../../../src/base/log.ts";
import { JailedProcess, jailIdBase } from "../../../src/devices/sandbox/jailed_process.ts";
import { TestLoop } from "../../support/vhost_user_driver.ts";

const IS_ROOT = process.getuid?.() === 0;
const open: JailedProcess[] = [];
afterEach(() => {
  for (const p of open.splice(0)) p.close();
});

/**
 * Starts `script` (JavaScript run by Bun in the jail) as a device process. fd 4 is its tube: a
 * `fs.writeSync(4, bytes)` sends one message.
 */
function startFake(script: string): { process: JailedProcess; failures: string[]; loop: TestLoop } {
  const loop = new TestLoop();
  const failures: string[] = [];
  const [ours, theirs] = socket.socketPair(socket.SOCK_STREAM);
  const started = JailedProcess.spawn({
    setup: { spec: { kind: "rng", label: "rng" }, logLevel: "warn", filter: new Uint8Array(0), listen: false, resourceFds: 0 },
    vhostUserFd: theirs, resourceFds: [], idBase: jailIdBase(process.pid, 30), loop, onFailure: (m) => failures.push(m),
    command: [process.execPath, "-e", `const fs = require("node:fs"); ${script}`],
  });
  sys.close(theirs);
  sys.close(ours);
  if (!started.ok) throw new Error(started.error);
  open.push(started.value);
  return { process: started.value, failures, loop };
}

/** Runs the loop until the process failed or `timeoutMs` passed; returns the elapsed time. */
function runUntilFailed(f: { process: JailedProcess; failures: string[]; loop: TestLoop }, timeoutMs: number): number {
  const start = performance.now();
  while (f.failures.length === 0 && performance.now() - start < timeoutMs) {
    socket.waitReadable(f.loop.wait.fd, 50);
    f.loop.pump();
    f.process.checkDeadlines(performance.now());
  }
  return performance.now() - start;
}

/** A message the fake sends: a kind byte, then raw bytes. */
const READY = "fs.writeSync(4, Uint8Array.of(0x81));";
const STAY = "setInterval(() => {}, 1000);";

describe.skipIf(!IS_ROOT)("JailedProcess against a hostile device process", () => {
  const cases: [string, string, RegExp][] = [
    ["an empty message", `fs.writeSync(4, new Uint8Array(0)); ${STAY}`, /sent a malformed message \(an empty message\); killed$/],
    ["a message of an unknown kind", `fs.writeSync(4, Uint8Array.of(0x99)); ${STAY}`, /sent a malformed message \(unknown message kind 153\); killed$/],
    ["a message larger than the tube carries", `fs.writeSync(4, new Uint8Array(65536)); ${STAY}`, /broke its tube: failed to receive a message: EMSGSIZE; killed$/],
    ["READY twice", `${READY} ${READY} ${STAY}`, /sent an unexpected ready message; killed$/],
    ["a reply nobody asked for", `${READY} fs.writeSync(4, Uint8Array.of(0x83, 7, 0, 0, 0, 3)); ${STAY}`, /sent an unexpected reply message; killed$/],
    ["a truncated reply", `${READY} fs.writeSync(4, Uint8Array.of(0x83, 7)); ${STAY}`, /sent a malformed message \(truncated message/],
  ];
  for (const [name, script, expected] of cases) {
    test(`${name} gets the process killed, reaped and named`, () => {
      const fake = startFake(script);
      expect(runUntilFailed(fake, 10_000)).toBeLessThan(10_000);
      expect(fake.failures).toHaveLength(1);
      expect(fake.failures[0]).toMatch(new RegExp(`^device process rng \\(pid ${fake.process.pid}\\) `));
      expect(fake.failures[0]).toMatch(expected);
      expect(jailWaitGone(fake.process.pid)).toBe(true);
    });
  }

  test("a process that never says READY is killed at the start deadline", () => {
    const fake = startFake(STAY);
    expect(fake.process.waitReady()).toEqual({ ok: false, error: expect.stringMatching(/did not start within \d+ s; killed$/) });
    expect(fake.failures).toHaveLength(1);
  }, 20_000);

  test("a command that is never answered fails at its deadline, and its caller hears why", () => {
    const fake = startFake(`${READY} ${STAY}`);
    expect(fake.process.waitReady().ok).toBe(true);
    const replies: unknown[] = [];
    fake.process.command({ kind: "flush" }, (reply) => replies.push(reply));
    expect(runUntilFailed(fake, 10_000)).toBeLessThan(10_000);
    expect(fake.failures[0]).toMatch(/did not answer a command within 5 s; killed$/);
    expect(replies).toEqual([{ kind: "error", message: fake.failures[0] }]);
  }, 20_000);

  test("its log lines are escaped: a device cannot write terminal escape sequences", () => {
    const fake = startFake(`${READY} process.stderr.write("evil \\x1b[2J\\x07 line\\n"); ${STAY}`);
    const lines: string[] = [];
    captureLog((text) => lines.push(text));
    try {
      const start = performance.now();
      while (!lines.some((l) => l.includes("evil")) && performance.now() - start < 5000) {
        socket.waitReadable(fake.loop.wait.fd, 50);
        fake.loop.pump();
      }
    } finally {
      captureLog(null);
    }
    expect(lines).toContain("[rng] evil \\x1b[2J\\x07 line\n");
  });

  test("a process that exits is reported with how it ended, not killed", () => {
    const fake = startFake(`${READY} process.exit(7);`);
    runUntilFailed(fake, 10_000);
    expect(fake.failures).toEqual([`device process rng (pid ${fake.process.pid}) exited with status 7`]);
  });
});

/** Whether `pid` is gone (reaped: no such process). */
function jailWaitGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch {
    return true;
  }
}
