// The VMM's main thread runs a one-vCPU VM's vCPU itself, and serves the C threads of a VM with more:
// the threads exist, named, no VM has a Worker, one with many vCPUs costs the VMM little more memory
// than one with a single vCPU, and the threads stop when the VM does. And the VMM that runs devices itself runs under their JSC settings.
import { afterEach, describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { release } from "node:os";
import { privateDirtyKib, settledMemory, writeBack } from "../support/process_memory.ts";
import { join } from "node:path";
import { HAS_KVM, runTsvm, tempDir, TIME_SCALE, TsvmProcess } from "../support/tsvm.ts";

const TIMEOUT = 60_000 * TIME_SCALE;
/**
 * What seven more vCPUs may add to the VMM's private memory. A Worker per vCPU cost 2.4-2.8 MiB
 * each (~18 MiB for seven); one exit-server Worker and seven C threads measured 3.5-4.5 MiB; eight C
 * threads served by the main thread, no Worker, ~1 MiB.
 */
const SEVEN_MORE_CEILING_KIB = 2.5 * 1024;
/**
 * The VMM of a one-vCPU VM with its devices jailed, which runs vCPU 0 on its main thread: 8.3-8.4
 * MiB measured when the program that read the command line runs the VM in place, 7.8-8.2 when it
 * hands off to a program with none of the CLI (src/vmm/hand_off.ts); 10.6-11.1 while vCPU 0 had a
 * Worker of its own (~3 MiB), 16.7-17.3 when the VMM still kept yargs, the policy compiler and
 * Node's file modules.
 */
const ONE_VCPU_VMM_CEILING_KIB = 10.5 * 1024;
const IS_ROOT = process.getuid?.() === 0;
/** The ceiling is the built executable's: run from the sources, each Worker transpiles its own code. */
const BUILT = process.env.TSVM_BIN !== undefined && process.env.TSVM_BIN !== "";
if (HAS_KVM && !BUILT) console.warn("tsvm tests: TSVM_BIN is not set (npm test sets it); the VMM's memory per vCPU is held to no ceiling");

const running: TsvmProcess[] = [];
afterEach(() => {
  while (running.length > 0) running.pop()![Symbol.dispose]();
});

/** Starts the test guest serving (it idles after its checks) with `cpus` vCPUs; `env` goes before tsvm (`env NAME=VALUE`). */
async function serve(cpus: number, extra: readonly string[] = [], env: readonly string[] = []): Promise<TsvmProcess> {
  const prefix = env.length > 0 ? ["env", ...env] : [];
  const vm = new TsvmProcess(["run", "-m", "256", "-c", String(cpus), "-p", "tsvm.mode=serve", ...(IS_ROOT ? [] : ["--disable-sandbox"]), ...extra], prefix);
  running.push(vm);
  await vm.waitForOutput(/serving/, 30_000);
  return vm;
}

/** The names of the process's threads. */
function threadNames(pid: number): string[] {
  return readdirSync(`/proc/${pid}/task`).map((tid) => {
    try {
      return readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim();
    } catch {
      return ""; // ended meanwhile
    }
  });
}

describe.skipIf(!HAS_KVM)("vCPU threads", () => {
  test("vCPU 0 runs on the main thread: a one-vCPU VM has no Worker, only the waker thread beside it", async () => {
    if (!IS_ROOT) return; // --disable-sandbox puts vCPU 0 on a C thread (vmm/vcpus.ts)
    const vm = await serve(1);
    const names = threadNames(vm.child.pid);
    expect(names.filter((n) => n === "Worker" || /^vcpu/.test(n))).toEqual(["vcpu waker"]);
    // The main thread, running the guest, still answers the control loop's events at once.
    vm.child.kill("SIGTERM");
    expect(await vm.exit(10_000)).toBe(143);
  }, TIMEOUT);

  test("a one-vCPU guest halted with interrupts off (the main thread in KVM_RUN for good) still answers the control socket and SIGTERM", async () => {
    const socket = join(tempDir(), "vm.sock");
    const vm = new TsvmProcess(["run", "-m", "256", "-p", "tsvm.mode=spin", "-s", socket, ...(IS_ROOT ? [] : ["--disable-sandbox"])]);
    running.push(vm);
    await vm.waitForOutput(/\d+ passed, 0 failed/, 30_000);
    await Bun.sleep(200 * TIME_SCALE);
    // The waker kicks the vCPU out of its halt when the control socket has a client.
    const started = performance.now();
    const stats = await runTsvm(["balloon_stats", socket]);
    expect([stats.code, stats.stderr]).toEqual([0, ""]);
    for (const command of ["suspend", "resume"]) expect((await runTsvm([command, socket])).code).toBe(0);
    expect(performance.now() - started).toBeLessThan(5_000 * TIME_SCALE);
    vm.child.kill("SIGTERM");
    expect(await vm.exit(5_000)).toBe(143);
  }, TIMEOUT);

  test("with more vCPUs each is a C thread named after it, served by the main thread (no Worker), and they end with the VM", async () => {
    const vm = await serve(4);
    const pid = vm.child.pid;
    const names = threadNames(pid);
    expect(names.filter((n) => /^vcpu \d+$/.test(n)).sort()).toEqual(["vcpu 0", "vcpu 1", "vcpu 2", "vcpu 3"]);
    expect(names.filter((n) => n === "Worker" || n === "vcpu waker")).toEqual([]);
    vm.child.kill("SIGTERM");
    expect(await vm.exit(10_000)).toBe(143);
    expect(vm.stderr).not.toContain("did not stop in time");
  }, TIMEOUT);

  /** Whether the program that runs the VM is the one the CLI handed off to (its start-up environment names the run state). */
  const handedOff = (pid: number): boolean =>
    readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").some((e) => e.startsWith("TSVM_RUN_STATE_FD="));

  test("the VMM keeps none of yargs, whether it runs in place or was handed off", async () => {
    if (BUILT) writeBack(process.env.TSVM_BIN!); // else its code counts as the VMM's own memory
    // Read without yargs: the first program runs the VM (when its devices are jailed). `--logLevel`
    // is a spelling only yargs reads: it loads yargs, so the VM runs in a program of its own.
    for (const [extra, inPlace] of [[[], IS_ROOT], [["--logLevel", "warn"], false]] as const) {
      const vm = await serve(1, extra);
      const kib = await settledMemory(() => privateDirtyKib(vm.child.pid), (k) => k);
      console.log(`tsvm tests: VMM private dirty with ${JSON.stringify(extra)}, 1 vCPU: ${(kib / 1024).toFixed(1)} MiB`);
      if (BUILT) expect([extra, handedOff(vm.child.pid)]).toEqual([extra, !inPlace]);
      // A VMM handed off to restarted under its own settings (base/in_process_jsc.ts VMM_JSC).
      if (BUILT && !inPlace) expect(environ(vm.child.pid)).toEqual(expect.arrayContaining(["BUN_JSC_thresholdForJITAfterWarmUp=20000", "BUN_JSC_useFTLJIT=0"]));
      if (BUILT && IS_ROOT) expect(kib).toBeLessThan(ONE_VCPU_VMM_CEILING_KIB);
      vm[Symbol.dispose]();
    }
  }, TIMEOUT);

  test("seven more vCPUs cost the VMM little, not a Worker each", async () => {
    if (BUILT) writeBack(process.env.TSVM_BIN!);
    const one = await serve(1);
    const oneKib = await settledMemory(() => privateDirtyKib(one.child.pid), (k) => k);
    one[Symbol.dispose]();
    const eight = await serve(8);
    const eightKib = await settledMemory(() => privateDirtyKib(eight.child.pid), (k) => k);
    const grew = eightKib - oneKib;
    console.log(`tsvm tests: VMM private dirty, 1 vCPU ${(oneKib / 1024).toFixed(1)} MiB, 8 vCPUs ${(eightKib / 1024).toFixed(1)} MiB`);
    if (BUILT) expect(grew).toBeLessThan(SEVEN_MORE_CEILING_KIB);
    expect(threadNames(eight.child.pid).filter((n) => /^vcpu \d+$/.test(n))).toHaveLength(8);
  }, TIMEOUT);

  // In a VM with more than one vCPU the boot vCPU is served too: a fault of the one vCPU whose faults
  // and output the test guest controls shows how a served vCPU's end is reported.
  test("a served vCPU that triple-faults is reported with its exit reason and registers, exit 1", async () => {
    const r = await runTsvm(["run", "-c", "2", "-p", "tsvm.fault=triple"]);
    expect(r.stderr).toMatch(/vCPU 0 stopped: KVM_EXIT_(SHUTDOWN \(triple fault\)|INTERNAL_ERROR)/);
    expect(r.stderr).toMatch(/RIP=[0-9a-f]{16}/);
    expect(r.stderr).toContain("EFER=");
    expect(r.code).toBe(1);
  }, TIMEOUT);

  test("with TSVM_VCPU_THREADS=all a one-vCPU VM's vCPU is served too: the guest passes its checks, and suspend, resume and stop work", async () => {
    const socket = join(tempDir(), "vm.sock");
    const vm = await serve(1, ["-s", socket], ["TSVM_VCPU_THREADS=all"]);
    expect(vm.stdout).toMatch(/tsvm-guest: \d+ passed, 0 failed/);
    expect(threadNames(vm.child.pid).filter((n) => /^vcpu/.test(n))).toEqual(["vcpu 0"]);
    for (const command of ["suspend", "resume", "suspend", "resume"]) expect((await runTsvm([command, socket])).code).toBe(0);
    const ticks = (): number => (vm.stdout.match(/tick/g) ?? []).length;
    const before = ticks();
    await vm.waitForOutput(() => ticks() > before, 10_000); // the guest runs again after resume
    expect((await runTsvm(["stop", socket])).code).toBe(0);
    expect(await vm.exit(10_000)).toBe(0);
  }, TIMEOUT);
});

// With --disable-sandbox the devices run in the VMM, which then runs under a device process's JSC
// settings: JSC reads them only at start, so tsvm runs itself again with them (base/in_process_jsc.ts).
/** The processes whose parent is `pid` (a VMM's: its device processes). */
function childPids(pid: number): number[] {
  return readdirSync("/proc").filter((p) => /^\d+$/.test(p)).map(Number).filter((p) => {
    try {
      return readFileSync(`/proc/${p}/stat`, "utf8").split(") ")[1]!.split(" ")[1] === String(pid);
    } catch {
      return false; // ended meanwhile
    }
  });
}

const environ = (pid: number): string[] => readFileSync(`/proc/${pid}/environ`, "utf8").split("\0");

describe.skipIf(!HAS_KVM)("devices in the VMM", () => {

  test("--disable-sandbox runs the VMM under the device processes' JSC settings, as the same process", async () => {
    const vm = new TsvmProcess(["run", "-m", "256", "-p", "tsvm.mode=serve", "--disable-sandbox"]);
    running.push(vm);
    await vm.waitForOutput(/serving/, 30_000);
    expect(environ(vm.child.pid)).toEqual(expect.arrayContaining(["BUN_JSC_useFTLJIT=0", "BUN_JSC_numberOfGCMarkers=1", "BUN_JSC_thresholdForJITAfterWarmUp=20000"]));
    expect(vm.stdout).toMatch(/tsvm-guest: \d+ passed, 0 failed/);
    // The main thread is the devices' there: vCPU 0 runs on a C thread, served by the main thread.
    expect(threadNames(vm.child.pid).filter((n) => n === "Worker" || /^vcpu/.test(n)).sort()).toEqual(["vcpu 0"]);
  }, TIMEOUT);

  test("so does disable-sandbox in a configuration file; a setting already in the environment stays", async () => {
    const path = join(tempDir(), "vm.json");
    writeFileSync(path, JSON.stringify({ "disable-sandbox": true }));
    const vm = new TsvmProcess(["run", "--config", path, "-m", "256", "-p", "tsvm.mode=serve"], ["env", "BUN_JSC_numberOfGCMarkers=2"]);
    running.push(vm);
    await vm.waitForOutput(/serving/, 30_000);
    const env = environ(vm.child.pid);
    expect(env).toContain("BUN_JSC_useFTLJIT=0");
    expect(env).toContain("BUN_JSC_numberOfGCMarkers=2");
    expect(env).not.toContain("BUN_JSC_numberOfGCMarkers=1");
  }, TIMEOUT);
});

// A device process's JSC settings depend on its kind (base/in_process_jsc.ts BURST_DEVICE_JSC).
describe.skipIf(!HAS_KVM)("device processes", () => {
  test("jailed devices run under their kind's JSC settings: a late baseline JIT for all, no DFG for rng, balloon and vsock", async () => {
    const dir = tempDir();
    const image = join(dir, "disk.img");
    writeFileSync(image, new Uint8Array(1 << 20));
    const vm = new TsvmProcess(["run", "-m", "256", "-p", "tsvm.mode=serve", "--block", `path=${image}`, "--vsock", `cid=3,uds=${join(dir, "v.sock")}`]);
    running.push(vm);
    await vm.waitForOutput(/serving/, 30_000);
    const devices = childPids(vm.child.pid);
    expect(devices.length).toBe(4); // block, rng, balloon, vsock
    // The VMM runs in the program that read the command line (it takes its JIT policy at run time),
    // and none of the devices' settings reach it.
    expect(environ(vm.child.pid).filter((e) => e.startsWith("BUN_JSC_") || e.startsWith("TSVM_RUN_STATE_FD="))).toEqual([]);
    const withoutDfg = devices.filter((pid) => environ(Number(pid)).includes("BUN_JSC_useDFGJIT=0"));
    for (const pid of devices) {
      expect(environ(Number(pid))).toEqual(expect.arrayContaining(["BUN_JSC_useFTLJIT=0", "BUN_JSC_numberOfGCMarkers=1", "BUN_JSC_thresholdForJITAfterWarmUp=20000"]));
      // no JSC thread that keeps heap blocks warm (DEVICE_JSC says why)
      const threads = readdirSync(`/proc/${pid}/task`).map((tid) => readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim());
      expect(threads).not.toContain("JSCWarmUp");
    }
    expect(withoutDfg.length).toBe(3);
  }, TIMEOUT);

  test("device processes ask the scheduler for a 0.1 ms slice (Linux 6.12 and later); the VMM keeps the kernel's default", async () => {
    const slice = (pid: number): number | null => {
      const m = /^se\.slice\s*:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/sched`, "utf8"));
      return m ? Number(m[1]) : null;
    };
    const [major, minor] = release().split(".").map(Number) as [number, number];
    if (major * 100 + minor < 612 || !existsSync("/proc/self/sched") || slice(process.pid) === null) {
      console.warn("tsvm tests: this kernel does not show or take a thread's slice (before 6.12, or no /proc/PID/sched); not checked");
      return;
    }
    const dir = tempDir();
    const image = join(dir, "disk.img");
    writeFileSync(image, new Uint8Array(1 << 20));
    const vm = await serve(1, ["--block", `path=${image}`]);
    const devices = childPids(vm.child.pid);
    expect(devices.length).toBe(IS_ROOT ? 3 : 0); // block, rng, balloon (in the VMM without root)
    // Each thread the process starts after asking inherits it (the block device's I/O threads);
    // the runtime's own, started before, keep the default.
    for (const pid of devices) expect(slice(pid)).toBe(100_000);
    expect(slice(vm.child.pid)).not.toBe(100_000);
  }, TIMEOUT);
});
