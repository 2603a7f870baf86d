import { describe, expect, test } from "bun:test";
import { Bus } from "../../../src/devices/bus.ts";
import { sys } from "../../../ffi/mod.ts";
import { AddressAllocator, PciConfigIo, PciConfiguration, type PciDevice, PciRoot } from "../../../src/devices/pci/mod.ts";
import { WorkerPciConfigTarget } from "../../../src/devices/pci/pci_config_io.ts";
import { Rng } from "../../../src/devices/virtio/rng.ts";
import { GuestMemory } from "../../../src/memory/mod.ts";
import { VirtioPciDriver } from "../../support/virtio_pci_driver.ts";

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

  test("the vCPU runner's view answers every configuration read as the control loop does, asking it only for live registers", () => {
    const { root, cfg, access, write32 } = setup();
    const rng = new VirtioPciDriver(new Rng(sys.getrandom), GuestMemory.fromBuffers([{ base: 0, bytes: new Uint8Array(1 << 16) }]));
    const rngSlot = root.add(rng.pci);
    const control = new PciConfigIo(root, cfg.latch, root.configImages);
    const forwarded: number[] = [];
    const remote = {
      debugLabel: "mailbox",
      read: (a: { offset: number; address: number; vcpuId: number }, d: Uint8Array) => {
        forwarded.push(a.address);
        control.read(a, d);
      },
      write: (a: { offset: number; address: number; vcpuId: number }, d: Uint8Array) => control.write(a, d),
    };
    const vcpu = new PciConfigIo(new WorkerPciConfigTarget(root.configImages.buffer, remote), cfg.latch);
    const latch = (s: number, reg: number, fn = 0, bus = 0): void =>
      vcpu.write(access(0), new Uint8Array(Uint32Array.of(0x8000_0000 | (bus << 16) | (s << 11) | (fn << 8) | reg).buffer));
    const compareAll = (): void => {
      for (const [s, fn, bus] of [[0, 0, 0], [1, 0, 0], [rngSlot, 0, 0], [5, 0, 0], [1, 1, 0], [1, 0, 1]] as const) {
        for (let reg = 0; reg < 256; reg += 4) {
          latch(s, reg, fn, bus);
          for (const [lane, size] of [[0, 4], [0, 2], [2, 2], [1, 1], [3, 1], [3, 2]] as const) {
            const mine = new Uint8Array(size);
            const theirs = new Uint8Array(size);
            vcpu.read(access(4 + lane), mine);
            cfg.read(access(4 + lane), theirs);
            expect(`${s}.${fn}@${bus} ${reg}+${lane}: ${[...mine]}`).toBe(`${s}.${fn}@${bus} ${reg}+${lane}: ${[...theirs]}`);
          }
        }
      }
    };
    compareAll();
    // Writes go through (the latch is shared): BAR sizing, decoding off, MSI-X on, the access window set up.
    write32(1, 0x10, 0xffffffff);
    latch(rngSlot, 0x04);
    vcpu.write(access(4), Uint8Array.of(0, 0));
    let cap = rng.pci.readConfig(0x34, 1);
    let msix = 0;
    let window = 0;
    for (; cap !== 0; cap = rng.pci.readConfig(cap + 1, 1)) {
      if (rng.pci.readConfig(cap, 1) === 0x11) msix = cap;
      if (rng.pci.readConfig(cap, 1) === 9 && rng.pci.readConfig(cap + 3, 1) === 5) window = cap;
    }
    latch(rngSlot, msix);
    vcpu.write(access(6), Uint8Array.of(0, 0x80));
    latch(rngSlot, window + 8);
    vcpu.write(access(4), Uint8Array.of(0x12, 0, 0, 0)); // num_queues
    latch(rngSlot, window + 12);
    vcpu.write(access(4), Uint8Array.of(2, 0, 0, 0));
    forwarded.length = 0;
    compareAll();
    // Only the access window's data dword reached the control loop, once for each of the 6 widths.
    expect(new Set(forwarded)).toEqual(new Set([0xcfc, 0xcfe, 0xcfd, 0xcff]));
    expect(forwarded.length).toBe(6);
    latch(rngSlot, window + 16);
    const numQueues = new Uint8Array(2);
    vcpu.read(access(4), numQueues);
    expect(numQueues[0]).toBe(1);
    expect(root.configRead(0, 1, 0, 0x10, 4)).toBe(0xfffff000);
  });
});
