import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { sys } from "../../ffi/mod.ts";
import { OutputRelay, StreamOutput } from "../../src/base/stream_output.ts";
import { TestLoop } from "../support/vhost_user_driver.ts";

const O_NONBLOCK = 0o4000;
const F_SETPIPE_SZ = 1031;
const FIONREAD = 0x541b;

/** A pipe: [read end, write end]. */
function pipe(nonBlocking: boolean, size?: number): [number, number] {
  const [r, w] = sys.pipe();
  if (nonBlocking) {
    sys.addFileFlags(r, O_NONBLOCK);
    sys.addFileFlags(w, O_NONBLOCK);
  }
  if (size !== undefined) sys.fcntlIntRaw(w, F_SETPIPE_SZ, size);
  return [r, w];
}

function queued(fd: number): number {
  const n = new Int32Array(1);
  sys.ioctlPtr(fd, FIONREAD, n);
  return n[0]!;
}

function readAll(fd: number): number[] {
  const out: number[] = [];
  const buffer = new Uint8Array(65536);
  for (let n = sys.readRaw(fd, buffer); n > 0; n = sys.readRaw(fd, buffer)) out.push(...buffer.subarray(0, n));
  return out;
}

describe("StreamOutput", () => {
  test("a full non-blocking output takes what fits and then 0; a reader that is gone makes it broken", () => {
    const [r, w] = pipe(true, 4096);
    const out = new StreamOutput(w, true);
    expect(out.write(new Uint8Array(3000))).toBe(3000);
    expect(out.write(new Uint8Array(3000))).toBe(0); // up to PIPE_BUF, a pipe write is all or nothing
    expect(out.write(new Uint8Array(1096))).toBe(1096);
    expect(out.write(new Uint8Array(10))).toBe(0);
    sys.close(r);
    expect(out.write(new Uint8Array(10))).toBe("broken");
    out.close();
  });

  test("stdout that is a pipe is reopened as a non-blocking description of its own; fd 1 stays blocking", () => {
    const [r, w] = pipe(false);
    const child = Bun.spawnSync([process.execPath, join(import.meta.dir, "../support/stdout_probe.ts")], { stdout: w, stderr: "pipe" });
    sys.close(w);
    const report = JSON.parse(new TextDecoder().decode(child.stderr)) as { fd: number; stdout: boolean; fd1Flags: number; ownFlags: number };
    expect(report.fd).not.toBe(1);
    expect(report.stdout).toBe(true);
    expect([report.fd1Flags & O_NONBLOCK, report.ownFlags & O_NONBLOCK]).toEqual([0, O_NONBLOCK]);
    expect(new TextDecoder().decode(Uint8Array.from(readAll(r)))).toBe("through the reopened stdout\n");
    sys.close(r);
  });
});

describe("OutputRelay", () => {
  test("copies a device's pipe to the output only as fast as the output takes it, in order", () => {
    const [deviceRead, deviceWrite] = pipe(true);
    const [outRead, outWrite] = pipe(true, 4096);
    const loop = new TestLoop();
    const relay = new OutputRelay(loop, deviceRead, new StreamOutput(outWrite, true));
    const sent = Uint8Array.from({ length: 20_000 }, (_, i) => (i * 7) & 0xff);
    expect(sys.writeRaw(deviceWrite, sent)).toBe(sent.byteLength);
    const got: number[] = [];
    for (let round = 0; round < 20 && got.length < sent.byteLength; round++) {
      loop.pump();
      // The output is full, the relay holds one chunk, and the rest waits in the device's pipe.
      if (got.length + 2 * 4096 < sent.byteLength) expect([queued(outRead), queued(deviceRead) > 0]).toEqual([4096, true]);
      got.push(...readAll(outRead));
    }
    expect(Uint8Array.from(got)).toEqual(sent);
    relay.close();
    sys.close(deviceWrite);
    sys.close(outRead);
    sys.close(outWrite);
  });

  test("an output whose reader is gone: the device's bytes are read and dropped, so the device never waits", () => {
    const [deviceRead, deviceWrite] = pipe(true);
    const [outRead, outWrite] = pipe(true, 4096);
    sys.close(outRead);
    const loop = new TestLoop();
    const relay = new OutputRelay(loop, deviceRead, new StreamOutput(outWrite, true));
    for (let i = 0; i < 8; i++) {
      expect(sys.writeRaw(deviceWrite, new Uint8Array(16_384))).toBe(16_384);
      loop.pump();
      expect(queued(deviceRead)).toBe(0);
    }
    relay.close();
    sys.close(deviceWrite);
    sys.close(outWrite);
  });
});
