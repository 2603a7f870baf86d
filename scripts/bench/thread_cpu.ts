// thread_cpu.ts - what each thread of a benchmarked process tree spent on the CPU (bench section 8).
import { readdirSync, readFileSync } from "node:fs";

/** One thread's CPU time (schedstat, ns) at the last sample, and whose it is. */
export type ThreadCpu = { pid: number; tid: number; comm: string; ns: number };

/**
 * Runs `cmd` (killed after `timeoutMs`; its stdout comes back, an exit other than 0 throws, as with
 * bench.ts's `sh`), and meanwhile samples every 25 ms the CPU time of each thread of its
 * process tree (children found through /proc/PID/task/TID/children, so jailed device processes
 * too). Each thread comes back with its last sample: a thread's time up to its last 25 ms; `root`
 * is the command's own pid.
 */
export async function shSampled(cmd: string[], timeoutMs: number, env: Record<string, string> = {}): Promise<{ out: string; threads: ThreadCpu[]; root: number }> {
  const child = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe", env: { ...process.env, ...env } });
  const threads = new Map<number, ThreadCpu>();
  const read = (path: string): string | null => {
    try {
      return readFileSync(path, "utf8");
    } catch {
      return null; // gone meanwhile
    }
  };
  const sample = (): void => {
    const pids = [child.pid];
    for (let i = 0; i < pids.length && i < 64; i++) {
      const pid = pids[i]!;
      let tids: string[];
      try {
        tids = readdirSync(`/proc/${pid}/task`);
      } catch {
        continue;
      }
      for (const t of tids) {
        const stat = read(`/proc/${pid}/task/${t}/schedstat`);
        if (stat !== null) {
          const tid = Number(t);
          const entry = threads.get(tid) ?? { pid, tid, comm: "", ns: 0 };
          entry.ns = Number(stat.split(" ")[0]);
          entry.comm = (read(`/proc/${pid}/task/${t}/comm`) ?? entry.comm).trim(); // (a thread may name itself late)
          threads.set(tid, entry);
        }
        for (const c of (read(`/proc/${pid}/task/${t}/children`) ?? "").split(" ").filter(Boolean)) pids.push(Number(c));
      }
    }
  };
  const timer = setInterval(sample, 25);
  const killer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [out, errors] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text()]);
  await child.exited;
  clearInterval(timer);
  clearTimeout(killer);
  if (child.exitCode !== 0) {
    const why = child.exitCode === null ? `was killed after ${timeoutMs} ms` : `failed (exit ${child.exitCode})`;
    throw new Error(`${cmd.join(" ")} ${why}:\n${out.slice(-2000)}\n${errors.slice(-2000)}`);
  }
  return { out, threads: [...threads.values()], root: child.pid };
}

/**
 * From a `tsvm run`'s sampled threads (process `vmm`): the block device process's loop (its main
 * thread), its I/O pool threads ("aio pool") and its other threads, each as a share of the vCPU's
 * time: the threads named "vcpu N", or with one vCPU the VMM's main thread, which runs it. A ring-3
 * driver polls, so its vCPU is busy from boot to the end: a loop near 100% of it is what bounds the
 * request rate. The block device is the device process that used the most CPU.
 */
export function deviceShares(threads: readonly ThreadCpu[], vmm: number): { loop: number; pool: number; other: number } | null {
  const named = threads.filter((t) => t.pid === vmm && /^vcpu \d+$/.test(t.comm));
  const vcpu = (named.length > 0 ? named : threads.filter((t) => t.tid === vmm)).reduce((sum, t) => sum + t.ns, 0);
  const byProcess = new Map<number, number>();
  for (const t of threads) if (t.pid !== vmm) byProcess.set(t.pid, (byProcess.get(t.pid) ?? 0) + t.ns);
  const block = [...byProcess].sort((a, b) => b[1] - a[1])[0]?.[0];
  if (vcpu === 0 || block === undefined) return null;
  const mine = threads.filter((t) => t.pid === block);
  const loop = mine.filter((t) => t.tid === block).reduce((sum, t) => sum + t.ns, 0);
  const pool = mine.filter((t) => t.comm === "aio pool").reduce((sum, t) => sum + t.ns, 0);
  const all = mine.reduce((sum, t) => sum + t.ns, 0);
  return { loop: loop / vcpu, pool: pool / vcpu, other: (all - loop - pool) / vcpu };
}
