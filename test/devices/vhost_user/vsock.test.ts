// tsvm's vsock as a vhost-user back-end (`tsvm devices --vsock`), driven through tsvm's own
// front-end by a test driver: both directions of connection set-up and data, no KVM needed.
import { afterEach, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { socket, sys } from "../../../ffi/mod.ts";
import { listenUnix } from "../../../src/base/unix_listener.ts";
import { DEVICE_TYPES } from "../../../src/devices/vhost_user/device_types.ts";
import { VhostUserFrontend } from "../../../src/devices/vhost_user/frontend.ts";
import { VSOCK_OP } from "../../../src/devices/virtio/vsock/packet.ts";
import { tempDir, TsvmProcess } from "../../support/tsvm.ts";
import { TestLoop } from "../../support/vhost_user_driver.ts";
import { VsockDriver } from "../../support/vsock_driver.ts";

const SANDBOX = process.getuid?.() === 0 ? [] : ["--disable-sandbox"];
const cleanup: (() => void)[] = [];
afterEach(() => {
  while (cleanup.length > 0) cleanup.pop()!();
});

/** Reads from a blocking host socket until `expected` bytes came (or 5 s passed). */
function readSome(fd: number, expected: number): string {
  let out = "";
  const buf = new Uint8Array(4096);
  const deadline = performance.now() + 5000;
  while (out.length < expected && performance.now() < deadline) {
    if (socket.poll(fd, socket.POLLIN, 100) <= 0) continue;
    const n = sys.readRaw(fd, buf);
    if (n <= 0) break;
    out += new TextDecoder().decode(buf.subarray(0, n));
  }
  return out;
}

describe("tsvm devices --vsock", () => {
  test("serves virtio-vsock over vhost-user: the CID from its configuration, connections both ways", async () => {
    const dir = tempDir();
    const vhost = join(dir, "vsock.vhost");
    const uds = join(dir, "v.sock");
    const devices = new TsvmProcess(["devices", ...SANDBOX, "--log-level", "info", "--vsock", `vhost=${vhost},cid=7,uds=${uds}`]);
    cleanup.push(() => devices[Symbol.dispose]());
    await devices.waitForOutput(/serving vhost-user/, 20_000, "stderr");
    const loop = new TestLoop();
    const failures: string[] = [];
    const fd = socket.unixConnect(vhost, socket.SOCK_STREAM);
    expect(fd).toBeGreaterThanOrEqual(0);
    const frontend = VhostUserFrontend.connect(fd, { label: "vsock", type: DEVICE_TYPES.vsock, loop, timeoutMs: 5000, onFailure: (r) => failures.push(r) });
    if (!frontend.ok) throw new Error(frontend.error);
    cleanup.push(() => frontend.value.close());
    const d = new VsockDriver({ cid: 7, device: frontend.value, loop });
    cleanup.push(() => d.close());
    expect(d.pci.read(0x2000, 4)).toBe(7); // guest_cid, from the back-end's GET_CONFIG

    // A host program asks for guest port 1234.
    const program = socket.unixConnect(uds, socket.SOCK_STREAM);
    expect(program).toBeGreaterThanOrEqual(0);
    cleanup.push(() => sys.close(program));
    sys.writeRaw(program, new TextEncoder().encode("CONNECT 1234\n"));
    const [request] = await d.receiveUntil((all) => all.length > 0, 10_000);
    expect([request?.header.op, request?.header.dstPort, request?.header.dstCid]).toEqual([VSOCK_OP.REQUEST, 1234, 7]);
    d.send({ op: VSOCK_OP.RESPONSE, srcCid: 7, srcPort: 1234, dstPort: request!.header.srcPort });
    expect(readSome(program, 12)).toBe(`OK ${request!.header.srcPort}\n`);
    sys.writeRaw(program, new TextEncoder().encode("hello"));
    const data = await d.receiveUntil((all) => all.some((p) => p.header.op === VSOCK_OP.RW), 10_000);
    expect(new TextDecoder().decode(data.find((p) => p.header.op === VSOCK_OP.RW)!.payload)).toBe("hello");

    // The guest connects to host port 5000, where a program listens on uds_5000.
    const listening = listenUnix(`${uds}_5000`, socket.SOCK_STREAM, "test");
    if (!listening.ok) throw new Error(listening.error);
    cleanup.push(() => sys.close(listening.value));
    d.send({ op: VSOCK_OP.REQUEST, srcCid: 7, srcPort: 40000, dstPort: 5000 });
    const response = await d.receiveUntil((all) => all.length > 0, 10_000);
    expect(response.map((p) => p.header.op)).toEqual([VSOCK_OP.RESPONSE]);
    expect(socket.poll(listening.value, socket.POLLIN, 5000)).toBeGreaterThan(0);
    const accepted = socket.accept(listening.value);
    expect(accepted).toBeGreaterThanOrEqual(0);
    cleanup.push(() => sys.close(accepted));
    d.send({ op: VSOCK_OP.RW, srcCid: 7, srcPort: 40000, dstPort: 5000 }, new TextEncoder().encode("from the guest"));
    expect(readSome(accepted, 14)).toBe("from the guest");
    expect(failures).toEqual([]);
  }, 60_000);
});
