// Real Linux drivers against tsvm's devices, on any machine: QEMU with TCG (no KVM needed) boots
// Debian's cloud kernel on virtio devices that `tsvm devices` serves over vhost-user, jailed.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync } from "node:fs";
import { connect, createServer, type Socket } from "node:net";
import { join, resolve } from "node:path";
import { tempDir, TIME_SCALE, TsvmProcess } from "../support/tsvm.ts";

const ROOT = resolve(import.meta.dir, "../..");
const LINUX = join(ROOT, "build/linux");
const QEMU = Bun.which("qemu-system-x86_64");
const HAS_GUEST = ["vmlinuz", "initramfs.cpio.gz", "disk.img"].every((f) => existsSync(join(LINUX, f)));
const IS_ROOT = process.getuid?.() === 0;
const READY = !!QEMU && HAS_GUEST && IS_ROOT && Bun.which("ip") !== null && Bun.which("debugfs") !== null;
if (!READY) {
  console.warn(`tsvm tests: the vhost-user Linux tests need root, qemu-system-x86_64, ip, debugfs and build/linux (bash scripts/build_linux_guest.sh); skipped`);
}

const TIMEOUT = 180_000 * TIME_SCALE;
const HOST_IP = "10.0.2.1";
const GUEST_IP = "10.0.2.15/24";

/** Runs a command, throwing with its stderr when it fails. */
function sh(...cmd: string[]): string {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")} failed: ${r.stderr.toString()}`);
  return r.stdout.toString();
}

/** The QEMU command that boots the Linux guest under TCG (`cpus` vCPUs) with the vhost-user devices in `devices`. */
function qemuCommand(devices: readonly string[], append: string, cpus: number): string[] {
  return [
    QEMU!, "-accel", "tcg", "-cpu", "max", "-smp", String(cpus), "-m", "512", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
    "-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem",
    ...devices, "-kernel", join(LINUX, "vmlinuz"), "-initrd", join(LINUX, "initramfs.cpio.gz"),
    "-append", `console=ttyS0 reboot=k panic=-1 ${append}`,
  ];
}

