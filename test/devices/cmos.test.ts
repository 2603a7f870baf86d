import { describe, expect, test } from "bun:test";
import { Cmos } from "../../src/devices/cmos.ts";

const MIB = 1024 * 1024;
const FIXED = new Date(Date.UTC(2026, 10, 27, 13, 45, 9));

function cmos(memory = { belowHole: 256 * MIB, aboveFourGib: 0 }) {
  const dev = new Cmos(memory, () => FIXED);
  const reg = (index: number): number => {
    dev.write({ offset: 0x70, address: 0x70, vcpuId: 0 }, Uint8Array.of(index));
    const d = new Uint8Array(1);
    dev.read({ offset: 0x71, address: 0x71, vcpuId: 0 }, d);
    return d[0]!;
  };
  const set = (index: number, value: number): void => {
    dev.write({ offset: 0x70, address: 0x70, vcpuId: 0 }, Uint8Array.of(index));
    dev.write({ offset: 0x71, address: 0x71, vcpuId: 0 }, Uint8Array.of(value));
  };
  return { reg, set };
}

describe("Cmos", () => {
  test("the clock reads the host time in BCD", () => {
    const c = cmos();
    expect([c.reg(0), c.reg(2), c.reg(4), c.reg(7), c.reg(8), c.reg(9), c.reg(0x32)]).toEqual([0x09, 0x45, 0x13, 0x27, 0x11, 0x26, 0x20]);
  });

  test("status B's DM bit switches to binary", () => {
    const c = cmos();
    c.set(0x0b, 0x06);
    expect([c.reg(0), c.reg(4)]).toEqual([9, 13]);
  });

  test("12-hour mode sets the PM bit", () => {
    const c = cmos();
    c.set(0x0b, 0x00);
    expect(c.reg(4)).toBe(0x81);
  });

  test("status D reports valid RAM and ignores writes", () => {
    const c = cmos();
    c.set(0x0d, 0);
    expect(c.reg(0x0d)).toBe(0x80);
  });

  test("the NMI bit of the index port is not part of the index", () => {
    const c = cmos();
    expect(c.reg(0x80 | 0x0a)).toBe(0x26);
  });

  test("memory size registers describe RAM above 16 MiB and above 4 GiB", () => {
    const c = cmos({ belowHole: 256 * MIB, aboveFourGib: 1024 * MIB });
    expect((c.reg(0x35) << 8) | c.reg(0x34)).toBe((240 * MIB) / 0x10000);
    expect((c.reg(0x5d) << 16) | (c.reg(0x5c) << 8) | c.reg(0x5b)).toBe((1024 * MIB) / 0x10000);
  });

  test("plain CMOS RAM keeps what was written", () => {
    const c = cmos();
    c.set(0x40, 0x99);
    expect(c.reg(0x40)).toBe(0x99);
  });
});
