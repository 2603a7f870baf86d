// harness.ts - runs fuzz targets: seeded random cases, and what went wrong counted, not thrown.
//
// A target turns a random number source into one case against one of tsvm's parsers or devices.
// The harness counts cases, uncaught exceptions (a crash: anything but the errors a target says
// its input may legitimately produce), deadline overruns (a case slower than `deadlineMs`: a hang in
// the making), and the growth of open fds and resident memory over the run.
import { readdirSync } from "node:fs";
import { setLogLevel } from "../../src/base/log.ts";

/** A small, fast, seeded PRNG (xorshift32): the same seed gives the same cases. */
export class Random {
  #state: number;
  constructor(seed: number) {
    this.#state = seed >>> 0 || 0x9e3779b9;
  }
  /** A uniformly random 32-bit unsigned integer. */
  u32(): number {
    let x = this.#state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#state = x >>> 0;
    return this.#state;
  }
  /** An integer in [0, n). */
  below(n: number): number {
    return n <= 0 ? 0 : this.u32() % n;
  }
  /** True with probability 1/n. */
  oneIn(n: number): boolean {
    return this.below(n) === 0;
  }
  /** `length` random bytes. */
  bytes(length: number): Uint8Array {
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = this.u32() & 0xff;
    return out;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)]!;
  }
  /** A value that hits boundaries more often than uniform numbers would. */
  interesting32(): number {
    return this.pick([0, 1, 2, 3, 4, 7, 8, 15, 16, 255, 256, 4095, 4096, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff, this.u32()]);
  }
}

/** One fuzz target: `setUp` once, then `run` per case; errors `expected` may throw are not crashes. */
export type FuzzTarget = {
  readonly name: string;
  /** Builds what the cases share (a device, a valid image); returns the per-case function and a teardown. */
  setUp(): { run(random: Random, index: number): void; tearDown(): void };
  /** Whether `e`, thrown by a case, is an error the input may legitimately cause (a refused kernel, say). */
  readonly expected?: (e: unknown) => boolean;
};

/** What one target's run found. */
export type FuzzReport = {
  readonly name: string;
  readonly cases: number;
  readonly crashes: number;
  readonly overruns: number;
  readonly fdGrowth: number;
  readonly rssGrowthMiB: number;
  readonly seconds: number;
  /** The first few crashes: case index and message, to reproduce with the same seed. */
  readonly firstCrashes: readonly string[];
};

const openFds = (): number => readdirSync("/proc/self/fd").length;
const rssMiB = (): number => process.memoryUsage().rss / (1024 * 1024);

/** Runs `cases` cases of `target` from `seed`; a case slower than `deadlineMs` counts as an overrun. */
export function runTarget(target: FuzzTarget, cases: number, seed: number, deadlineMs = 1000): FuzzReport {
  const random = new Random(seed);
  Bun.gc(true);
  const fdsBefore = openFds();
  const rssBefore = rssMiB();
  // The devices log the guest errors they meet; a campaign makes millions of them.
  setLogLevel("error");
  const { run, tearDown } = target.setUp();
  const started = performance.now();
  let crashes = 0;
  let overruns = 0;
  const firstCrashes: string[] = [];
  for (let i = 0; i < cases; i++) {
    const t0 = performance.now();
    try {
      run(random, i);
    } catch (e) {
      if (!target.expected?.(e)) {
        crashes++;
        if (firstCrashes.length < 5) firstCrashes.push(`case ${i}: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
      }
    }
    if (performance.now() - t0 > deadlineMs) overruns++;
  }
  const seconds = (performance.now() - started) / 1000;
  tearDown();
  setLogLevel("warn");
  Bun.gc(true);
  return {
    name: target.name, cases, crashes, overruns, fdGrowth: openFds() - fdsBefore,
    rssGrowthMiB: Math.round((rssMiB() - rssBefore) * 10) / 10, seconds: Math.round(seconds * 10) / 10, firstCrashes,
  };
}
