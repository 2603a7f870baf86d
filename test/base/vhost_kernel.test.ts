import { describe, expect, test } from "bun:test";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { VHOST_IOCTL, VhostKernel } from "../../src/base/vhost_kernel.ts";
import { VhostVsock } from "../../src/devices/virtio/vsock/vhost_vsock.ts";
import { compileAndRun } from "../support/cc.ts";
import { runTsvm, tempDir } from "../support/tsvm.ts";

describe("kernel vhost", () => {
  test("the ioctl numbers are linux/vhost.h's", () => {
    const names = Object.keys(VHOST_IOCTL);
    const source = join(tempDir(), "vhost.c");
    writeFileSync(source, `#include <stdio.h>\n#include <linux/vhost.h>\nint main(void){\n${
      names.map((n) => `printf("%lu\\n", (unsigned long)VHOST_${n});`).join("\n")
    }\nreturn 0;}\n`);
    const values = compileAndRun(source).trim().split("\n").map(Number);
    expect(Object.fromEntries(names.map((n, i) => [n, values[i]]))).toEqual({ ...VHOST_IOCTL });
  });

  test("a device node that is missing or not vhost is refused with the ioctl or errno named", () => {
    expect(VhostKernel.open(join(tempDir(), "no-such-node"))).toEqual({ ok: false, error: "ENOENT" });
    const opened = VhostKernel.open("/dev/null");
    expect(opened.ok ? "" : opened.error).toMatch(/^VHOST_SET_OWNER: (ENOTTY|EINVAL)$/);
  });

  test("--cid without /dev/vhost-vsock says what to load, or what to use instead", () => {
    const r = VhostVsock.open(3, join(tempDir(), "vhost-vsock"));
    expect(r.ok ? "" : r.error).toMatch(/^--cid 3: there is no .*vhost-vsock on this host \(modprobe vhost_vsock\); --vsock cid=N,uds=PATH/);
  });

  test.skipIf(existsSync("/dev/vhost-vsock"))("tsvm run --cid refuses with exit 2 before building a VM when the host has no vhost-vsock", async () => {
    const r = await runTsvm(["run", "--cid", "3"]);
    expect([r.code, r.stderr.trim()]).toEqual([2, expect.stringMatching(/^\[tsvm error\] --cid 3: there is no \/dev\/vhost-vsock on this host/)]);
  });
});
