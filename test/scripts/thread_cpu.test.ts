// The bench's thread sampler (scripts/bench/thread_cpu.ts): it finds the threads of a process tree,
// grandchildren included, with their names and CPU time, and splits a VM's sampled threads into the
// block device's loop, I/O pool and the rest, as shares of the vCPU's time.
import { describe, expect, test } from "bun:test";
import { deviceShares, shSampled, type ThreadCpu } from "../../scripts/bench/thread_cpu.ts";

describe("shSampled", () => {
  test("samples every process of the tree, a busy grandchild included, and returns the command's output", async () => {
    // bash -> bash -> bash counting to 200,000 (a few hundred ms of CPU)
    const busy = "n=0; while [ $n -lt 200000 ]; do n=$((n+1)); done";
    const { out, threads, root } = await shSampled(["bash", "-c", `bash -c '${busy} & wait' & wait; echo done`], 30_000);
    expect(out).toBe("done\n");
    expect(threads[0]!.pid).toBe(root);
    expect(new Set(threads.map((t) => t.pid)).size).toBe(3);
    const busiest = [...threads].sort((a, b) => b.ns - a.ns)[0]!;
    expect(busiest.ns).toBeGreaterThan(50_000_000); // 50 ms or more
    expect(busiest.comm).toBe("bash");
    expect(busiest.pid).not.toBe(threads[0]!.pid); // not the first bash (sampled first)
  });

  test("a command that fails throws with its exit code", async () => {
    await expect(shSampled(["bash", "-c", "echo oops >&2; exit 3"], 10_000)).rejects.toThrow(/failed \(exit 3\)[^]*oops/);
  });
});

describe("deviceShares", () => {
  const vmm = 100;
  const thread = (pid: number, tid: number, comm: string, ms: number): ThreadCpu => ({ pid, tid, comm, ns: ms * 1e6 });
  test("the block device is the busiest device process; its main thread is the loop", () => {
    const threads = [
      thread(vmm, 100, "tsvm", 50), thread(vmm, 101, "vcpu 0", 1000), thread(vmm, 102, "vcpu waker", 5),
      thread(200, 200, "tsvm", 20), // an idle rng device
      thread(300, 300, "tsvm", 800), thread(300, 301, "aio pool", 150), thread(300, 302, "aio pool", 50), thread(300, 303, "JITWorker", 30),
    ];
    const shares = deviceShares(threads, vmm)!;
    expect(shares.loop).toBeCloseTo(0.8);
    expect(shares.pool).toBeCloseTo(0.2);
    expect(shares.other).toBeCloseTo(0.03);
  });

  test("with one vCPU, the VMM's main thread (which runs it) is the vCPU", () => {
    const threads = [thread(vmm, 100, "tsvm", 2000), thread(vmm, 102, "vcpu waker", 5), thread(300, 300, "tsvm", 500), thread(300, 301, "aio pool", 100)];
    expect(deviceShares(threads, vmm)).toEqual({ loop: 0.25, pool: 0.05, other: 0 });
  });

  test("without a device process, or with no vCPU time, there is nothing to say", () => {
    expect(deviceShares([thread(vmm, 100, "tsvm", 10)], vmm)).toBeNull();
    expect(deviceShares([thread(vmm, 100, "tsvm", 0), thread(300, 300, "tsvm", 10)], vmm)).toBeNull();
  });
});
