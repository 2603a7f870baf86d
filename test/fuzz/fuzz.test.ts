// A short run of every fuzz target (scripts/fuzz.ts runs the long campaign): no crash, no case over
// its deadline, no fd left behind.
import { describe, expect, test } from "bun:test";
import { runTarget } from "./harness.ts";
import { FUZZ_TARGETS } from "./targets.ts";

const CASES = 2000;
const SEED = 0x7e57;

describe("fuzz targets, a short run each", () => {
  for (const target of FUZZ_TARGETS) {
    test(`${target.name}: ${CASES} cases without a crash, a hang or a leaked fd`, () => {
      const r = runTarget(target, CASES, SEED);
      expect({ crashes: r.crashes, overruns: r.overruns, fdGrowth: Math.max(0, r.fdGrowth), firstCrashes: r.firstCrashes })
        .toEqual({ crashes: 0, overruns: 0, fdGrowth: 0, firstCrashes: [] });
    }, 120_000);
  }
});
