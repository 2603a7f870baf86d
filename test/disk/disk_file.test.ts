// Raw images: a request's scatter list goes to the file in one preadv/pwritev, short reads at the end
// of the file give zeros, and lists longer than the kernel's iovec limit still work.
import { describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DiskFile } from "../../src/disk/disk_file.ts";
import { sys } from "../../ffi/mod.ts";
import { tempDir } from "../support/tsvm.ts";

function pattern(length: number, seed: number): Uint8Array<ArrayBuffer> {
  return Uint8Array.from({ length }, (_, i) => (i * 31 + seed) & 0xff);
}

/** Read and write system calls this thread has made so far (/proc/thread-self/io: syscr, syscw). */
function ioCalls(): { reads: number; writes: number } {
  const text = readFileSync("/proc/thread-self/io", "utf8");
  const field = (name: string): number => Number(new RegExp(`^${name}: (\\d+)$`, "m").exec(text)![1]);
  return { reads: field("syscr"), writes: field("syscw") };
}

/** Read calls that reading /proc/thread-self/io itself counts between two ioCalls(). */
function readsOfIoCalls(): number {
  const a = ioCalls();
  return ioCalls().reads - a.reads;
}

function image(bytes: Uint8Array): string {
  const path = join(tempDir(), "disk.img");
  writeFileSync(path, bytes);
  return path;
}

describe("DiskFile scatter lists", () => {
  test("a write of three segments lands in order, in one system call", () => {
    const path = image(new Uint8Array(16384));
    using disk = DiskFile.open(path, false);
    const segments = [pattern(100, 1), new Uint8Array(0), pattern(5000, 2), pattern(7, 3)];
    const before = ioCalls();
    expect(disk.writeFrom(segments, 10)).toBe(true);
    expect(ioCalls().writes - before.writes).toBe(1);
    const file = readFileSync(path);
    let at = 10;
    for (const s of segments) {
      expect(file.subarray(at, at + s.byteLength)).toEqual(Buffer.from(s));
      at += s.byteLength;
    }
    expect(file.subarray(0, 10).every((b) => b === 0)).toBe(true);
    expect(file[at]).toBe(0);
  });

  test("a read of three segments fills them in order, in one system call", () => {
    const data = pattern(16384, 9);
    using disk = DiskFile.open(image(data), true);
    const segments = [new Uint8Array(512), new Uint8Array(3000), new Uint8Array(1)];
    const own = readsOfIoCalls();
    const before = ioCalls();
    expect(disk.readInto(segments, 700)).toBe(true);
    expect(ioCalls().reads - before.reads - own).toBe(1);
    expect(Buffer.concat(segments).equals(Buffer.from(data.subarray(700, 700 + 3513)))).toBe(true);
  });

  test("segments past the end of the file read as zeros, including one the end cuts in two", () => {
    const data = pattern(6000, 4);
    using disk = DiskFile.open(image(data), true);
    const segments = [new Uint8Array(1000).fill(0xee), new Uint8Array(4096).fill(0xee), new Uint8Array(512).fill(0xee)];
    expect(disk.readInto(segments, 4000)).toBe(true);
    expect(segments[0]!).toEqual(data.subarray(4000, 5000));
    expect(segments[1]!.subarray(0, 1000)).toEqual(data.subarray(5000, 6000));
    expect(segments[1]!.subarray(1000).every((b) => b === 0)).toBe(true);
    expect(segments[2]!.every((b) => b === 0)).toBe(true);
  });

  test("more segments than one preadv takes (1024) are still all read and written", () => {
    const path = image(new Uint8Array(4096));
    using disk = DiskFile.open(path, false);
    const bytes = pattern(1500, 5);
    const segments = Array.from({ length: 1500 }, (_, i) => bytes.subarray(i, i + 1));
    expect(disk.writeFrom(segments, 100)).toBe(true);
    expect(readFileSync(path).subarray(100, 1600).equals(bytes)).toBe(true);
    const back = Array.from({ length: 1500 }, () => new Uint8Array(1));
    expect(disk.readInto(back, 100)).toBe(true);
    expect(Buffer.concat(back).equals(Buffer.from(bytes))).toBe(true);
  });

  test("a read-only image refuses a scatter write and the file is untouched", () => {
    const data = pattern(4096, 6);
    const path = image(data);
    using disk = DiskFile.open(path, true);
    expect(disk.writeFrom([new Uint8Array(10), new Uint8Array(10)], 0)).toBe(false);
    expect(readFileSync(path).equals(data)).toBe(true);
  });
});

describe("DiskFile with O_DIRECT (o_direct=true)", () => {
  /** Opens a fresh image with O_DIRECT, or null where the temp directory's file system has none. */
  function direct(bytes: Uint8Array): { path: string; disk: DiskFile } | null {
    const path = image(bytes);
    try {
      return { path, disk: DiskFile.open(path, false, true) };
    } catch (e) {
      if (e instanceof Error && /does not support O_DIRECT/.test(e.message)) {
        console.warn(`skipping: ${e.message}`);
        return null;
      }
      throw e;
    }
  }

  test("the alignment is probed, and a buffered open reports none", () => {
    const opened = direct(pattern(65536, 9));
    if (!opened) return;
    using disk = opened.disk;
    expect([512, 1024, 2048, 4096]).toContain(disk.align);
    using buffered = DiskFile.open(image(new Uint8Array(4096)), false);
    expect(buffered.align).toBe(1);
  });

  test("unaligned buffers, offsets and lengths go through a bounce buffer, reads and writes alike", () => {
    const original = pattern(65536, 5);
    const opened = direct(original);
    if (!opened) return;
    using disk = opened.disk;
    // A read whose buffers are neither aligned nor block-sized, at an odd offset.
    const a = new Uint8Array(3);
    const b = new Uint8Array(1000);
    expect(disk.readInto([a, b], 4097)).toBe(true);
    expect(Buffer.concat([a, b]).equals(Buffer.from(original.subarray(4097, 5100)))).toBe(true);
    // A partial-block write keeps its neighbours (read-modify-write).
    const patch = pattern(10, 200);
    expect(disk.writeFrom([patch], 100)).toBe(true);
    const expected = Buffer.from(original);
    expected.set(patch, 100);
    expect(readFileSync(opened.path).equals(expected)).toBe(true);
    // A write across blocks from two odd-sized buffers.
    const left = pattern(700, 11);
    const right = pattern(5000, 12);
    expect(disk.writeFrom([left, right], 8000)).toBe(true);
    expected.set(left, 8000);
    expected.set(right, 8700);
    expect(readFileSync(opened.path).equals(expected)).toBe(true);
  });

  test("reads past the end of the file give zeros", () => {
    const opened = direct(pattern(8192, 3));
    if (!opened) return;
    using disk = opened.disk;
    const buf = new Uint8Array(8192).fill(0xee);
    expect(disk.readInto([buf], 4096)).toBe(true);
    expect(Buffer.from(buf.subarray(0, 4096)).equals(Buffer.from(pattern(8192, 3).subarray(4096)))).toBe(true);
    expect(buf.subarray(4096).every((x) => x === 0)).toBe(true);
  });

  test("a fd handed to another process keeps O_DIRECT", () => {
    const opened = direct(pattern(16384, 1));
    if (!opened) return;
    using disk = opened.disk;
    using again = DiskFile.fromFd(sys.dup(disk.fd), false); // a dup shares the open file description, as SCM_RIGHTS does
    expect(again.align).toBe(disk.align);
  });
});
