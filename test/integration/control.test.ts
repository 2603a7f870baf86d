// The control socket: tsvm run -s PATH and the subcommands that talk to it, against a running test guest.
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { childPids } from "../support/process_memory.ts";
import { sys } from "../../ffi/mod.ts";
import { HAS_KVM, runTsvm, tempDir, tsvmCommand, TsvmProcess, TIME_SCALE } from "../support/tsvm.ts";

const TIMEOUT = 60_000 * TIME_SCALE;
const BOOTED = /serving/;

/** Starts a serving test guest with a control socket (and a disk, when given). */
function serveVm(socket: string, disk?: string): TsvmProcess {
  return new TsvmProcess(["run", "-p", "tsvm.mode=serve", "-s", socket, ...(disk ? ["--block", `path=${disk}`] : [])]);
}

/** A pipe of one page: [read end, write end]. */
function onePagePipe(): [number, number] {
  const F_SETPIPE_SZ = 1031;
  const [readFd, writeFd] = sys.pipe();
  sys.fcntlIntRaw(writeFd, F_SETPIPE_SZ, 4096);
  return [readFd, writeFd];
}

/** Waits until at least `bytes` wait unread in the pipe at `readFd`; throws naming `what` when they do not come. */
async function pipeFilled(readFd: number, bytes: number, child: { exitCode: number | null }, what: string): Promise<void> {
  const FIONREAD = 0x541b;
  const queued = new Int32Array(1);
  const deadline = performance.now() + 60_000 * TIME_SCALE;
  for (;;) {
    sys.ioctlPtr(readFd, FIONREAD, queued);
    if (queued[0]! >= bytes) return;
    if (performance.now() > deadline || child.exitCode !== null) throw new Error(`${what}: ${queued[0]} bytes`);
    await Bun.sleep(50);
  }
}

/** The first page waiting in the pipe at `readFd`, as text. */
function pipeHead(readFd: number): string {
  const head = new Uint8Array(4096);
  return new TextDecoder().decode(head.subarray(0, Math.max(0, sys.readRaw(readFd, head))));
}

const ticks = (out: string): number => out.split("\n").filter((l) => l.startsWith("tick")).length;