/** Boots the Linux guest; resolves to its console output once it has rebooted. */
async function bootLinux(devices: readonly string[], append: string, cpus = 1): Promise<string> {
  const qemu = Bun.spawn(qemuCommand(devices, append, cpus), { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const timer = setTimeout(() => qemu.kill("SIGKILL"), TIMEOUT - 10_000);
  const [out, err] = await Promise.all([new Response(qemu.stdout).text(), new Response(qemu.stderr).text()]);
  await qemu.exited;
  clearTimeout(timer);
  return `${out}\n${err}`;
}

describe.skipIf(!READY)("Linux's virtio drivers against tsvm devices (QEMU TCG front-end)", () => {
  const ns = `tsvmvu${process.pid}`;
  beforeAll(() => {
    sh("ip", "netns", "add", ns);
    sh("ip", "netns", "exec", ns, "ip", "tuntap", "add", "dev", "tap0", "mode", "tap");
    sh("ip", "netns", "exec", ns, "ip", "addr", "add", `${HOST_IP}/24`, "dev", "tap0");
    sh("ip", "netns", "exec", ns, "ip", "link", "set", "tap0", "up");
  });
  afterAll(() => {
    Bun.spawnSync(["ip", "netns", "del", ns]);
  });

  test("virtio-blk with two queues, virtio-rng and virtio-net: mount and write ext4, read /dev/hwrng, ping the host", async () => {
    const dir = tempDir();
    const disk = join(dir, "disk.img");
    copyFileSync(join(LINUX, "disk.img"), disk);
    const sock = (name: string): string => join(dir, `${name}.sock`);
    // `tsvm devices` runs in the namespace that holds the tap; QEMU reaches it by the socket paths.
    using devices = new TsvmProcess([
      "devices", "--log-level", "info", "--block", `vhost=${sock("blk")},path=${disk}`, "--rng", `vhost=${sock("rng")}`,
      "--net", `vhost=${sock("net")},tap-name=tap0`,
    ], ["ip", "netns", "exec", ns]);
    await devices.waitForOutput(/rng0: serving vhost-user/, 30_000, "stderr");
    const out = await bootLinux([
      // Two vCPUs and two request queues: Linux's virtio_blk negotiates VIRTIO_BLK_F_MQ.
      "-chardev", `socket,id=blk,path=${sock("blk")}`, "-device", "vhost-user-blk-pci,chardev=blk,num-queues=2",
      "-chardev", `socket,id=rng,path=${sock("rng")}`, "-device", "vhost-user-rng-pci,chardev=rng",
      // MSI-X with -netdev vhost-user crashes QEMU 7.2 under TCG: INTx (vectors=0) works.
      "-chardev", `socket,id=net,path=${sock("net")}`, "-netdev", "vhost-user,id=n0,chardev=net",
      "-device", "virtio-net-pci,netdev=n0,vectors=0,mac=52:54:00:12:34:56",
    ], `tsvm.write=written-by-linux tsvm.ip=${GUEST_IP} tsvm.ping=${HOST_IP}`, 2);
    // On a failure, say what the devices logged too (a dropped front-end names its reason there).
    if (!out.includes("result done")) expect({ out, devices: devices.stderr }).toEqual({ out: "(the guest reached 'result done')", devices: "" });
    expect(out).toContain("result blk: ok (wrote /written.txt)");
    expect(out).toContain("result blk queues: 0 1");
    expect(out).toContain("result rng: ok");
    expect(out).toContain(`result net: ok (ping ${HOST_IP})`);
    expect(out).toContain("result done");
    expect(sh("debugfs", "-R", "cat /written.txt", disk).trim()).toBe("written-by-linux");
    // The device processes outlive their front-end and wait for the next one, until SIGTERM.
    await devices.waitForOutput(/block0: front-end gone \(the peer closed the connection\); waiting for the next one/, 10_000, "stderr");
    expect(devices.child.exitCode).toBeNull();
    devices.child.kill("SIGTERM");
    expect(await devices.exit(10_000)).toBe(0);
    expect(existsSync(sock("blk"))).toBe(false);
  }, TIMEOUT);

  test("virtio-blk with o_direct=true (small requests through io_submit, in batches): Linux mounts and writes ext4", async () => {
    const dir = tempDir();
    const disk = join(dir, "disk.img");
    copyFileSync(join(LINUX, "disk.img"), disk);
    const blk = join(dir, "blk.sock");
    using devices = new TsvmProcess(["devices", "--log-level", "info", "--block", `vhost=${blk},path=${disk},o_direct=true`]);
    await devices.waitForOutput(/block0: serving vhost-user|does not support O_DIRECT/, 30_000, "stderr");
    if (/does not support O_DIRECT/.test(devices.stderr)) return console.warn("skipping: the temporary directory does not support O_DIRECT");
    const out = await bootLinux(["-chardev", `socket,id=blk,path=${blk}`, "-device", "vhost-user-blk-pci,chardev=blk,num-queues=1"], "tsvm.write=written-directly");
    if (!out.includes("result done")) expect({ out, devices: devices.stderr }).toEqual({ out: "(the guest reached 'result done')", devices: "" });
    expect(out).toContain("result blk: ok (wrote /written.txt)");
    devices.child.kill("SIGTERM");
    expect(await devices.exit(10_000)).toBe(0);
    expect(sh("debugfs", "-R", "cat /written.txt", disk).trim()).toBe("written-directly");
  }, TIMEOUT);

  test("virtio-vsock: Linux's vsock driver connects to a host program and accepts one, through tsvm devices --vsock", async () => {
    const dir = tempDir();
    const vhost = join(dir, "vsock.vhost");
    const uds = join(dir, "v.sock");
    // The host program the guest connects to (port 5000): answers whatever it is sent.
    const server = createServer((socket: Socket) => socket.once("data", (chunk: Buffer) => socket.end(`hello from the host, you said: ${chunk}`)));
    server.listen(`${uds}_5000`);
    using devices = new TsvmProcess(["devices", "--log-level", "info", "--vsock", `vhost=${vhost},cid=3,uds=${uds}`]);
    try {
      await devices.waitForOutput(/vsock0: serving vhost-user/, 30_000, "stderr");
      const qemu = Bun.spawn(qemuCommand(["-chardev", `socket,id=vs,path=${vhost}`, "-device", "vhost-user-vsock-pci,chardev=vs"], "tsvm.vsock=1", 1),
        { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
      const timer = setTimeout(() => qemu.kill("SIGKILL"), TIMEOUT - 10_000);
      let out = "";
      const reader = (qemu.stdout as ReadableStream<Uint8Array>).getReader();
      const decoder = new TextDecoder();
      const until = async (pattern: RegExp): Promise<void> => {
        while (!pattern.test(out)) {
          const { value, done } = await reader.read();
          if (done) return;
          out += decoder.decode(value);
        }
      };
      // Once the guest listens on port 1234, a host program asks for it through the Unix socket.
      await until(/vsock listening on port 1234/);
      const echoed = await new Promise<string>((resolveEcho, reject) => {
        const socket = connect({ path: uds });
        let text = "";
        socket.on("error", reject);
        socket.on("connect", () => socket.write("CONNECT 1234\n"));
        socket.on("data", (chunk: Buffer) => {
          text += chunk.toString();
          if (/^OK \d+\n$/.test(text)) socket.write("ping from the host");
          else if (text.includes("ping from the host")) {
            socket.end();
            resolveEcho(text);
          }
        });
      });
      expect(echoed).toMatch(/^OK \d+\nping from the host$/);
      await until(/result done/);
      qemu.kill("SIGTERM");
      await qemu.exited;
      clearTimeout(timer);
      expect(out).toContain("vsock reply: hello from the host, you said: hello from linux over vsock");
      expect(out).toContain("result vsock connect: ok");
      expect(out).toContain("vsock echoed 18 bytes");
      expect(out).toContain("result vsock accept: ok");
    } finally {
      server.close();
    }
  }, TIMEOUT);
});
