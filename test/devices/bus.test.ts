import { describe, expect, test } from "bun:test";
import { Bus, type BusAccess, type BusDevice } from "../../src/devices/bus.ts";

class Recorder implements BusDevice {
  readonly accesses: { kind: string; offset: number; address: number; value: number }[] = [];
  constructor(readonly debugLabel: string) {}
  read(access: BusAccess, data: Uint8Array): void {
    this.accesses.push({ kind: "read", offset: access.offset, address: access.address, value: 0 });
    data.fill(0x5a);
  }
  write(access: BusAccess, data: Uint8Array): void {
    this.accesses.push({ kind: "write", offset: access.offset, address: access.address, value: data[0]! });
  }
}

describe("Bus", () => {
  test("insert rejects an overlapping range", () => {
    const bus = new Bus();
    bus.insert(new Recorder("a"), 0x100, 0x10);
    expect(() => bus.insert(new Recorder("b"), 0x10f, 1)).toThrow(/overlaps a/);
    expect(() => bus.insert(new Recorder("c"), 0xf8, 0x10)).toThrow(/overlaps a/);
  });

  test("insert rejects an empty range", () => {
    expect(() => new Bus().insert(new Recorder("a"), 0x100, 0)).toThrow(/length 0/);
  });

  test("adjacent ranges are allowed and found by base address", () => {
    const bus = new Bus();
    const a = new Recorder("a");
    const b = new Recorder("b");
    bus.insert(b, 0x110, 0x10);
    bus.insert(a, 0x100, 0x10);
    expect(bus.rangeOf(0x10f)?.device).toBe(a);
    expect(bus.rangeOf(0x110)?.device).toBe(b);
    expect(bus.rangeOf(0x120)).toBeNull();
    expect(bus.rangeOf(0xff)).toBeNull();
  });

  test("offsets are relative to the range start unless inserted with full addresses", () => {
    const bus = new Bus();
    const relative = new Recorder("relative");
    const full = new Recorder("full");
    bus.insert(relative, 0x3f8, 8);
    bus.insert(full, 0x60, 1, true);
    bus.write(0x3fb, Uint8Array.of(7), 0);
    bus.write(0x60, Uint8Array.of(9), 0);
    expect(relative.accesses).toEqual([{ kind: "write", offset: 3, address: 0x3fb, value: 7 }]);
    expect(full.accesses).toEqual([{ kind: "write", offset: 0x60, address: 0x60, value: 9 }]);
  });

  test("a device may occupy several ranges", () => {
    const bus = new Bus();
    const dev = new Recorder("i8042");
    bus.insert(dev, 0x60, 1, true);
    bus.insert(dev, 0x64, 1, true);
    bus.read(0x64, new Uint8Array(1), 0);
    bus.read(0x60, new Uint8Array(1), 0);
    expect(dev.accesses.map((a) => a.offset)).toEqual([0x64, 0x60]);
  });

  test("a multi-byte access at the last byte of a range goes to that range's device", () => {
    const bus = new Bus();
    const dev = new Recorder("d");
    bus.insert(dev, 0x1000, 0x40);
    const data = new Uint8Array(4);
    expect(bus.read(0x103f, data, 0)).toBe(true);
    expect(dev.accesses[0]!.offset).toBe(0x3f);
  });

  test("accesses with no device report false and leave data untouched", () => {
    const data = Uint8Array.of(1, 2);
    expect(new Bus().read(0x80, data, 0)).toBe(false);
    expect([...data]).toEqual([1, 2]);
  });

  test("remove frees a range for reuse", () => {
    const bus = new Bus();
    bus.insert(new Recorder("a"), 0x100, 0x10);
    expect(bus.remove(0x100)).toBe(true);
    bus.insert(new Recorder("b"), 0x100, 0x10);
    expect(bus.rangeOf(0x100)?.device.debugLabel).toBe("b");
  });
});