describe.skipIf(!HAS_KVM)("the control socket", () => {
  test("is created 0600, refuses a second run on the same path, and stop ends run with 0 and removes it", async () => {
    const socket = join(tempDir(), "vm.sock");
    using vm = serveVm(socket);
    await vm.waitForOutput(BOOTED, 30_000);
    expect(statSync(socket).mode & 0o777).toBe(0o600);
    const second = await runTsvm(["run", "-s", socket]);
    expect([second.code, second.stderr.trim()]).toEqual([2, `[tsvm error] a running VM already owns the control socket ${socket}`]);
    const stop = await runTsvm(["stop", socket]);
    expect(stop.code).toBe(0);
    expect(await vm.exit(10_000)).toBe(0);
    expect(existsSync(socket)).toBe(false);
  }, TIMEOUT);

  test("balloon sets the target the guest's balloon device reads; balloon_stats prints JSON", async () => {
    const socket = join(tempDir(), "vm.sock");
    using vm = serveVm(socket);
    await vm.waitForOutput(BOOTED, 30_000);
    expect((await runTsvm(["balloon", "8M", socket])).code).toBe(0);
    await vm.waitForOutput(/balloon target 2048 pages/, 10_000);
    const stats = await runTsvm(["balloon_stats", socket]);
    expect(JSON.parse(stats.stdout)).toMatchObject({ target_bytes: 8 * 1024 * 1024 });
    const tooBig = await runTsvm(["balloon", "1T", socket]);
    expect([tooBig.code, tooBig.stderr]).toEqual([1, expect.stringContaining("larger than guest memory")]);
    await runTsvm(["stop", socket]);
  }, TIMEOUT);

  test("disk resize grows the file and the guest sees the new capacity", async () => {
    const dir = tempDir();
    const socket = join(dir, "vm.sock");
    const disk = join(dir, "disk.img");
    writeFileSync(disk, new Uint8Array(1 << 20));
    using vm = serveVm(socket, disk);
    await vm.waitForOutput(BOOTED, 30_000);
    expect((await runTsvm(["disk", "resize", "0", "4M", socket])).code).toBe(0);
    await vm.waitForOutput(/disk capacity 8192 sectors/, 10_000);
    expect(statSync(disk).size).toBe(4 << 20);
    const missing = await runTsvm(["disk", "resize", "3", "4M", socket]);
    expect([missing.code, missing.stderr]).toEqual([1, expect.stringContaining("no disk 3 (this VM has 1)")]);
    await runTsvm(["stop", socket]);
  }, TIMEOUT);

  test("suspend stops the guest's clock-driven ticks; resume continues them", async () => {
    const socket = join(tempDir(), "vm.sock");
    using vm = serveVm(socket);
    await vm.waitForOutput((out) => ticks(out) >= 3, 30_000);
    expect((await runTsvm(["suspend", socket])).code).toBe(0);
    const atSuspend = ticks(vm.stdout);
    const devices = childPids(vm.child.pid);
    expect(devices.length).toBe(2); // the default rng and balloon
    for (const pid of devices) expect(/^State:\s+T/m.test(readFileSync(`/proc/${pid}/status`, "utf8"))).toBe(true);
    const balloonWhileSuspended = await runTsvm(["balloon", "4M", socket]);
    expect([balloonWhileSuspended.code, balloonWhileSuspended.stderr]).toEqual([1, expect.stringContaining("suspended")]);
    await Bun.sleep(1500); // the experiment: 1.5 s of host time in which the guest must not run
    expect(ticks(vm.stdout)).toBe(atSuspend);
    expect((await runTsvm(["resume", socket])).code).toBe(0);
    await vm.waitForOutput((out) => ticks(out) >= atSuspend + 2, 10_000);
    await runTsvm(["stop", socket]);
  }, TIMEOUT);

  test("tsvm stop while the guest writes: every write the guest saw complete is in the file", async () => {
    const dir = tempDir();
    const socket = join(dir, "vm.sock");
    const disk = join(dir, "disk.img");
    writeFileSync(disk, new Uint8Array(4 << 20));
    using vm = new TsvmProcess(["run", "-p", "tsvm.mode=writer", "-s", socket, "--block", `path=${disk}`]);
    await vm.waitForOutput(/wrote 40\r?\n/, 30_000);
    expect((await runTsvm(["stop", socket])).code).toBe(0);
    expect(await vm.exit(10_000)).toBe(0);
    const written = [...vm.stdout.matchAll(/wrote (\d+)\r?\n/g)].map((m) => Number(m[1]));
    const bytes = readFileSync(disk);
    const missing = written.filter((n) => new TextDecoder().decode(bytes.subarray(n * 512, n * 512 + 1 + String(n).length)) !== `W${n}`);
    expect(written.length).toBeGreaterThan(40);
    expect(missing).toEqual([]);
  }, TIMEOUT);

  // Both ways the main thread runs vCPUs: a one-vCPU VM's own vCPU, whose waiting UART write turns
  // the control loop and is ended by the waker's kicks; and served vCPUs (two), where the server
  // counts the vCPU whose exit it is serving as parked for a suspend.
  for (const [served, cpus] of [[" (one vCPU, run by the main thread)", "1"], [" (two vCPUs, served by the main thread)", "2"]] as const) {
    test(`console output nobody reads holds up the printing vCPU only: balloon_stats, suspend, resume and stop still work, promptly${served}`, async () => {
      const socket = join(tempDir(), "vm.sock");
      // tsvm's stdout is a pipe of one page that this test never reads.
      const [readFd, writeFd] = onePagePipe();
      const child = Bun.spawn([...tsvmCommand(), "run", "-c", cpus, "-p", "tsvm.mode=chatty", "-s", socket], { stdin: "ignore", stdout: writeFd, stderr: "pipe" });
      sys.close(writeFd);
      try {
        // Until the pipe is full and the guest's vCPU is stuck in its write.
        await pipeFilled(readFd, 4096, child, "the guest filled only part of the pipe");
        await Bun.sleep(200 * TIME_SCALE);
        const stats = await runTsvm(["balloon_stats", socket]);
        expect([stats.code, stats.stderr]).toEqual([0, ""]);
        // The vCPU waiting for the reader parks where it waits: suspend and resume work too.
        for (const command of ["suspend", "resume"]) {
          const r = await runTsvm([command, socket]);
          expect([command, r.code, r.stderr]).toEqual([command, 0, ""]);
        }
        const started = performance.now();
        expect((await runTsvm(["stop", socket])).code).toBe(0);
        expect(await child.exited).toBe(0);
        // Before: the stuck vCPU held the UART and ignored the kick, and stop waited out its deadline.
        expect(performance.now() - started).toBeLessThan(5_000 * TIME_SCALE);
        expect(await new Response(child.stderr as ReadableStream<Uint8Array>).text()).toBe("");
        expect(pipeHead(readFd)).toContain("passed, 0 failed");
      } finally {
        child.kill("SIGKILL");
        sys.close(readFd);
      }
    }, TIMEOUT);
  }

  test("log lines nobody reads hold up nothing: a guest that makes tsvm log, stderr a full pipe, and the VM still answers and stops", async () => {
    const socket = join(tempDir(), "vm.sock");
    // tsvm's stderr is a pipe of one page that this test reads only at the end; each unclaimed port
    // the guest reads is a debug line (~45 bytes, written by its vCPU), so it is full after about 90 ports.
    const [readFd, writeFd] = onePagePipe();
    const child = Bun.spawn([...tsvmCommand(), "run", "--log-level", "debug", "-p", "tsvm.mode=noisy", "-s", socket], { stdin: "ignore", stdout: "pipe", stderr: writeFd });
    sys.close(writeFd);
    try {
      // Until the pipe is full (a line that does not fit whole is not written: a little room stays).
      await pipeFilled(readFd, 4096 - 100, child, "tsvm logged too little");
      await Bun.sleep(200 * TIME_SCALE);
      // Before: the control loop blocked writing a log line, so none of these were answered.
      for (const command of ["balloon_stats", "suspend", "resume"]) {
        const r = await runTsvm([command, socket]);
        expect([command, r.code, r.stderr]).toEqual([command, 0, ""]);
      }
      expect((await runTsvm(["stop", socket])).code).toBe(0);
      expect(await child.exited).toBe(0);
      expect(pipeHead(readFd)).toContain("[tsvm debug] unhandled port access at 0x4");
    } finally {
      child.kill("SIGKILL");
      sys.close(readFd);
    }
  }, TIMEOUT);

  test("two VMs on two sockets are controlled independently", async () => {
    const dir = tempDir();
    using a = serveVm(join(dir, "a.sock"));
    using b = serveVm(join(dir, "b.sock"));
    await a.waitForOutput(BOOTED, 30_000);
    await b.waitForOutput(BOOTED, 30_000);
    await runTsvm(["balloon", "4M", join(dir, "a.sock")]);
    await a.waitForOutput(/balloon target 1024 pages/, 10_000);
    await runTsvm(["stop", join(dir, "b.sock")]);
    expect(await b.exit(10_000)).toBe(0);
    expect(b.stdout).not.toContain("balloon target 1024");
    expect(a.child.exitCode).toBeNull();
    await runTsvm(["stop", join(dir, "a.sock")]);
    expect(await a.exit(10_000)).toBe(0);
  }, TIMEOUT);

  test("a stale socket left by a killed VM is replaced", async () => {
    const socket = join(tempDir(), "vm.sock");
    const first = serveVm(socket);
    await first.waitForOutput(BOOTED, 30_000);
    first.child.kill("SIGKILL");
    await first.exit(5_000);
    expect(existsSync(socket)).toBe(true);
    using second = serveVm(socket);
    await second.waitForOutput(BOOTED, 30_000);
    expect((await runTsvm(["stop", socket])).code).toBe(0);
  }, TIMEOUT);

  test("subcommands explain a missing socket, a non-socket and a peer that is not tsvm", async () => {
    const dir = tempDir();
    const file = join(dir, "plain");
    writeFileSync(file, "x");
    const missing = await runTsvm(["stop", join(dir, "nope.sock")]);
    expect([missing.code, missing.stderr]).toEqual([1, expect.stringContaining("no control socket at")]);
    const plain = await runTsvm(["stop", file]);
    expect([plain.code, plain.stderr]).toEqual([1, expect.stringContaining("is not a tsvm control socket")]);
    const fake = join(dir, "fake.sock");
    const peer = Bun.spawn(["python3", "-c", `
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.bind(${JSON.stringify(fake)})
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
c.recv(4096)
c.send(b"hello, I am not tsvm")
`], { stdout: "pipe" });
    const reader = (peer.stdout as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    const notTsvm = await runTsvm(["stop", fake]);
    expect([notTsvm.code, notTsvm.stderr]).toEqual([1, expect.stringContaining("is not speaking tsvm's control protocol")]);
    peer.kill();
  }, TIMEOUT);
});
