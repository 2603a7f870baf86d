import { describe, expect, test } from "bun:test";
import { sys } from "../../ffi/mod.ts";
import { FdOutput } from "../../src/base/fd_output.ts";

const O_NONBLOCK = 0o4000;

describe("FdOutput", () => {
  test("writes every byte, across short writes", () => {
    const [readFd, writeFd] = sys.pipe();
    try {
      const bytes = Uint8Array.from({ length: 1000 }, (_, i) => i & 0xff);
      new FdOutput(writeFd, false).write(bytes);
      const got = new Uint8Array(2000);
      expect(sys.readRaw(readFd, got)).toBe(1000);
      expect(got.subarray(0, 1000)).toEqual(bytes);
    } finally {
      sys.close(readFd);
      sys.close(writeFd);
    }
  });

  test("a reader that stops reading holds the writer, which waits (not spins) and drops the rest once told to", () => {
    const [readFd, writeFd] = sys.pipe();
    sys.addFileFlags(writeFd, O_NONBLOCK);
    try {
      let asked = 0;
      const started = performance.now();
      // Far more than a pipe holds (64 KiB): the writer must wait; the fourth time it is asked, it gives up.
      new FdOutput(writeFd, false, () => ++asked > 3).write(new Uint8Array(1 << 20));
      const elapsed = performance.now() - started;
      expect(asked).toBe(4);
      expect(elapsed).toBeGreaterThan(250); // three waits of 100 ms on the full pipe, not a busy loop
      expect(elapsed).toBeLessThan(5_000);
    } finally {
      sys.close(readFd);
      sys.close(writeFd);
    }
  });

  test("a closed reader ends the write at once (EPIPE is dropped, the guest keeps running)", () => {
    const [readFd, writeFd] = sys.pipe();
    sys.close(readFd);
    try {
      new FdOutput(writeFd, false, () => {
        throw new Error("asked to abandon on an error that is not a wait");
      }).write(new Uint8Array(10));
    } finally {
      sys.close(writeFd);
    }
  });
});
