// tsvm as a vhost-user front-end (`--vhost-user`, `--shared-dir`) under real KVM, with tsvm's own
// back-ends (`tsvm devices`), QEMU's qemu-storage-daemon and virtiofsd.
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { HAS_NETNS, TapNamespace, withTapFd } from "../support/net_ns.ts";
import { HAS_KVM, runTsvm, tempDir, TIME_SCALE, TsvmProcess } from "../support/tsvm.ts";

const TIMEOUT = 90_000 * TIME_SCALE;
const QSD = Bun.which("qemu-storage-daemon");
const VIRTIOFSD = ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"].find((p) => existsSync(p));
const IS_ROOT = process.getuid?.() === 0;
if (HAS_KVM && !QSD) console.warn("tsvm tests: no qemu-storage-daemon (Debian qemu-system-common); its vhost-user test is skipped");
if (HAS_KVM && !VIRTIOFSD) console.warn("tsvm tests: no virtiofsd (Debian qemu-system-common); the --shared-dir test is skipped");

/** A disk image the test guest recognises (its checks read "TSVMDISK" and write sector 1). */
function makeDisk(dir: string): string {
  const path = join(dir, "disk.img");
  const bytes = new Uint8Array(1 << 20);
  bytes.set(new TextEncoder().encode("TSVMDISK"));
  writeFileSync(path, bytes);
  return path;
}

