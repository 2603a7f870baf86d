import { describe, expect, test } from "bun:test";
import { Balloon } from "../../../src/devices/virtio/balloon.ts";
import { GuestMemory, guestAddress as ga } from "../../../src/memory/mod.ts";
import { COMMON, VirtioPciDriver } from "../../support/virtio_pci_driver.ts";

const VERSION_1 = 1n << 32n;
const STATS_VQ = 1n << 1n;
const RAM = 1 << 20;
const DEVICE_CFG = 0x2000;

function setup() {
  const memory = GuestMemory.create([{ base: 0, size: RAM }]);
  const released: number[] = [];
  // One region at file offset 0: the offsets punched are the guest addresses.
  const balloon = new Balloon((fd, offset) => {
    if (fd !== memory.regions[0]!.fd) return false;
    released.push(offset);
    return true;
  });
  const d = new VirtioPciDriver(balloon, memory);
  expect(d.negotiate(VERSION_1 | STATS_VQ)).toBe(true);
  d.setupQueue(0, 8, 0x1000, 0x1800, 0x1c00);
  d.setupQueue(1, 8, 0x2000, 0x2800, 0x2c00);
  d.setupQueue(2, 8, 0x3000, 0x3800, 0x3c00);
  d.driverOk();
  /** Posts one buffer on a queue whose rings are at `base`. */
  const post = (base: number, address: number, length: number): void => {
    memory.writeU64(ga(base), BigInt(address));
    memory.writeU32(ga(base + 8), length);
    memory.writeU16(ga(base + 12), 0);
    const idx = memory.readU16(ga(base + 0x802));
    memory.writeU16(ga(base + 0x804 + 2 * (idx % 8)), 0);
    memory.writeU16(ga(base + 0x802), idx + 1);
  };
  return { memory, balloon, d, released, post };
}

describe("Balloon", () => {
  test("inflated PFNs are released; PFNs outside RAM are ignored", () => {
    const { memory, balloon, d, released, post } = setup();
    memory.writeU32(ga(0x10000), 0x20);
    memory.writeU32(ga(0x10004), 0xfffff); // beyond the 1 MiB of RAM
    post(0x1000, 0x10000, 8);
    d.kick(0);
    expect([released, balloon.inflatedPages, memory.readU16(ga(0x1c02))]).toEqual([[0x20000], 1, 1]);
  });

  test("a buffer of more than 1024 page numbers is returned unused; a page named again at once is released once", () => {
    const { memory, balloon, d, released, post } = setup();
    for (let i = 0; i < 1025; i++) memory.writeU32(ga(0x10000 + 4 * i), 0x20);
    post(0x1000, 0x10000, 4 * 1025); // before: 1025 system calls for one page; a hostile chain, millions
    d.kick(0);
    expect([released.length, memory.readU16(ga(0x1c02))]).toEqual([0, 1]);
    post(0x1000, 0x10000, 4 * 1024);
    d.kick(0);
    expect([released, balloon.inflatedPages, memory.readU16(ga(0x1c02))]).toEqual([[0x20000], 1, 2]);
  });

  test("setTarget updates num_pages and raises a configuration interrupt", () => {
    const { balloon, d } = setup();
    d.write(COMMON.MSIX_CFG, 0xffff, 2); // no MSI-X: INTx and the ISR
    balloon.setTarget(300);
    expect([d.read(DEVICE_CFG, 4), d.read(0x1000, 1) & 2, d.intx.level]).toEqual([300, 2, false]);
  });

  test("the driver's actual field is recorded", () => {
    const { balloon, d } = setup();
    d.write(DEVICE_CFG + 4, 12, 4);
    expect(balloon.actualPages).toBe(12);
  });

  test("stats are read from the buffer the guest posts, which is returned when the host asks again", () => {
    const { memory, balloon, d, post } = setup();
    memory.writeU16(ga(0x11000), 4);
    memory.writeU64(ga(0x11002), 1234n);
    memory.writeU16(ga(0x1100a), 5);
    memory.writeU64(ga(0x1100c), 5678n);
    post(0x3000, 0x11000, 20);
    d.kick(2);
    expect([balloon.stats, memory.readU16(ga(0x3c02))]).toEqual([{ free_memory: 1234, total_memory: 5678 }, 0]);
    balloon.requestStats();
    expect(memory.readU16(ga(0x3c02))).toBe(1);
  });
});
