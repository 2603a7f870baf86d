// virtio-vsock under real KVM with the test guest's driver: Firecracker's host side (a Unix socket
// and CONNECT lines; uds_PORT for the guest's connections), in a jailed device and in-process.
import { describe, expect, test } from "bun:test";
import { createServer, connect, type Socket } from "node:net";
import { join } from "node:path";
import { HAS_KVM, runTsvm, tempDir, TIME_SCALE, TsvmProcess, within } from "../support/tsvm.ts";

const TIMEOUT = 120_000 * TIME_SCALE;
const MIB = 1024 * 1024;

/** The guest's 1 MiB (test/guest/virtio.c vsock_pattern) and the host's answer. */
const guestByte = (i: number): number => (i * 7 + (i >> 11)) & 0xff;
const hostData = Uint8Array.from({ length: MIB }, (_, i) => (i * 13 + (i >> 9)) & 0xff);
/**
 * The guest's checksum (test/guest/virtio.c vs_checksum): over the bytes as little-endian 32-bit
 * words, the last one padded with zeros, a = the sum of the words and b = the sum of a's running
 * values, both mod 2^32; printed as b:a in one 64-bit hex number.
 */
function checksum(bytes: Uint8Array): string {
  const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
  padded.set(bytes);
  const words = new DataView(padded.buffer);
  let a = 0;
  let b = 0;
  for (let i = 0; i < padded.byteLength; i += 4) {
    a = (a + words.getUint32(i, true)) >>> 0;
    b = (b + a) >>> 0;
  }
  return ((BigInt(b) << 32n) | BigInt(a)).toString(16);
}

/**
 * Resolves once the guest has stopped sending on its connection: the bytes the device took from it
 * (vsock_stats) stay the same for half a second. With the host reader stalled, that is the guest
 * waiting for credit (1 MiB does not fit in the device's 256 KiB and the socket's buffer).
 */
async function guestHeldBack(control: string): Promise<void> {
  let last = -1;
  for (let i = 0; i < 120 * TIME_SCALE; i++) {
    const stats = await runTsvm(["vsock_stats", control]);
    const now = (JSON.parse(stats.stdout) as { bytes_from_guest: number }).bytes_from_guest;
    if (now === last) return;
    last = now;
    await Bun.sleep(500);
  }
}

/**
 * Listens on `path` for the guest's connection: stalls after the first chunk until the guest is held
 * back by credit (however fast or slow the guest is), then reads slowly; checks the 1 MiB and
 * answers with hostData.
 */
function slowHostListener(path: string, control: string): { received: Promise<string>; close: () => void } {
  let report: (result: string) => void = () => {};
  const received = new Promise<string>((resolve) => (report = resolve));
  const server = createServer((socket: Socket) => {
    let count = 0;
    let bad = -1;
    // A connection tsvm closes with our data unread (after the guest gave up) resets: the test then
    // fails on the guest's own line, not on an unhandled socket error.
    socket.on("error", () => {});
    socket.on("data", (chunk: Buffer) => {
      for (let i = 0; i < chunk.byteLength; i++) if (bad < 0 && chunk[i] !== guestByte(count + i)) bad = count + i;
      count += chunk.byteLength;
      // A reader that stalls once: the host socket and the device's buffer fill, and the guest must
      // wait for credit; then a slow one.
      socket.pause();
      if (count === chunk.byteLength) void guestHeldBack(control).then(() => socket.resume());
      else setTimeout(() => socket.resume(), 2);
      if (count >= MIB) {
        report(bad < 0 ? `ok ${count}` : `bad byte at ${bad}`);
        socket.write(hostData);
      }
    });
  });
  server.listen(path);
  return { received, close: () => server.close() };
}

/** Connects to guest port `port` through `uds`; resolves with the connection's first line and its socket. */
function connectToGuest(uds: string, port: number): Promise<{ line: string; socket: Socket }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ path: uds });
    let text = "";
    socket.on("error", reject);
    socket.on("connect", () => socket.write(`CONNECT ${port}\n`));
    const onData = (chunk: Buffer): void => {
      text += chunk.toString();
      if (!text.includes("\n")) return;
      socket.off("data", onData);
      resolve({ line: text.slice(0, text.indexOf("\n") + 1), socket });
    };
    socket.on("data", onData);
  });
}

