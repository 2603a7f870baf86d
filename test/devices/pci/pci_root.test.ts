import { describe, expect, test } from "bun:test";
import { Bus } from "../../../src/devices/bus.ts";
import { AddressAllocator, PciConfigIo, PciConfiguration, type PciDevice, PciRoot } from "../../../src/devices/pci/mod.ts";

class TestDevice implements PciDevice {
  readonly debugLabel = "test";
  readonly config = new PciConfiguration({ vendorId: 0x1234, deviceId: 0x5678, classCode: 0x020000 });
  readonly barReads: number[] = [];
  constructor() {
    this.config.addBar({ index: 0, size: 0x1000, kind: "memory32" });
    this.config.addBar({ index: 2, size: 0x4000, kind: "memory64", prefetchable: true });
  }
  readConfig(offset: number, length: number): number {
    return this.config.read(offset, length);
  }
  writeConfig(offset: number, length: number, value: number): void {
    this.config.write(offset, length, value);
  }
  readBar(index: number, offset: number, data: Uint8Array): void {
    this.barReads.push(index * 0x10000 + offset);
    data.fill(0x77);
  }
  writeBar(): void {}
}

function setup() {
  const buses = { mmio: new Bus(), io: new Bus() };
  const root = new PciRoot(buses, {
    mmio32: new AddressAllocator(0xd000_0000, 0xfec0_0000),
    mmio64: new AddressAllocator(0x1_0000_0000, 0x2_0000_0000),
    io: new AddressAllocator(0xc000, 0x10000),
  });
  const device = new TestDevice();
  const slot = root.add(device);
  const cfg = new PciConfigIo(root);
  const access = (offset: number) => ({ offset, address: 0xcf8 + offset, vcpuId: 0 });
  const read32 = (s: number, reg: number): number => {
    cfg.write(access(0), new Uint8Array(Uint32Array.of(0x8000_0000 | (s << 11) | reg).buffer));
    const d = new Uint8Array(4);
    cfg.read(access(4), d);
    return new DataView(d.buffer).getUint32(0, true);
  };
  const write32 = (s: number, reg: number, value: number): void => {
    cfg.write(access(0), new Uint8Array(Uint32Array.of(0x8000_0000 | (s << 11) | reg).buffer));
    cfg.write(access(4), new Uint8Array(Uint32Array.of(value).buffer));
  };
  return { buses, root, device, slot, cfg, read32, write32, access };
}

describe("PciRoot and PciConfigIo", () => {
  test("the host bridge is at 00:00.0 and empty slots read all ones", () => {
    const { read32 } = setup();
    expect([read32(0, 0), read32(0, 8) >>> 16, read32(9, 0)]).toEqual([0x12378086, 0x0600, 0xffffffff]);
  });

  test("devices take the next slot and get naturally aligned BARs in their windows", () => {
    const { slot, read32 } = setup();
    expect(slot).toBe(1);
    expect([read32(1, 0x10), read32(1, 0x18), read32(1, 0x1c)]).toEqual([0xd000_0000, 0x0000_000c, 1]);
  });

  test("BAR sizing returns the size mask, and the BAR is found on the MMIO bus", () => {
    const { read32, write32, buses, device } = setup();
    write32(1, 0x10, 0xffffffff);
    expect(read32(1, 0x10)).toBe(0xfffff000);
    write32(1, 0x10, 0xd000_0000);
    buses.mmio.read(0xd000_0010, new Uint8Array(4), 0);
    expect(device.barReads).toEqual([0x10]);
  });

  test("turning memory decoding off unmaps the BARs; a moved BAR is mapped at its new address", () => {
    const { write32, read32, buses } = setup();
    const command = read32(1, 4) & 0xffff;
    write32(1, 4, command & ~2);
    expect(buses.mmio.rangeOf(0xd000_0000)).toBeNull();
    write32(1, 0x10, 0xe000_0000);
    write32(1, 4, command);
    expect(buses.mmio.rangeOf(0xe000_0010)?.device.debugLabel).toBe("test BAR0");
  });

  test("byte reads of the data port at any lane, and the disabled address reads all ones", () => {
    const { cfg, access } = setup();
    cfg.write(access(0), new Uint8Array(Uint32Array.of(0x8000_0000 | (1 << 11)).buffer));
    const b = new Uint8Array(1);
    cfg.read(access(6), b);
    expect(b[0]).toBe(0x78);
    cfg.write(access(0), new Uint8Array(Uint32Array.of(1 << 11).buffer));
    const d = new Uint8Array(4);
    cfg.read(access(4), d);
    expect([...d]).toEqual([0xff, 0xff, 0xff, 0xff]);
  });
});
