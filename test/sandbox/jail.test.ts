// The jail, applied to a C probe by the same C library tsvm uses: namespaces, no capabilities,
// no_new_privs, seccomp, an empty root, only the fds it was given; a forbidden call is fatal.
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, openSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { jail, socket, sys } from "../../ffi/mod.ts";
import { compilePolicy } from "../../src/sandbox/bpf.ts";
import { parsePolicy } from "../../src/sandbox/policy.ts";
import { Tube } from "../../src/base/tube.ts";
import { tempDir } from "../support/tsvm.ts";

const CAN_JAIL = process.getuid?.() === 0;
if (!CAN_JAIL) console.warn("tsvm tests: not root; the jail tests are skipped");
const SIGSYS = 31;
const PROBE_POLICY = "read: 1\nwrite: 1\nsendto: 1\nrecvfrom: 1\nexit_group: 1\n";
/** What starting a thread takes, as the device policies allow it; rt_sigaction is not among them. */
const THREAD_POLICY = `${PROBE_POLICY}mmap: 1\nmprotect: 1\nmunmap: 1\nmadvise: 1\nclone3: return 38\nclone: 1\nset_robust_list: 1\nrseq: 1\nfutex: 1\nexit: 1\nrt_sigprocmask: 1\n`;
const ID_BASE = 200000;

describe.skipIf(!CAN_JAIL)("the device jail", () => {
  const dir = tempDir();
  chmodSync(dir, 0o755); // the probe runs as an unprivileged id on the host: it must reach its program
  const probe = join(dir, "probe");
  // The probe runs as an unprivileged host id, so its library must sit where that id can read it.
  const lib = dir;
  copyFileSync(resolve(import.meta.dir, "../../build/libtsvm.so"), join(lib, "libtsvm.so"));
  const cc = Bun.spawnSync(["gcc", "-O1", "-o", probe, join(import.meta.dir, "../support/jail_probe.c"), `-L${lib}`, "-ltsvm", `-Wl,-rpath,${lib}`], { stderr: "pipe" });
  if (cc.exitCode !== 0) throw new Error(cc.stderr.toString());
  const filterPath = join(dir, "probe.bpf");
  writeFileSync(filterPath, compilePolicy(parsePolicy("probe.policy", (n) => (n === "probe.policy" ? PROBE_POLICY : null))));
  const threadFilterPath = join(dir, "probe-thread.bpf");
  writeFileSync(threadFilterPath, compilePolicy(parsePolicy("thread.policy", (n) => (n === "thread.policy" ? THREAD_POLICY : null))));
  const children: number[] = [];
  afterAll(() => {
    for (const pid of children) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  });

  /** Starts a jailed probe; resolves once it reports being locked down. */
  function start(filter = filterPath): { pid: number; tube: Tube } {
    const filterFd = openSync(filter, "r");
    const [ours, theirs] = socket.seqpacketPair();
    const pid = jail.spawnJailed(probe, [probe], [], [filterFd, theirs], 2, ID_BASE);
    sys.close(filterFd);
    sys.close(theirs);
    expect(pid).toBeGreaterThan(0);
    children.push(pid);
    const tube = new Tube(ours);
    const hello = tube.receive(10_000);
    expect(hello.kind === "message" && new TextDecoder().decode(hello.bytes)).toBe("locked");
    return { pid, tube };
  }

  test("the probe has namespaces of its own", () => {
    const { pid } = start();
    for (const ns of ["user", "pid", "mnt", "net", "ipc", "uts"]) {
      expect([ns, readlinkSync(`/proc/${pid}/ns/${ns}`) === readlinkSync(`/proc/self/ns/${ns}`)]).toEqual([ns, false]);
    }
  });

  test("no capabilities, no_new_privs, a seccomp filter, and an unprivileged id outside", () => {
    const { pid } = start();
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const field = (name: string): string => new RegExp(`^${name}:\\s*(.*)$`, "m").exec(status)![1]!.trim();
    expect({ CapEff: field("CapEff"), CapPrm: field("CapPrm"), CapBnd: field("CapBnd"), NoNewPrivs: field("NoNewPrivs"), Seccomp: field("Seccomp") })
      .toEqual({ CapEff: "0000000000000000", CapPrm: "0000000000000000", CapBnd: "0000000000000000", NoNewPrivs: "1", Seccomp: "2" });
    expect(field("Uid").split(/\s+/)[0]).toBe(String(ID_BASE + 1));
  });

  test("its root holds no host files, and it holds only the fds it was given", () => {
    const { pid } = start();
    expect(readdirSync(`/proc/${pid}/root`)).toEqual([]);
    expect(readdirSync(`/proc/${pid}/fd`).map(Number).sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4]);
  });

  test("a forbidden system call kills it with SIGSYS", () => {
    const { pid, tube } = start();
    tube.send(new TextEncoder().encode("socket"));
    const [r, status] = jail.waitpid(pid, false);
    expect([r, status & 0x7f]).toEqual([pid, SIGSYS]);
  });

  // glibc installs its threads' signal handlers (rt_sigaction) when a process starts its first
  // thread; a device process may start that thread only after lockdown (an I/O pool thread), so
  // lockdown does glibc's set-up first.
  test("a single-threaded process locked down can start its first thread without rt_sigaction", () => {
    const { pid, tube } = start(threadFilterPath);
    tube.send(new TextEncoder().encode("thread"));
    const reply = tube.receive(10_000);
    expect(reply.kind === "message" && new TextDecoder().decode(reply.bytes)).toBe("thread ok");
    tube.close();
    expect(jail.waitpid(pid, false)).toEqual([pid, 0]);
  });

  // The child shares the parent's memory until it execs (CLONE_VM), so spawning waits for the exec.
  test("when the spawn returns, the child already runs its program", () => {
    const [ours, theirs] = socket.seqpacketPair();
    const filterFd = openSync(filterPath, "r");
    const pid = jail.spawnJailed(probe, [probe], [], [filterFd, theirs], 2, ID_BASE);
    const exe = readlinkSync(`/proc/${pid}/exe`);
    sys.close(filterFd);
    sys.close(theirs);
    sys.close(ours); // the probe exits once its socket is gone
    expect(exe).toBe(probe);
    expect(jail.waitpid(pid, false)[0]).toBe(pid);
  });

  test("a program that cannot run: the spawn returns, and the child exits 127 without running anything", () => {
    for (let i = 0; i < 3; i++) {
      const pid = jail.spawnJailed(filterPath, [filterPath], [], [], 2, ID_BASE);
      expect(pid).toBeGreaterThan(0);
      const [r, status] = jail.waitpid(pid, false);
      expect([r, status & 0x7f, (status >> 8) & 0xff]).toEqual([pid, 0, 127]);
    }
  });

  test("closing its socket lets it exit cleanly", () => {
    const { pid, tube } = start();
    tube.close();
    const [r, status] = jail.waitpid(pid, false);
    expect([r, status]).toEqual([pid, 0]);
  });
});
