import { describe, expect, test } from "bun:test";
import { checkedAdd, guestAddress, GuestMemory } from "../../src/memory/mod.ts";

const PAGE = 4096;

describe("GuestMemory", () => {
  test("create maps a memfd shared by every region", () => {
    using mem = GuestMemory.create([{ base: 0, size: 4 * PAGE }, { base: 0x1_0000_0000, size: 2 * PAGE }]);
    mem.writeU32(0x1_0000_0004, 0xdeadbeef);
    expect(mem.readU32(0x1_0000_0004)).toBe(0xdeadbeef);
    expect([mem.size, mem.end, mem.fd >= 0]).toEqual([6 * PAGE, 0x1_0000_2000, true]);
  });

  test("an access that would cross out of a region is refused, not truncated", () => {
    using mem = GuestMemory.create([{ base: 0, size: PAGE }, { base: PAGE, size: PAGE }]);
    expect(mem.slice(PAGE - 2, 4)).toBeNull();
    expect(() => mem.readU32(PAGE - 2)).toThrow(/not inside guest RAM/);
    expect(mem.slice(PAGE, 4)).not.toBeNull();
  });

  test("addresses outside RAM are refused", () => {
    using mem = GuestMemory.create([{ base: 0, size: PAGE }]);
    expect(mem.isValidRange(PAGE, 1)).toBe(false);
    expect(mem.isValidRange(-1, 1)).toBe(false);
    expect(mem.isValidRange(0, PAGE + 1)).toBe(false);
    expect(() => mem.write(PAGE - 1, Uint8Array.of(1, 2))).toThrow();
  });

  test("fromFd sees the same bytes as the creator", () => {
    using mem = GuestMemory.create([{ base: 0, size: PAGE }]);
    mem.writeU8(10, 42);
    const other = GuestMemory.fromFd(mem.fd, [{ base: 0, size: PAGE }]);
    expect(other.readU8(10)).toBe(42);
  });

  test("rejects overlapping or unaligned layouts", () => {
    expect(() => GuestMemory.create([{ base: 0, size: 2 * PAGE }, { base: PAGE, size: PAGE }])).toThrow(/overlaps/);
    expect(() => GuestMemory.create([{ base: 0, size: 100 }])).toThrow(/bad guest memory region/);
    expect(() => GuestMemory.create([{ base: 0, size: 2 ** 33 }])).toThrow(/bad guest memory region/);
  });
});

describe("guest addresses", () => {
  test("checkedAdd refuses to leave the 52-bit physical space", () => {
    expect(checkedAdd(guestAddress(0x1000), 0x10)).toBe(guestAddress(0x1010));
    expect(checkedAdd(guestAddress(2 ** 52 - 1), 1)).toBeNull();
    expect(checkedAdd(guestAddress(0x1000), -0x2000)).toBeNull();
  });

  test("guestAddress rejects non-integers and negatives", () => {
    expect(() => guestAddress(-1)).toThrow();
    expect(() => guestAddress(1.5)).toThrow();
  });
});
