// Ceilings on what a jailed device process keeps in memory, after start-up and after serving
// requests, and a check that serving more does not keep more: what a device process loads or
// leaks shows in CI. The devices are served by `tsvm devices` (jailed as under `tsvm run`) and
// driven over vhost-user; no KVM needed.
import { afterEach, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { socket } from "../../../ffi/mod.ts";
import { guestAddress as ga } from "../../../src/memory/mod.ts";
import { childPids, privateDirtyKib, writeBack } from "../../support/process_memory.ts";
import { tempDir, TIME_SCALE, TsvmProcess } from "../../support/tsvm.ts";
import { BUFFER_BASE, TestFrontend } from "../../support/vhost_user_driver.ts";

/** Private dirty memory of one device process once it has served its first request (block 4.0-4.3 MiB, rng 3.5-3.6 measured). */
const STARTED_CEILING_KIB = 5.5 * 1024;
/** ... after the warm-up rounds: the JIT has compiled the hot paths by then (block 6.1-7.0 MiB, rng 4.1-4.3 measured). */
const SERVING_CEILING_KIB = 8.5 * 1024;
/**
 * `tsvm devices` itself, the program its CLI handed off to (vmm/hand_off.ts): 4.3 MiB measured with
 * one device, 11.7 MiB when it still kept yargs and the policy compiler.
 */
const SERVER_CEILING_KIB = 7 * 1024;
/** What twice as many rounds again may add: a leak of 256 bytes per block request would exceed it. */
const LEAK_KIB = 1024;
const WARM_UP_ROUNDS = 1000;
const MORE_ROUNDS = 2000;
const VERSION_1 = 1n << 32n;
const VIRTIO_BLK_T_IN = 0;
const VIRTIO_BLK_T_OUT = 1;
const VIRTIO_BLK_S_OK = 0;

const cleanup: (() => void)[] = [];
afterEach(() => {
  while (cleanup.length > 0) cleanup.pop()!();
});

/** Waits until queue 0 of `frontend` has used `count` buffers in all. */
function usedReaches(frontend: TestFrontend, count: number): void {
  const deadline = performance.now() + 10_000 * TIME_SCALE;
  while (frontend.used(0).idx !== (count & 0xffff)) {
    if (performance.now() > deadline) throw new Error(`the device used ${frontend.used(0).idx} buffers, not ${count}`);
    socket.waitReadable(frontend.calls[0]!.fd, 10);
    frontend.calls[0]!.read();
  }
}

const IS_ROOT = process.getuid?.() === 0;
/** The ceilings are the built executable's: run from the sources, Bun's transpiler keeps ~12 MiB more. */
const BUILT = process.env.TSVM_BIN !== undefined && process.env.TSVM_BIN !== "";
if (!IS_ROOT) console.warn("tsvm tests: not root, so no jailed device processes; the device memory test is skipped");
else if (!BUILT) console.warn("tsvm tests: TSVM_BIN is not set (npm test sets it); device memory is held to no ceiling, only to keeping nothing per request");

describe("device process memory", () => {
  test.skipIf(!IS_ROOT)("a jailed block and rng device stay under their ceilings and keep nothing per request", async () => {
    if (BUILT) writeBack(process.env.TSVM_BIN!); // else its code counts as the devices' own memory
    const dir = tempDir();
    const image = join(dir, "disk.img");
    writeFileSync(image, new Uint8Array(1 << 20));
    const sockets = { block: join(dir, "blk.sock"), rng: join(dir, "rng.sock") };
    const devices = new TsvmProcess(["devices", "--log-level", "info", "--block", `vhost=${sockets.block},path=${image}`, "--rng", `vhost=${sockets.rng}`]);
    cleanup.push(() => devices[Symbol.dispose]());
    await devices.waitForOutput((text) => (text.match(/serving vhost-user/g) ?? []).length === 2, 20_000, "stderr");
    const connect = (path: string): TestFrontend => {
      const fd = socket.unixConnect(path, socket.SOCK_STREAM);
      if (fd < 0) throw new Error(`failed to connect to ${path}`);
      const frontend = new TestFrontend(fd);
      cleanup.push(() => frontend.close());
      frontend.start(1, VERSION_1);
      return frontend;
    };
    const block = connect(sockets.block);
    const rng = connect(sockets.rng);

    const header = BUFFER_BASE;
    const data = BUFFER_BASE + 0x1000;
    const status = BUFFER_BASE + 0x3000;
    let blockRequests = 0;
    let rounds = 0;
    /** Rounds of a 4 KiB block write, a read of the same sectors back, and a 4 KiB rng buffer. */
    const serve = (count: number): void => {
      for (const end = rounds + count; rounds < end; rounds++) {
        for (const type of [VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_IN]) {
          block.memory.writeU32(ga(header), type);
          block.memory.writeU64(ga(header + 8), BigInt((rounds % 256) * 8));
          block.memory.writeU8(ga(status), 0xff);
          block.postChain(0, [{ addr: header, len: 16, write: false }, { addr: data, len: 4096, write: type === VIRTIO_BLK_T_IN }, { addr: status, len: 1, write: true }]);
          usedReaches(block, ++blockRequests);
          if (block.memory.readU8(ga(status)) !== VIRTIO_BLK_S_OK) throw new Error(`block request ${blockRequests} failed`);
        }
        rng.postWritable(0, 4096);
        usedReaches(rng, rounds + 1);
      }
    };

    serve(1); // both devices are up and have served once
    const pids = childPids(devices.child.pid);
    expect(pids).toHaveLength(2);
    const measure = (): number[] => pids.map((pid) => privateDirtyKib(pid));
    const started = measure();
    serve(WARM_UP_ROUNDS - 1);
    const warm = measure();
    serve(MORE_ROUNDS);
    const later = measure();
    const server = privateDirtyKib(devices.child.pid);
    const report = `KiB per device process: started ${started.join(", ")}; after ${WARM_UP_ROUNDS} rounds ${warm.join(", ")}; after ${rounds} ${later.join(", ")}; tsvm devices itself ${server}`;
    const over = [
      ...(BUILT && server > SERVER_CEILING_KIB ? ["server"] : []),
      ...started.filter((kib) => BUILT && kib > STARTED_CEILING_KIB).map(() => "started"),
      ...[...warm, ...later].filter((kib) => BUILT && kib > SERVING_CEILING_KIB).map(() => "serving"),
      ...later.filter((kib, i) => kib - warm[i]! > LEAK_KIB).map(() => "grew"),
    ];
    console.log(report);
    expect({ report, over }).toEqual({ report, over: [] });
  }, 120_000);
});
