// The I/O pool of c/aio.c through its bindings: small aligned O_DIRECT reads and writes go to the
// kernel's asynchronous I/O, everything else to the threads, and both report through the same eventfd.
import { describe, expect, test } from "bun:test";
import { closeSync, openSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { AIO_OP, AIO_SYNC, type AioCompletion, AioPool } from "../../ffi/aio.ts";
import { socket } from "../../ffi/mod.ts";
import { EventFd } from "../../src/base/event_fd.ts";
import { DiskFile } from "../../src/disk/disk_file.ts";
import { GuestMemory, guestAddress as ga } from "../../src/memory/mod.ts";
import { tempDir } from "../support/tsvm.ts";
import { HeldMemory } from "../support/userfault.ts";

const BLOCK = 4096;

/** A file of `blocks` blocks, each filled with its own number, opened with O_DIRECT (null where the file system has none). */
function directFile(blocks: number): { file: DiskFile; path: string } | null {
  const path = join(tempDir(), "direct.img");
  writeFileSync(path, Uint8Array.from({ length: blocks * BLOCK }, (_, i) => Math.floor(i / BLOCK) + 1));
  try {
    return { file: DiskFile.open(path, false, true), path };
  } catch (e) {
    if (e instanceof Error && /does not support O_DIRECT/.test(e.message)) {
      console.warn(`skipping: ${e.message}`);
      return null;
    }
    throw e;
  }
}

/** Waits on `done` and reaps until `count` completions came back (or 5 s passed). */
function reapAll(pool: AioPool, done: EventFd, count: number): AioCompletion[] {
  const out: AioCompletion[] = [];
  const deadline = Date.now() + 5000;
  while (out.length < count && Date.now() < deadline) {
    if (socket.waitReadable(done.fd, 100) > 0) done.read();
    out.push(...pool.reap());
  }
  return out;
}

type Setup = { file: DiskFile; path: string; memory: GuestMemory; done: EventFd; pool: AioPool };
/**
 * Runs `body` with an O_DIRECT file of `blocks` blocks, `blocks` blocks of memory and a pool whose
 * batches start on the caller's thread (or, with `offload`, on a pool thread); closes them after.
 */
function withPool(blocks: number, threads: number, body: (t: Setup) => void, offload = false): void {
  const opened = directFile(blocks);
  if (opened === null) return;
  const memory = GuestMemory.create([{ base: 0, size: blocks * BLOCK }]);
  const done = new EventFd();
  const pool = new AioPool(threads, 64, done.fd);
  pool.offload(offload);
  try {
    body({ ...opened, memory, done, pool });
  } finally {
    pool.close();
    done.close();
    opened.file.close();
  }
}

/** Submits a read of block (n × 5) mod 64 into memory block n, tagged n. */
function scatteredRead({ file, memory, pool }: Setup, n: number): number {
  return pool.submit(AIO_OP.READ, file.poolTarget.fd, [memory.slice(ga(n * BLOCK), BLOCK)!], ((n * 5) % 64) * BLOCK, n, file.align);
}

/** Reads into memory blocks 0-2 in one batch, checking that none starts before the batch ends. */
function batchOfThree(setup: Setup): void {
  setup.pool.batch(() => {
    for (let n = 0; n < 3; n++) expect(scatteredRead(setup, n)).toBe(0);
    expect(setup.pool.kernelCalls).toBe(0); // held back
  });
}

describe("AioPool", () => {
  test("32 aligned 4 KiB O_DIRECT reads in flight go to the kernel's asynchronous I/O and each returns its own block", () => {
    withPool(64, 4, ({ file, memory, done, pool }) => {
      for (let n = 0; n < 32; n++) {
        const block = (n * 7) % 64;
        const view = memory.slice(ga(n * BLOCK), BLOCK)!;
        expect(pool.submit(AIO_OP.READ, file.poolTarget.fd, [view], block * BLOCK, 1000 + n, file.align)).toBe(0);
      }
      const completions = reapAll(pool, done, 32);
      expect(completions.map((c) => c.tag).sort((a, b) => a - b)).toEqual(Array.from({ length: 32 }, (_, n) => 1000 + n));
      expect(completions.every((c) => c.result === 0)).toBe(true);
      for (let n = 0; n < 32; n++) {
        expect(memory.slice(ga(n * BLOCK), BLOCK)!.every((b) => b === ((n * 7) % 64) + 1)).toBe(true);
      }
      expect(pool.kernelRequests).toBe(32);
    });
  });

  test("a kernel read that ends past the end of the file is finished as the threads finish it: the rest reads zeros", () => {
    withPool(2, 2, ({ file, memory, done, pool }) => {
      const got = memory.slice(ga(0), 2 * BLOCK)!;
      got.fill(0xee);
      // 8 KiB from the second block of a two-block file: one block of data, then the end of the file
      expect(pool.submit(AIO_OP.READ, file.poolTarget.fd, [got], BLOCK, 7, file.align)).toBe(0);
      expect(reapAll(pool, done, 1)).toEqual([{ tag: 7, result: 0 }]);
      expect(pool.kernelRequests).toBe(1);
      expect(got.subarray(0, BLOCK).every((b) => b === 2)).toBe(true);
      expect(got.subarray(BLOCK).every((b) => b === 0)).toBe(true);
    });
  });

  test("aligned 4 KiB O_DIRECT writes go to the kernel too and land where they were sent", () => {
    withPool(16, 2, ({ file, path, memory, done, pool }) => {
      for (let n = 0; n < 8; n++) {
        const view = memory.slice(ga(n * BLOCK), BLOCK)!;
        view.fill(0xa0 + n);
        expect(pool.submit(AIO_OP.WRITE, file.poolTarget.fd, [view], (15 - n) * BLOCK, n, file.align)).toBe(0);
      }
      const completions = reapAll(pool, done, 8);
      expect(completions.map((c) => c.tag).sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
      expect(completions.every((c) => c.result === 0)).toBe(true);
      expect(pool.kernelRequests).toBe(8);
      const disk = readFileSync(path);
      for (let b = 0; b < 16; b++) {
        const want = b >= 8 ? 0xa0 + (15 - b) : b + 1;
        expect(disk.subarray(b * BLOCK, (b + 1) * BLOCK).every((x) => x === want)).toBe(true);
      }
    });
  });

  test("a batch's kernel reads start together when it ends, at most 8 to an io_submit, and each returns its own block", () => {
    withPool(64, 2, (setup) => {
      const { memory, done, pool } = setup;
      const read = (n: number): number => scatteredRead(setup, n);
      batchOfThree(setup);
      expect([pool.kernelRequests, pool.kernelCalls]).toEqual([3, 1]);
      pool.batch(() => {
        for (let n = 3; n < 23; n++) expect(read(n)).toBe(0);
        expect([pool.kernelRequests, pool.kernelCalls]).toEqual([19, 3]); // two full batches of 8 started
      });
      expect([pool.kernelRequests, pool.kernelCalls]).toEqual([23, 4]);
      const completions = reapAll(pool, done, 23);
      expect(completions.map((c) => c.tag).sort((a, b) => a - b)).toEqual(Array.from({ length: 23 }, (_, n) => n));
      expect(completions.every((c) => c.result === 0)).toBe(true);
      for (let n = 0; n < 23; n++) expect(memory.slice(ga(n * BLOCK), BLOCK)!.every((b) => b === ((n * 5) % 64) + 1)).toBe(true);
    });
  });

  test("a batch's write the file system would block on (into a hole) is written by a thread, and lands", () => {
    withPool(64, 2, ({ file, path, memory, done, pool }) => {
      truncateSync(path, 128 * BLOCK); // blocks 64-127: a hole, which a write must allocate
      const fd = file.poolTarget.fd;
      memory.slice(ga(0), BLOCK)!.fill(0x3c);
      pool.batch(() => {
        expect(pool.submit(AIO_OP.READ, fd, [memory.slice(ga(BLOCK), BLOCK)!], 3 * BLOCK, 1, file.align)).toBe(0);
        expect(pool.submit(AIO_OP.WRITE, fd, [memory.slice(ga(0), BLOCK)!], 100 * BLOCK, 2, file.align)).toBe(0);
        expect(pool.submit(AIO_OP.READ, fd, [memory.slice(ga(2 * BLOCK), BLOCK)!], 5 * BLOCK, 3, file.align)).toBe(0);
      });
      const completions = reapAll(pool, done, 3);
      expect(completions.map((c) => [c.tag, c.result]).sort()).toEqual([[1, 0], [2, 0], [3, 0]]);
      // io_submit takes all three in one call; the write, which would have to wait for the blocks'
      // allocation (RWF_NOWAIT), comes back -EAGAIN and a thread writes it.
      expect([pool.kernelRequests, pool.kernelCalls]).toEqual([3, 1]);
      expect(memory.slice(ga(BLOCK), BLOCK)!.every((b) => b === 4)).toBe(true);
      expect(memory.slice(ga(2 * BLOCK), BLOCK)!.every((b) => b === 6)).toBe(true);
      expect(readFileSync(path).subarray(100 * BLOCK, 101 * BLOCK).every((b) => b === 0x3c)).toBe(true);
    });
  });

  test("a batch whose first request io_submit refuses outright (a file without RWF_NOWAIT) goes to the threads, the rest of the batch too", () => {
    withPool(64, 2, ({ file, memory, done, pool }) => {
      const proc = openSync("/proc/self/stat", "r"); // procfs files cannot be read with RWF_NOWAIT
      try {
        pool.batch(() => {
          expect(pool.submit(AIO_OP.READ, proc, [memory.slice(ga(0), BLOCK)!], 0, 1, 512)).toBe(0);
          expect(pool.submit(AIO_OP.READ, file.poolTarget.fd, [memory.slice(ga(BLOCK), BLOCK)!], 7 * BLOCK, 2, file.align)).toBe(0);
        });
        const completions = reapAll(pool, done, 2);
        expect(completions.map((c) => [c.tag, c.result]).sort()).toEqual([[1, 0], [2, 0]]);
        expect([pool.kernelRequests, pool.kernelCalls]).toEqual([0, 0]);
        expect(new TextDecoder().decode(memory.slice(ga(0), 16)!)).toMatch(/^\d+ \(/); // "PID (comm) ..."
        expect(memory.slice(ga(BLOCK), BLOCK)!.every((b) => b === 8)).toBe(true);
        // and later requests do not ask the kernel again
        expect(pool.submit(AIO_OP.READ, file.poolTarget.fd, [memory.slice(ga(2 * BLOCK), BLOCK)!], 9 * BLOCK, 3, file.align)).toBe(0);
        expect(reapAll(pool, done, 1)).toEqual([{ tag: 3, result: 0 }]);
        expect(pool.kernelRequests).toBe(0);
      } finally {
        closeSync(proc);
      }
    });
  });

  test("in a batch, thread requests start at once, and waitIdle starts the kernel's requests it holds and waits for them", () => {
    withPool(64, 2, ({ file, path, memory, pool }) => {
      const fd = file.poolTarget.fd;
      memory.slice(ga(0), BLOCK)!.fill(0x77);
      pool.batch(() => {
        expect(pool.submit(AIO_OP.READ, fd, [memory.slice(ga(BLOCK), BLOCK)!], 9 * BLOCK, 1, file.align)).toBe(0);
        expect(pool.submit(AIO_OP.WRITE | AIO_SYNC, fd, [memory.slice(ga(0), BLOCK)!], 60 * BLOCK, 2, file.align)).toBe(0);
        expect(pool.submit(AIO_OP.READ, fd, [memory.slice(ga(2 * BLOCK), BLOCK)!], 11 * BLOCK, 3, file.align)).toBe(0);
        expect(pool.waitIdle()).toBe(3);
        expect([pool.kernelRequests, pool.kernelCalls]).toEqual([2, 1]);
        expect(pool.reap().map((c) => [c.tag, c.result]).sort()).toEqual([[1, 0], [2, 0], [3, 0]]);
      });
      expect(pool.kernelCalls).toBe(1); // nothing left to start
      expect(memory.slice(ga(BLOCK), BLOCK)!.every((b) => b === 10)).toBe(true);
      expect(memory.slice(ga(2 * BLOCK), BLOCK)!.every((b) => b === 12)).toBe(true);
      expect(readFileSync(path).subarray(60 * BLOCK, 61 * BLOCK).every((b) => b === 0x77)).toBe(true);
    });
  });

  test("write-through writes, reads over 64 KiB and unaligned reads go to the threads; waitIdle waits for the kernel's reads too", () => {
    withPool(64, 4, ({ file, path, memory, pool }) => {
      const fd = file.poolTarget.fd;
      memory.slice(ga(0), BLOCK)!.fill(0x5a);
      expect(pool.submit(AIO_OP.WRITE | AIO_SYNC, fd, [memory.slice(ga(0), BLOCK)!], 63 * BLOCK, 1, file.align)).toBe(0);
      expect(pool.submit(AIO_OP.READ, fd, [memory.slice(ga(BLOCK), 32 * BLOCK)!], 0, 2, file.align)).toBe(0);
      // (an unaligned buffer: the threads read it through a bounce buffer)
      expect(pool.submit(AIO_OP.READ, fd, [memory.slice(ga(40 * BLOCK + 1), BLOCK)!], 5 * BLOCK, 3, file.align)).toBe(0);
      expect(pool.submit(AIO_OP.READ, fd, [memory.slice(ga(48 * BLOCK), BLOCK)!], 9 * BLOCK, 4, file.align)).toBe(0);
      expect(pool.waitIdle()).toBe(4);
      const completions = pool.reap();
      expect(completions.map((c) => c.tag).sort()).toEqual([1, 2, 3, 4]);
      expect(completions.every((c) => c.result === 0)).toBe(true);
      expect(pool.kernelRequests).toBe(1);
      expect(memory.slice(ga(BLOCK), 32 * BLOCK)!.every((b, i) => b === Math.floor(i / BLOCK) + 1)).toBe(true);
      expect(memory.slice(ga(40 * BLOCK + 1), BLOCK)!.every((b) => b === 6)).toBe(true);
      expect(memory.slice(ga(48 * BLOCK), BLOCK)!.every((b) => b === 10)).toBe(true);
      expect(readFileSync(path).subarray(63 * BLOCK).every((b) => b === 0x5a)).toBe(true);
    });
  });
});

describe("AioPool with batches offloaded to a pool thread", () => {
  test("a pool thread starts each batch's kernel reads, at most 8 to an io_submit; each returns its own block, and waitIdle waits for the starting", () => {
    withPool(64, 2, (setup) => {
      const { memory, done, pool } = setup;
      const read = (n: number): number => scatteredRead(setup, n);
      batchOfThree(setup);
      pool.batch(() => {
        for (let n = 3; n < 23; n++) expect(read(n)).toBe(0);
      });
      expect(pool.waitIdle()).toBe(23);
      expect(pool.kernelRequests).toBe(23);
      // the thread takes what waits, up to 8 at a time: 3, 8, 8 and 4 at most, 3 calls at least
      expect(pool.kernelCalls).toBeGreaterThanOrEqual(3);
      expect(pool.kernelCalls).toBeLessThanOrEqual(23);
      expect(pool.kernelOffloadedCalls).toBe(pool.kernelCalls); // none on this thread
      const completions = pool.reap();
      expect(completions.map((c) => c.tag).sort((a, b) => a - b)).toEqual(Array.from({ length: 23 }, (_, n) => n));
      expect(completions.every((c) => c.result === 0)).toBe(true);
      for (let n = 0; n < 23; n++) expect(memory.slice(ga(n * BLOCK), BLOCK)!.every((b) => b === ((n * 5) % 64) + 1)).toBe(true);
      expect(done.read()).toBeGreaterThan(0); // and the eventfd said so
    }, true);
  });

  test("an offloaded write the file system would block on (into a hole) comes back -EAGAIN and a thread writes it", () => {
    withPool(64, 2, ({ file, path, memory, done, pool }) => {
      truncateSync(path, 128 * BLOCK);
      const fd = file.poolTarget.fd;
      memory.slice(ga(0), BLOCK)!.fill(0x3d);
      pool.batch(() => {
        expect(pool.submit(AIO_OP.READ, fd, [memory.slice(ga(BLOCK), BLOCK)!], 3 * BLOCK, 1, file.align)).toBe(0);
        expect(pool.submit(AIO_OP.WRITE, fd, [memory.slice(ga(0), BLOCK)!], 100 * BLOCK, 2, file.align)).toBe(0);
      });
      const completions = reapAll(pool, done, 2);
      expect(completions.map((c) => [c.tag, c.result]).sort()).toEqual([[1, 0], [2, 0]]);
      expect([pool.kernelRequests, pool.kernelCalls, pool.kernelOffloadedCalls]).toEqual([2, 1, 1]);
      expect(memory.slice(ga(BLOCK), BLOCK)!.every((b) => b === 4)).toBe(true);
      expect(readFileSync(path).subarray(100 * BLOCK, 101 * BLOCK).every((b) => b === 0x3d)).toBe(true);
    }, true);
  });

  test("an offloaded batch io_submit refuses outright (a file without RWF_NOWAIT) goes to the threads, and later ones stay there", () => {
    withPool(64, 2, ({ file, memory, done, pool }) => {
      const proc = openSync("/proc/self/stat", "r");
      try {
        pool.batch(() => {
          expect(pool.submit(AIO_OP.READ, proc, [memory.slice(ga(0), BLOCK)!], 0, 1, 512)).toBe(0);
          expect(pool.submit(AIO_OP.READ, file.poolTarget.fd, [memory.slice(ga(BLOCK), BLOCK)!], 7 * BLOCK, 2, file.align)).toBe(0);
        });
        expect(reapAll(pool, done, 2).map((c) => [c.tag, c.result]).sort()).toEqual([[1, 0], [2, 0]]);
        expect(new TextDecoder().decode(memory.slice(ga(0), 16)!)).toMatch(/^\d+ \(/);
        expect(memory.slice(ga(BLOCK), BLOCK)!.every((b) => b === 8)).toBe(true);
        pool.batch(() => {
          expect(pool.submit(AIO_OP.READ, file.poolTarget.fd, [memory.slice(ga(2 * BLOCK), BLOCK)!], 9 * BLOCK, 3, file.align)).toBe(0);
        });
        expect(reapAll(pool, done, 1)).toEqual([{ tag: 3, result: 0 }]);
        expect(memory.slice(ga(2 * BLOCK), BLOCK)!.every((b) => b === 10)).toBe(true);
        expect([pool.kernelRequests, pool.kernelCalls]).toEqual([0, 0]);
      } finally {
        closeSync(proc);
      }
    }, true);
  });

  test("closing the pool right after a batch waits for the thread's io_submit and the requests it started", () => {
    for (let round = 0; round < 20; round++) {
      withPool(64, 2, ({ file, path, memory, pool }) => {
        for (let n = 0; n < 16; n++) memory.slice(ga(n * BLOCK), BLOCK)!.fill(round + n);
        pool.batch(() => {
          for (let n = 0; n < 16; n++) expect(pool.submit(AIO_OP.WRITE, file.poolTarget.fd, [memory.slice(ga(n * BLOCK), BLOCK)!], n * BLOCK, n, file.align)).toBe(0);
        });
        pool.close(); // (withPool's close then does nothing)
        const disk = readFileSync(path);
        for (let n = 0; n < 16; n++) expect(disk.subarray(n * BLOCK, (n + 1) * BLOCK).every((b) => b === ((round + n) & 0xff))).toBe(true);
      }, true);
    }
  });
});

describe("AioPool with every request on the threads", () => {
  test("aligned 4 KiB O_DIRECT reads and writes in a batch all go to the threads, none to io_submit, and land; turned back, a read goes to the kernel", () => {
    withPool(64, 8, (setup) => {
      const { file, path, memory, done, pool } = setup;
      pool.threadsOnly(true);
      pool.batch(() => {
        for (let n = 0; n < 16; n++) expect(scatteredRead(setup, n)).toBe(0);
        for (let n = 0; n < 8; n++) {
          const view = memory.slice(ga((16 + n) * BLOCK), BLOCK)!;
          view.fill(0xc0 + n);
          expect(pool.submit(AIO_OP.WRITE, file.poolTarget.fd, [view], (40 + n) * BLOCK, 100 + n, file.align)).toBe(0);
        }
      });
      const completions = reapAll(pool, done, 24);
      expect(completions.map((c) => c.tag).sort((a, b) => a - b)).toEqual([...Array.from({ length: 16 }, (_, n) => n), ...Array.from({ length: 8 }, (_, n) => 100 + n)]);
      expect(completions.every((c) => c.result === 0)).toBe(true);
      expect([pool.kernelRequests, pool.kernelCalls]).toEqual([0, 0]);
      for (let n = 0; n < 16; n++) expect(memory.slice(ga(n * BLOCK), BLOCK)!.every((b) => b === ((n * 5) % 64) + 1)).toBe(true);
      const disk = readFileSync(path);
      for (let n = 0; n < 8; n++) expect(disk.subarray((40 + n) * BLOCK, (41 + n) * BLOCK).every((b) => b === 0xc0 + n)).toBe(true);
      pool.threadsOnly(false);
      expect(scatteredRead(setup, 30)).toBe(0);
      expect(reapAll(pool, done, 1)).toEqual([{ tag: 30, result: 0 }]);
      expect(pool.kernelRequests).toBe(1);
    });
  });
});

describe("AioPool's thread limit", () => {
  test("the pool stops at its limit while the kernel may take small O_DIRECT requests, and grows to the larger one once io_submit refused them", () => {
    const opened = directFile(64);
    if (opened === null) return;
    const { file, path } = opened;
    const memory = GuestMemory.create([{ base: 0, size: 16 * BLOCK }]);
    const done = new EventFd();
    const pool = new AioPool(2, 64, done.fd, 6);
    const plain = openSync(path, "r");
    const proc = openSync("/proc/self/stat", "r"); // procfs files cannot be read with RWF_NOWAIT
    const into = (n: number): Uint8Array => memory.slice(ga(n * BLOCK), BLOCK)!;
    try {
      const held = HeldMemory.hold(memory.slice(ga(0), 16 * BLOCK)!); // every request below stays on its thread until released
      if (held === null) return;
      try {
        // page-cache reads (threads' work in either mode): two threads take two, the others wait
        for (let n = 0; n < 4; n++) expect(pool.submit(AIO_OP.READ, plain, [into(n)], n * BLOCK, n, 1)).toBe(0);
        expect(pool.threads).toBe(2);
        // a small O_DIRECT read io_submit refuses outright goes to a thread, and so do the ones after it
        expect(pool.submit(AIO_OP.READ, proc, [into(4)], 0, 4, 512)).toBe(0);
        for (let n = 5; n < 10; n++) expect(pool.submit(AIO_OP.READ, file.poolTarget.fd, [into(n)], n * BLOCK, n, file.align)).toBe(0);
        expect(pool.kernelRequests).toBe(0);
        expect(pool.threads).toBe(6);
      } finally {
        held.release();
      }
      const completions = reapAll(pool, done, 10);
      expect(completions.map((c) => [c.tag, c.result]).sort((a, b) => a[0]! - b[0]!)).toEqual(Array.from({ length: 10 }, (_, n) => [n, 0]));
      for (const n of [0, 1, 2, 3, 5, 6, 7, 8, 9]) expect(into(n).every((b) => b === n + 1)).toBe(true);
      expect(new TextDecoder().decode(into(4).subarray(0, 16))).toMatch(/^\d+ \(/); // "PID (comm) ..."
      expect(pool.threads).toBe(6);
    } finally {
      pool.close();
      closeSync(proc);
      closeSync(plain);
      done.close();
      file.close();
    }
  });
});
