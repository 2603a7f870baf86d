import { describe, expect, test } from "bun:test";
import { SharedRegisters } from "../../src/devices/shared_registers.ts";

describe("SharedRegisters", () => {
  test("reads come from the image only where every dword touched is flagged", () => {
    const r = new SharedRegisters(16);
    r.set(0, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8));
    r.setLocal(0, 4, true);
    const d = new Uint8Array(2);
    expect(r.read(2, d)).toBe(true);
    expect([...d]).toEqual([3, 4]);
    expect(r.read(3, new Uint8Array(2))).toBe(false); // reaches into the unflagged dword 1
    r.setLocal(4, 1, true); // flags whole dwords
    const eight = new Uint8Array(8);
    expect(r.read(0, eight)).toBe(true);
    expect([...eight]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    r.setLocal(4, 4, false);
    expect(r.read(4, new Uint8Array(1))).toBe(false);
  });

  test("reads outside the file are never served", () => {
    const r = new SharedRegisters(8);
    r.setLocal(0, 8, true);
    expect(r.read(6, new Uint8Array(4))).toBe(false);
    expect(r.read(-1, new Uint8Array(1))).toBe(false);
    expect(r.read(8, new Uint8Array(1))).toBe(false);
  });

  test("a second view over the buffer sees the image and the flags", () => {
    const r = new SharedRegisters(8);
    const other = new SharedRegisters(r.buffer);
    expect(other.size).toBe(8);
    r.set(4, Uint8Array.of(9, 8, 7, 6));
    r.setLocal(4, 4, true);
    const d = new Uint8Array(4);
    expect(other.read(4, d)).toBe(true);
    expect([...d]).toEqual([9, 8, 7, 6]);
  });

  test("a size that is not a positive multiple of 4 is refused", () => {
    expect(() => new SharedRegisters(6)).toThrow(/multiple of 4/);
    expect(() => new SharedRegisters(0)).toThrow(/multiple of 4/);
  });
});
