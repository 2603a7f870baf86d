// The test guest on qcow2 images: its driver's writes land where qemu-img sees them, and a killed tsvm
// leaves an image qemu-img check does not call corrupt.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { HAS_KVM, runTsvm, tempDir, TsvmProcess, TIME_SCALE } from "../support/tsvm.ts";

const HAS_QEMU_IMG = Bun.which("qemu-img") !== null;
const TIMEOUT = 60_000 * TIME_SCALE;

function sh(...cmd: string[]): number {
  return Bun.spawnSync(cmd, { stdout: "ignore", stderr: "ignore" }).exitCode ?? -1;
}

describe.skipIf(!HAS_KVM || !HAS_QEMU_IMG)("the test guest on qcow2", () => {
  test("the guest's block checks pass on a tsvm-made qcow2, and qemu-img sees its write", async () => {
    const dir = tempDir();
    const image = join(dir, "disk.qcow2");
    expect((await runTsvm(["create_qcow2", image, "8M"])).code).toBe(0);
    const r = await runTsvm(["run", "--block", `path=${image}`]);
    expect(r.stdout).toContain("ok   virtio-blk0:");
    expect(r.code).toBe(0);
    expect(sh("qemu-img", "check", image)).toBe(0);
    const raw = join(dir, "disk.raw");
    expect(sh("qemu-img", "convert", "-O", "raw", image, raw)).toBe(0);
    expect(new TextDecoder().decode(readFileSync(raw).subarray(512, 542))).toBe("written by the tsvm test guest");
  }, TIMEOUT);

  test("kill -9 in the middle of writes leaves an image qemu-img check accepts (leaks allowed)", async () => {
    const image = join(tempDir(), "crash.qcow2");
    expect((await runTsvm(["create_qcow2", image, "16M"])).code).toBe(0);
    using vm = new TsvmProcess(["run", "-p", "tsvm.mode=writer", "--block", `path=${image}`]);
    await vm.waitForOutput(/wrote 300\r?\n/, 40_000);
    vm.child.kill("SIGKILL");
    await vm.exit(5_000);
    const check = Bun.spawnSync(["qemu-img", "check", image], { stdout: "pipe", stderr: "pipe" });
    // 0: clean; 3: leaked clusters only. 2 would be corruption.
    expect([0, 3]).toContain(check.exitCode ?? -1);
  }, TIMEOUT);

  test("create_qcow2 refuses to overwrite a file and bad sizes", async () => {
    const image = join(tempDir(), "exists.qcow2");
    expect((await runTsvm(["create_qcow2", image, "1M"])).code).toBe(0);
    const again = await runTsvm(["create_qcow2", image, "1M"]);
    expect([again.code, again.stderr]).toEqual([2, expect.stringContaining("it already exists")]);
    const bad = await runTsvm(["create_qcow2", join(tempDir(), "x.qcow2"), "1000"]);
    expect([bad.code, bad.stderr]).toEqual([2, expect.stringContaining("multiple of 512")]);
  }, TIMEOUT);
});
