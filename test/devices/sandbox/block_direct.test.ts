// A jailed block device with o_direct=true serving 4 KiB reads at depth 32: those go to the kernel's
// asynchronous I/O (c/aio.c), so its seccomp policy must allow io_setup, io_submit and io_getevents.
// Served by `tsvm devices` (jailed as under `tsvm run`) to the C front-end bench section 10 uses,
// which checks the first requests' bytes against the image; no KVM needed. Also with the device's
// batches started by a pool thread (TSVM_AIO_OFFLOAD=1): io_submit then runs on a thread of its own.
import { describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { childPids } from "../../support/process_memory.ts";
import { tempDir, TsvmProcess } from "../../support/tsvm.ts";

const ROOT = join(import.meta.dir, "../../..");
const IS_ROOT = process.getuid?.() === 0;
if (!IS_ROOT) console.warn("tsvm tests: not root, so no jailed device processes; the O_DIRECT device test is skipped");

/** Whether `dir`'s file system takes O_DIRECT (tmpfs before Linux 6.6 does not). */
function directIo(dir: string): boolean {
  const probe = Bun.spawnSync(["dd", "if=/dev/zero", `of=${join(dir, "probe")}`, "bs=4096", "count=1", "oflag=direct", "status=none"], { stderr: "pipe" });
  return probe.exitCode === 0;
}

describe.each([
  ["", []],
  [", its batches started by a pool thread (TSVM_AIO_OFFLOAD=1)", ["env", "TSVM_AIO_OFFLOAD=1"]],
] as const)("a jailed block device with o_direct=true%s", (_, prefix) => {
  test.skipIf(!IS_ROOT)("serves 4 KiB reads at depth 32 through the kernel's asynchronous I/O, with the right bytes", async () => {
    const dir = tempDir();
    if (!directIo(dir)) return console.warn(`skipping: ${dir} does not support O_DIRECT`);
    const driver = join(dir, "driver");
    const cc = Bun.spawnSync(["gcc", "-O2", "-o", driver, join(ROOT, "scripts/bench/vhost_user_blk_driver.c")], { stderr: "pipe" });
    if (cc.exitCode !== 0) throw new Error(`failed to compile the driver: ${cc.stderr.toString()}`);
    const image = join(dir, "disk.img");
    writeFileSync(image, Uint8Array.from({ length: 4 << 20 }, (_, i) => (i * 131 + (i >> 12)) & 0xff));
    const sock = join(dir, "blk.sock");
    using devices = new TsvmProcess(["devices", "--log-level", "info", "--block", `vhost=${sock},path=${image},o_direct=true`], prefix);
    await devices.waitForOutput(/serving vhost-user/, 20_000, "stderr");
    // The device process makes an asynchronous I/O context at its first such read, and the kernel
    // maps the context's ring as "[aio]" until the pool closes (when the front-end goes away).
    const devicePids = (): number[] => childPids(devices.child.pid).flatMap((p) => [p, ...childPids(p)]);
    const hasContext = (pid: number): boolean => {
      try {
        return readFileSync(`/proc/${pid}/maps`, "utf8").includes("/[aio]");
      } catch {
        return false; // gone meanwhile
      }
    };
    const run = Bun.spawn([driver, sock, image, "20000", "4096", "32", "read"], { stdout: "pipe", stderr: "pipe" });
    const timer = setTimeout(() => run.kill("SIGKILL"), 60_000);
    let context = false;
    while (run.exitCode === null && !context) {
      context = devicePids().some(hasContext);
      await Bun.sleep(2);
    }
    const [out, err] = await Promise.all([new Response(run.stdout).text(), new Response(run.stderr).text()]);
    await run.exited;
    clearTimeout(timer);
    expect([run.exitCode, err]).toEqual([0, ""]);
    expect(out).toMatch(/^requests 20000 depth 32 ns-per-request \d+\n$/);
    expect(context).toBe(true);
  }, 60_000);
});
