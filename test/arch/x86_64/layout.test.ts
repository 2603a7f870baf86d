import { describe, expect, test } from "bun:test";
import { buildE820, E820_TYPE } from "../../../src/arch/x86_64/e820.ts";
import { memoryRegions } from "../../../src/arch/x86_64/layout.ts";

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

describe("memoryRegions", () => {
  test("small guests have one region at 0", () => {
    expect(memoryRegions(256 * MIB)).toEqual([{ base: 0, size: 256 * MIB }]);
  });

  test("RAM beyond the 32-bit hole continues at 4 GiB in regions of at most 4 GiB", () => {
    expect(memoryRegions(12 * GIB)).toEqual([
      { base: 0, size: 0xd000_0000 },
      { base: 4 * GIB, size: 4 * GIB },
      { base: 8 * GIB, size: 4 * GIB },
      { base: 12 * GIB, size: 12 * GIB - 0xd000_0000 - 8 * GIB },
    ]);
  });
});

describe("buildE820", () => {
  test("describes low RAM, the legacy hole and the TSS pages", () => {
    expect(buildE820(memoryRegions(256 * MIB))).toEqual([
      { address: 0, size: 0x9fc00, type: E820_TYPE.E820_RAM },
      { address: 0x9fc00, size: 0x100000 - 0x9fc00, type: E820_TYPE.E820_RESERVED },
      { address: 0x100000, size: 255 * MIB, type: E820_TYPE.E820_RAM },
      { address: 0xfffbc000, size: 0x4000, type: E820_TYPE.E820_RESERVED },
    ]);
  });

  test("merges the regions above 4 GiB into one RAM entry", () => {
    const e820 = buildE820(memoryRegions(12 * GIB));
    expect(e820.at(-1)).toEqual({ address: 4 * GIB, size: 12 * GIB - 0xd000_0000, type: E820_TYPE.E820_RAM });
    expect(e820.length).toBe(5);
  });
});