describe.skipIf(!HAS_KVM)("virtio-vsock under the test guest", () => {
  for (const home of ["a jailed device process", "tsvm itself (--disable-sandbox)"]) {
    // The jailed device serves two exchanges (tsvm.vsock=2, the benchmark's form), one connection each.
    const exchanges = home.includes("disable") ? 1 : 2;
    test(`in ${home}: a host program reaches the guest's port, the guest reaches a host listener, 1 MiB each way within credit (${exchanges}×)`, async () => {
      const dir = tempDir();
      const uds = join(dir, "v.sock");
      const control = join(dir, "vm.sock");
      const listener = slowHostListener(`${uds}_5000`, control);
      try {
        using vm = new TsvmProcess([
          "run", ...(home.includes("disable") ? ["--disable-sandbox"] : []), "-s", control, "-p", `tsvm.vsock=${exchanges} tsvm.mode=serve`,
          "--vsock", `cid=3,uds=${uds}`,
        ]);
        await vm.waitForOutput(/virtio-vsock listening on port 1234/, 60_000);
        const { line, socket } = await within(connectToGuest(uds, 1234), 30_000, "answer to CONNECT 1234", vm);
        expect(line).toMatch(/^OK \d+\n$/);
        const echoed = new Promise<string>((resolve) => socket.once("data", (chunk: Buffer) => resolve(chunk.toString())));
        socket.write("ping from the host");
        expect(await within(echoed, 30_000, "echo from guest port 1234", vm)).toBe("ping from the host");
        socket.end();
        expect(await within(listener.received, 60_000, "1 MiB from the guest at the host listener", vm)).toBe(`ok ${MIB}`);
        // The whole line, not a prefix of its checksum still being written.
        await vm.waitForOutput(/virtio-vsock received 1048576 bytes checksum 0x[0-9a-f]+\r?\n/, 60_000);
        expect(vm.stdout).toContain(`virtio-vsock received 1048576 bytes checksum 0x${checksum(hostData)}`);
        expect(vm.stdout).toMatch(/virtio-vsock sent 1048576 bytes, waited for credit [1-9]\d* times/);
        // The guest then shuts the connection down and waits for the host's reset before its verdict.
        await vm.waitForOutput(/(ok|FAIL) +virtio-vsock:/, 60_000);
        expect(vm.stdout).toContain("ok   virtio-vsock:");
        await vm.waitForOutput(/serving/, 30_000);
        const stats = await runTsvm(["vsock_stats", control]);
        // Each exchange checked its checksum (the guest's verdict above needs every one right).
        expect(vm.stdout.split(`virtio-vsock received 1048576 bytes checksum 0x${checksum(hostData)}`).length - 1).toBe(exchanges);
        expect(JSON.parse(stats.stdout)).toMatchObject({ cid: 3, host_initiated: 1, guest_initiated: 1 + exchanges, refused: 1 });
        const counts = JSON.parse(stats.stdout) as { bytes_to_guest: number; bytes_from_guest: number };
        expect(counts.bytes_to_guest).toBe(exchanges * MIB + 18);
        expect(counts.bytes_from_guest).toBe(exchanges * MIB + 18);
        expect((await runTsvm(["stop", control])).code).toBe(0);
        expect(await vm.exit(20_000)).toBe(0);
      } finally {
        listener.close();
      }
    }, TIMEOUT);
  }

  test("without tsvm.vsock=1 the guest checks the CID and the reset for an unserved port", async () => {
    const r = await runTsvm(["run", "--vsock", `cid=42,uds=${join(tempDir(), "v.sock")}`]);
    expect(r.stdout).toContain("virtio-vsock cid 42");
    expect(r.stdout).toContain("ok   virtio-vsock: CID from config space; a connection to a port nobody serves is reset");
    expect(r.code).toBe(0);
  }, TIMEOUT);
});