describe.skipIf(!HAS_KVM || !IS_ROOT)("tsvm run as a vhost-user front-end", () => {
  test.skipIf(!HAS_NETNS)("tsvm devices serves blk, rng, console and net to tsvm run: the test guest passes on all four", async () => {
    const dir = tempDir();
    const disk = makeDisk(dir);
    const out = join(dir, "console.out");
    const sock = (name: string): string => join(dir, `${name}.sock`);
    using ns = new TapNamespace(`tsvmvh${process.pid}`);
    using devices = new TsvmProcess([
      "devices", "--log-level", "info", "--block", `vhost=${sock("blk")},path=${disk},id=over-vhost`, "--rng", `vhost=${sock("rng")}`,
      "--console", `vhost=${sock("con")},type=file,path=${out}`, "--net", `vhost=${sock("net")},tap-name=tap0,mac=52:54:00:12:34:56`,
    ], ns.exec);
    await devices.waitForOutput((err) => err.split("serving vhost-user").length > 4, 30_000, "stderr");
    // The peer waits a bounded time for the guest's frame: start it only once the back-ends serve.
    const peer = await ns.startPeer();
    const r = await runTsvm([
      "run", "--no-rng", "-p", "tsvm.net_rx=1", "--vhost-user", `block,socket=${sock("blk")}`, "--vhost-user", `rng,socket=${sock("rng")}`,
      "--vhost-user", `console,socket=${sock("con")}`, "--vhost-user", `net,socket=${sock("net")}`,
    ], { timeoutMs: 60_000 });
    const peerText = await peer.output;
    if (!r.stdout.includes("ok   virtio-net:")) throw new Error(`virtio-net failed; the peer printed: ${peerText}\nback-ends' stderr:\n${devices.stderr}\ntsvm run's:\n${r.stderr}\n${r.stdout}`);
    for (const check of ["virtio-blk0", "virtio-rng", "virtio-console", "virtio-net"]) expect(r.stdout).toContain(`ok   ${check}:`);
    expect(r.stdout).toContain('virtio-blk0 capacity 2048 sectors, id "over-vhost", read-write');
    expect(r.code).toBe(0);
    expect(new TextDecoder().decode(readFileSync(disk).subarray(512, 542))).toBe("written by the tsvm test guest");
    expect(readFileSync(out, "utf8")).toContain("hello from the guest over virtio-console");
    expect(peerText).toContain("from guest: hello from the tsvm guest");
    // The back-ends outlive their front-end.
    await devices.waitForOutput(/rng0: front-end gone/, 10_000, "stderr");
    expect(devices.child.exitCode).toBeNull();
  }, TIMEOUT);

  test.skipIf(!HAS_NETNS)("tsvm devices keeps a tap fd it was handed (tap-fd=N) across its own restart", async () => {
    const sock = join(tempDir(), "net.sock");
    using ns = new TapNamespace(`tsvmvf${process.pid}`);
    using devices = new TsvmProcess(["devices", "--log-level", "info", "--net", `vhost=${sock},tap-fd=9`], [...ns.exec, ...withTapFd(9)]);
    // tsvm devices says it serves only once it has opened the device's tap.
    await devices.waitForOutput(/serving vhost-user/, 30_000, "stderr");
    expect(devices.stderr).not.toContain("error");
    expect(devices.child.exitCode).toBeNull();
  }, TIMEOUT);

  test.skipIf(!QSD)("qemu-storage-daemon's vhost-user-blk export passes the guest's block checks", async () => {
    const dir = tempDir();
    const disk = makeDisk(dir);
    const sock = join(dir, "qsd.sock");
    const qsd = Bun.spawn([QSD!, "--blockdev", `driver=file,node-name=disk,filename=${disk}`,
      "--export", `type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path=${sock},writable=on`], { stdout: "ignore", stderr: "pipe" });
    try {
      const deadline = Date.now() + 10_000 * TIME_SCALE;
      while (!existsSync(sock) && Date.now() < deadline && qsd.exitCode === null) await Bun.sleep(20);
      const r = await runTsvm(["run", "--vhost-user", `block,socket=${sock}`]);
      expect(r.stdout).toContain("ok   virtio-blk0:");
      expect(r.code).toBe(0);
      expect(new TextDecoder().decode(readFileSync(disk).subarray(512, 542))).toBe("written by the tsvm test guest");
    } finally {
      qsd.kill("SIGKILL");
    }
  }, TIMEOUT);

  test.skipIf(!VIRTIOFSD)("--shared-dir: the guest reads a host file and writes a new one through virtio-fs", async () => {
    const shared = tempDir();
    writeFileSync(join(shared, "hello.txt"), "hello from the host over virtio-fs");
    const r = await runTsvm(["run", "--shared-dir", `${shared}:shared`]);
    expect(r.stdout).toContain('virtio-fs tag "shared"');
    expect(r.stdout).toContain('virtio-fs read 34 of 34 bytes "hello from the host over virtio-fs"');
    expect(r.stdout).toContain("ok   virtio-fs:");
    expect(r.code).toBe(0);
    expect(readFileSync(join(shared, "from-guest.txt"), "utf8")).toBe("written by the tsvm test guest over virtio-fs\n");
  }, TIMEOUT);

  test("a back-end that dies stops the VM with one line naming it", async () => {
    const dir = tempDir();
    const sock = join(dir, "rng.sock");
    const devices = new TsvmProcess(["devices", "--log-level", "info", "--rng", `vhost=${sock}`]);
    await devices.waitForOutput(/serving vhost-user/, 30_000, "stderr");
    using vm = new TsvmProcess(["run", "--no-rng", "-p", "tsvm.mode=serve", "--vhost-user", `rng,socket=${sock}`]);
    await vm.waitForOutput(/serving/, 30_000);
    devices.child.kill("SIGKILL");
    expect(await vm.exit(20_000)).toBe(1);
    expect(vm.stderr).toMatch(new RegExp(`stopping: the vhost-user back-end of vhost-user-rng0 at ${sock} failed: (back-end channel: )?the peer closed the connection`));
  }, TIMEOUT);

  test("tsvm devices ends a device process that says READY after its start deadline, with one line naming it, exit 1", async () => {
    const sock = join(tempDir(), "rng.sock");
    const r = await runTsvm(["devices", "--rng", `vhost=${sock}`], { env: { TSVM_DEVICE_START_TIMEOUT_MS: "1" } });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/stopping: device process rng\S* \(pid \d+\) did not start within 0\.001 s/);
  }, TIMEOUT);

  test("with reconnect=true the VM waits for a back-end that died, carries on with the next, and stops cleanly", async () => {
    const dir = tempDir();
    const sock = join(dir, "rng.sock");
    const control = join(dir, "vm.sock");
    using first = new TsvmProcess(["devices", "--log-level", "info", "--rng", `vhost=${sock}`]);
    await first.waitForOutput(/serving vhost-user/, 30_000, "stderr");
    using vm = new TsvmProcess(["run", "--no-rng", "-s", control, "-p", "tsvm.mode=serve", "--vhost-user", `rng,socket=${sock},reconnect=true`]);
    await vm.waitForOutput(/serving/, 30_000);
    first.child.kill("SIGKILL");
    await vm.waitForOutput(/vhost-user-rng0 \(.*rng\.sock\): the back-end failed \((back-end channel: )?the peer closed the connection\); waiting for it to come back/, 20_000, "stderr");
    using second = new TsvmProcess(["devices", "--log-level", "info", "--rng", `vhost=${sock}`]);
    await second.waitForOutput(/serving vhost-user/, 30_000, "stderr");
    await vm.waitForOutput(/vhost-user-rng0 \(.*rng\.sock\): the back-end is back; the device carries on/, 20_000, "stderr");
    expect((await runTsvm(["stop", control])).code).toBe(0);
    expect(await vm.exit(20_000)).toBe(0);
  }, TIMEOUT);

  test("a socket nobody serves is refused with one line and exit 2", async () => {
    const r = await runTsvm(["run", "--vhost-user", `block,socket=${join(tempDir(), "nobody.sock")}`]);
    expect(r.stderr).toMatch(/failed to connect to the vhost-user back-end at .*nobody\.sock: ENOENT/);
    expect(r.code).toBe(2);
  }, TIMEOUT);

  test("a path that is not a socket, or a socket nobody listens on, is named as such", async () => {
    const dir = tempDir();
    const fifo = join(dir, "fifo.sock");
    Bun.spawnSync(["mkfifo", fifo]);
    const notSocket = await runTsvm(["run", "--vhost-user", `block,socket=${fifo}`]);
    expect([notSocket.code, notSocket.stderr]).toEqual([2, expect.stringMatching(/back-end at .*fifo\.sock: not a socket\n$/)]);
    // A socket file whose listener is gone: bound, then closed.
    const stale = join(dir, "stale.sock");
    Bun.spawnSync(["python3", "-c", `import socket; s = socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(stale)})`]);
    const refused = await runTsvm(["run", "--vhost-user", `block,socket=${stale}`]);
    expect([refused.code, refused.stderr]).toEqual([2, expect.stringMatching(/back-end at .*stale\.sock: ECONNREFUSED \(no program listens on it\)\n$/)]);
  }, TIMEOUT);
});
