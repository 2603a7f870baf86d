import { describe, expect, test } from "bun:test";
import { BOOT_GDT, gdtEntry, segmentFromEntry } from "../../../src/arch/x86_64/gdt.ts";

describe("gdt", () => {
  test("packs the 64-bit code descriptor Linux expects", () => {
    expect(gdtEntry(0xa09b, 0, 0xfffff)).toBe(0x00af9b000000ffffn);
  });

  test("decodes the boot code segment for KVM with a byte-granular limit", () => {
    expect(segmentFromEntry(BOOT_GDT[2]!, 0x10)).toEqual({
      base: 0n, limit: 0xffffffff, selector: 0x10, type: 0xb, present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0,
    });
  });

  test("decodes the TSS as a present system segment", () => {
    const tss = segmentFromEntry(BOOT_GDT[4]!, 0x20);
    expect({ type: tss.type, s: tss.s, present: tss.present }).toEqual({ type: 0xb, s: 0, present: 1 });
  });
});
