// A jailed block device with o_direct=true serving 4 KiB reads at depth 32: those go to the kernel's
// asynchronous I/O (c/aio.c), so its seccomp policy must allow io_setup, io_submit and io_getevents.
// Served by `tsvm devices` (jailed as under `tsvm run`) to the C front-end bench section 10 uses,
// which checks the first requests' bytes against the image; no KVM needed. Also with the device's
// batches started by a pool thread (TSVM_AIO_OFFLOAD=1): io_submit then runs on a thread of its own.
// And with every request on the pool's threads (TSVM_AIO_THREADS=1), which then grow past the
// default pool's 16 after the lockdown.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
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

/** Compiles the C front-end and writes a 4 MiB image in a fresh directory; null where it has no O_DIRECT. */
function setUp(): { dir: string; driver: string; image: string; sock: string } | null {
  const dir = tempDir();
  if (!directIo(dir)) {
    console.warn(`skipping: ${dir} does not support O_DIRECT`);
    return null;
  }
  const driver = join(dir, "driver");
  const cc = Bun.spawnSync(["gcc", "-O2", "-o", driver, join(ROOT, "scripts/bench/vhost_user_blk_driver.c")], { stderr: "pipe" });
  if (cc.exitCode !== 0) throw new Error(`failed to compile the driver: ${cc.stderr.toString()}`);
  const image = join(dir, "disk.img");
  writeFileSync(image, Uint8Array.from({ length: 4 << 20 }, (_, i) => (i * 131 + (i >> 12)) & 0xff));
  return { dir, driver, image, sock: join(dir, "blk.sock") };
}

/** The pids of `devices`' processes (the jailed device is a grandchild). */
function devicePids(devices: TsvmProcess): number[] {
  return childPids(devices.child.pid).flatMap((p) => [p, ...childPids(p)]);
}

/** Runs the front-end (`requests` 4 KiB requests at depth 32), calling `watch` every 2 ms while it runs. */
async function drive(driver: string, sock: string, image: string, requests: number, direction: "read" | "write", watch: () => void): Promise<void> {
  const run = Bun.spawn([driver, sock, image, String(requests), "4096", "32", direction], { stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => run.kill("SIGKILL"), 60_000);
  while (run.exitCode === null) {
    watch();
    await Bun.sleep(2);
  }
  const [out, err] = await Promise.all([new Response(run.stdout).text(), new Response(run.stderr).text()]);
  await run.exited;
  clearTimeout(timer);
  expect([run.exitCode, err]).toEqual([0, ""]);
  expect(out).toMatch(new RegExp(`^requests ${requests} depth 32 ns-per-request \\d+\n$`));
}

/** Whether `pid` has an asynchronous I/O context (the kernel maps its ring as "[aio]"). */
function hasContext(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/maps`, "utf8").includes("/[aio]");
  } catch {
    return false; // gone meanwhile
  }
}

/** How many threads of `pid` are the I/O pool's ("aio pool"). */
function poolThreads(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/task`).filter((t) => readFileSync(`/proc/${pid}/task/${t}/comm`, "utf8").trim() === "aio pool").length;
  } catch {
    return 0; // gone meanwhile
  }
}

describe.each([
  ["", []],
  [", its batches started by a pool thread (TSVM_AIO_OFFLOAD=1)", ["env", "TSVM_AIO_OFFLOAD=1"]],
] as const)("a jailed block device with o_direct=true%s", (_, prefix) => {
  test.skipIf(!IS_ROOT)("serves 4 KiB reads at depth 32 through the kernel's asynchronous I/O, with the right bytes", async () => {
    const setup = setUp();
    if (setup === null) return;
    const { driver, image, sock } = setup;
    using devices = new TsvmProcess(["devices", "--log-level", "info", "--block", `vhost=${sock},path=${image},o_direct=true`], prefix);
    await devices.waitForOutput(/serving vhost-user/, 20_000, "stderr");
    // The device process makes an asynchronous I/O context at its first such read, and the kernel
    // maps the context's ring as "[aio]" until the pool closes (when the front-end goes away).
    let context = false;
    await drive(driver, sock, image, 20000, "read", () => {
      context ||= devicePids(devices).some(hasContext);
    });
    expect(context).toBe(true);
  }, 60_000);
});

describe("a jailed block device with o_direct=true and every request on its pool's threads (TSVM_AIO_THREADS=1)", () => {
  test.skipIf(!IS_ROOT)("serves 4 KiB writes, then reads, at depth 32 on more threads than the default pool's 16, with no asynchronous I/O context", async () => {
    const setup = setUp();
    if (setup === null) return;
    const { driver, image, sock } = setup;
    using devices = new TsvmProcess(["devices", "--log-level", "info", "--block", `vhost=${sock},path=${image},o_direct=true`], ["env", "TSVM_AIO_THREADS=1"]);
    await devices.waitForOutput(/serving vhost-user/, 20_000, "stderr");
    let context = false;
    let threads = 0;
    const watch = (): void => {
      for (const pid of devicePids(devices)) {
        context ||= hasContext(pid);
        threads = Math.max(threads, poolThreads(pid));
      }
    };
    await drive(driver, sock, image, 20000, "write", watch);
    await drive(driver, sock, image, 20000, "read", watch); // (the reads check their bytes against the image)
    expect(context).toBe(false);
    expect(threads).toBeGreaterThan(16);
    expect(threads).toBeLessThanOrEqual(64);
  }, 60_000);
});
