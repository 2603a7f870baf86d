// Device processes under real KVM: each virtio device runs jailed; a dying device stops the VM.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { childPids } from "../support/process_memory.ts";
import { HAS_KVM, runTsvm, tempDir, TsvmProcess, TIME_SCALE, tsvmCommand } from "../support/tsvm.ts";

const TIMEOUT = 60_000 * TIME_SCALE;

function field(pid: number, name: string): string {
  return new RegExp(`^${name}:\\s*(.*)$`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]!.trim();
}

describe.skipIf(!HAS_KVM || process.getuid?.() !== 0)("sandboxed device processes", () => {
  test("each device runs in its own namespaces with no capabilities, no_new_privs, seccomp and an empty root", async () => {
    const disk = join(tempDir(), "disk.img");
    writeFileSync(disk, new Uint8Array(1 << 20));
    using vm = new TsvmProcess(["run", "-p", "tsvm.mode=serve", "--block", `path=${disk}`]);
    await vm.waitForOutput(/serving/, 30_000);
    const devices = childPids(vm.child.pid);
    expect(devices.length).toBe(3); // block, rng, balloon
    const vmmLibraryFd = readdirSync(`/proc/${vm.child.pid}/fd`).find((fd) => readlinkSync(`/proc/${vm.child.pid}/fd/${fd}`).startsWith("/memfd:libtsvm.so"));
    const vmmLibrary = vmmLibraryFd === undefined ? null : statSync(`/proc/${vm.child.pid}/fd/${vmmLibraryFd}`);
    if (process.env.TSVM_BIN) {
      expect(vmmLibraryFd).toBeDefined();
      const flags = Number.parseInt(/^flags:\s*(\d+)$/m.exec(readFileSync(`/proc/${vm.child.pid}/fdinfo/${vmmLibraryFd}`, "utf8"))![1]!, 8);
      expect(flags & 3).toBe(0); // O_RDONLY
    }
    for (const pid of devices) {
      for (const ns of ["user", "pid", "mnt", "net", "ipc", "uts"]) {
        expect([ns, readlinkSync(`/proc/${pid}/ns/${ns}`) === readlinkSync(`/proc/${vm.child.pid}/ns/${ns}`)]).toEqual([ns, false]);
      }
      expect({ CapEff: field(pid, "CapEff"), NoNewPrivs: field(pid, "NoNewPrivs"), Seccomp: field(pid, "Seccomp") })
        .toEqual({ CapEff: "0000000000000000", NoNewPrivs: "1", Seccomp: "2" });
      expect(readdirSync(`/proc/${pid}/root`)).toEqual([]);
      // Every fd is a std stream, one it was given (tube, guest memory, its disk) or the runtime's own.
      expect([readlinkSync(`/proc/${pid}/fd/0`), readlinkSync(`/proc/${pid}/fd/1`)]).toEqual(["/dev/null", "/dev/null"]);
      const targets = readdirSync(`/proc/${pid}/fd`).map((fd) => readlinkSync(`/proc/${pid}/fd/${fd}`));
      const unexpected = targets.filter((t) => !/^(socket:|anon_inode:|pipe:|\/memfd:|\/dev\/null)/.test(t) && t !== resolve(disk));
      expect(unexpected).toEqual([]);
      // A device's fd 2 is a pipe tsvm reads and prefixes, never the user's terminal.
      expect(readlinkSync(`/proc/${pid}/fd/2`)).toMatch(/^pipe:/);
      // The library the device runs is the VMM's sealed memfd, open there read-only: the device maps
      // it and keeps no fd to it, so it cannot rewrite its own code.
      if (process.env.TSVM_BIN) {
        const mapped = readFileSync(`/proc/${pid}/maps`, "utf8").split("\n").filter((l) => l.includes("/memfd:libtsvm.so"));
        expect(mapped.length).toBeGreaterThan(0);
        for (const line of mapped) {
          const [, perms, , , inode] = line.split(/\s+/);
          expect(perms!.endsWith("p")).toBe(true); // private: writing a page of it never reaches the memfd
          expect(inode).toBe(String(vmmLibrary!.ino));
        }
        expect(targets.filter((t) => t.startsWith("/memfd:libtsvm.so"))).toEqual([]);
      }
    }
  }, TIMEOUT);

  test("kill -9 of a device process stops the VM, naming the device", async () => {
    using vm = new TsvmProcess(["run", "-p", "tsvm.mode=serve"]);
    await vm.waitForOutput(/serving/, 30_000);
    const [victim] = childPids(vm.child.pid);
    process.kill(victim!, "SIGKILL");
    const started = performance.now();
    expect(await vm.exit(10_000)).toBe(1);
    expect(performance.now() - started).toBeLessThan(2000);
    expect(vm.stderr).toMatch(new RegExp(`stopping: device process \\w+ \\(pid ${victim}\\) was killed by signal 9`));
  }, TIMEOUT);

  test("a system call outside the device's policy kills it with SIGSYS, and the VM stops naming it", async () => {
    const dir = tempDir();
    for (const f of readdirSync(resolve(import.meta.dir, "../../seccomp/x86_64"))) {
      const text = readFileSync(resolve(import.meta.dir, "../../seccomp/x86_64", f), "utf8");
      writeFileSync(join(dir, f), text.replace(/^getrandom: 1$/m, "# getrandom taken away for this test"));
    }
    const r = await runTsvm(["run", "--seccomp-policy-dir", dir, "--no-balloon"]);
    expect(r.stderr).toMatch(/stopping: device process rng \(pid \d+\) was killed by SIGSYS: a system call its seccomp policy does not allow/);
    expect(r.code).toBe(1);
  }, TIMEOUT);

  test("--seccomp-log-failures logs that call instead, and the guest's checks pass", async () => {
    const dir = tempDir();
    for (const f of readdirSync(resolve(import.meta.dir, "../../seccomp/x86_64"))) {
      const text = readFileSync(resolve(import.meta.dir, "../../seccomp/x86_64", f), "utf8");
      writeFileSync(join(dir, f), text.replace(/^getrandom: 1$/m, "# getrandom taken away for this test"));
    }
    const r = await runTsvm(["run", "--seccomp-policy-dir", dir, "--seccomp-log-failures"]);
    expect(r.stdout).toContain("ok   virtio-rng:");
    expect(r.code).toBe(0);
  }, TIMEOUT);

  // Device processes are started by the C library's spawner thread while the VMM goes on, so a kill
  // lands in the middle of a spawn: before the child got its id maps, between them and its exec, or
  // after. A child once waited for good on a pipe whose write end it held itself.
  test.skipIf(!process.env.TSVM_BIN)("tsvm killed -9 at any moment of its start-up leaves no process behind", async () => {
    const bin = tsvmCommand()[0]!;
    const ours = (): number[] => readdirSync("/proc").filter((p) => /^\d+$/.test(p)).map(Number).filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")[0] === bin;
      } catch {
        return false;
      }
    });
    const before = new Set(ours());
    for (let i = 0; i < 80; i++) {
      const child = Bun.spawn([bin, "run", "-p", "tsvm.mode=serve"], { stdin: "ignore", stdout: "ignore", stderr: "ignore" });
      await Bun.sleep((8 + (i % 80) * 0.5) * TIME_SCALE);
      child.kill("SIGKILL");
      await child.exited;
    }
    const deadline = performance.now() + 5_000 * TIME_SCALE;
    let left = ours().filter((pid) => !before.has(pid));
    while (left.length > 0 && performance.now() < deadline) {
      await Bun.sleep(50);
      left = ours().filter((pid) => !before.has(pid));
    }
    expect(left.map((pid) => `${pid} ${field(pid, "Name")} ${field(pid, "State")}`)).toEqual([]);
  }, TIMEOUT);

  test("--disable-sandbox runs the same devices inside tsvm, with the same results", async () => {
    const disk = join(tempDir(), "disk.img");
    writeFileSync(disk, new Uint8Array(1 << 20));
    using vm = new TsvmProcess(["run", "--disable-sandbox", "-p", "tsvm.mode=serve", "--block", `path=${disk}`]);
    await vm.waitForOutput(/serving/, 30_000);
    expect(childPids(vm.child.pid)).toEqual([]);
    for (const check of ["virtio-rng", "virtio-balloon", "virtio-blk0"]) expect(vm.stdout).toContain(`ok   ${check}:`);
  }, TIMEOUT);
});
