import { describe, expect, test } from "bun:test";
import { COALESCED_RING_ENTRIES, CoalescedRing } from "../../src/kvm/coalesced_ring.ts";
import { PciConfigIo, type PciConfigTarget } from "../../src/devices/pci/pci_config_io.ts";

const PAGE = 4096;
const RING_PAGE = 2;

/** A vCPU mapping with the ring at RING_PAGE, and a writer that appends as KVM does. */
function fakeMapping(): { mapping: Uint8Array; append: (address: number, bytes: number[], pio?: boolean) => void; first: () => number } {
  const mapping = new Uint8Array(3 * PAGE);
  const ring = new DataView(mapping.buffer, RING_PAGE * PAGE, PAGE);
  return {
    mapping,
    append: (address, bytes, pio = true) => {
      const last = ring.getUint32(4, true);
      const at = 8 + last * 24;
      ring.setBigUint64(at, BigInt(address), true);
      ring.setUint32(at + 8, bytes.length, true);
      ring.setUint32(at + 12, pio ? 1 : 0, true);
      bytes.forEach((b, i) => ring.setUint8(at + 16 + i, b));
      ring.setUint32(4, (last + 1) % COALESCED_RING_ENTRIES, true);
    },
    first: () => ring.getUint32(0, true),
  };
}

describe("CoalescedRing", () => {
  test("applies the writes KVM appended, oldest first, and gives their entries back", () => {
    const { mapping, append, first } = fakeMapping();
    const ring = new CoalescedRing(mapping, { page: RING_PAGE, lock: new SharedArrayBuffer(4) });
    append(0xcf8, [1, 0, 0, 0x80]);
    append(0xcf9, [6]);
    append(0xfee0_0000, [1, 2], false);
    const seen: [number, number[], boolean][] = [];
    ring.drain((address, data, pio) => seen.push([address, [...data], pio]));
    expect(seen).toEqual([[0xcf8, [1, 0, 0, 0x80], true], [0xcf9, [6], true], [0xfee0_0000, [1, 2], false]]);
    expect(first()).toBe(3);
    ring.drain(() => seen.push([0, [], false]));
    expect(seen.length).toBe(3); // nothing new: nothing applied
  });

  test("follows the ring round its end", () => {
    const { mapping, append, first } = fakeMapping();
    const ring = new CoalescedRing(mapping, { page: RING_PAGE, lock: new SharedArrayBuffer(4) });
    const seen: number[] = [];
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 100; i++) append(0xcf8, [i, 0, 0, 0x80]);
      ring.drain((_address, data) => seen.push(data[0]!));
    }
    expect(seen).toEqual([0, 1, 2].flatMap(() => Array.from({ length: 100 }, (_, i) => i)));
    expect(first()).toBe(300 % COALESCED_RING_ENTRIES);
  });

  test("refuses a ring page outside the mapping", () => {
    expect(() => new CoalescedRing(new Uint8Array(2 * PAGE), { page: 2, lock: new SharedArrayBuffer(4) })).toThrow(/outside the vCPU mapping/);
  });
});

describe("PciConfigIo with coalesced address writes", () => {
  const target: PciConfigTarget = {
    configRead: (bus, slot, fn, offset) => (bus << 24) | (slot << 16) | (fn << 8) | offset,
    configWrite: () => {},
  };
  const access = (offset: number) => ({ offset, address: 0xcf8 + offset, vcpuId: 0 });

  test("a read of the data port sees the address written last, though that write never exited", () => {
    const { mapping, append } = fakeMapping();
    const io = new PciConfigIo(target, undefined, null, new CoalescedRing(mapping, { page: RING_PAGE, lock: new SharedArrayBuffer(4) }));
    append(0xcf8, [0x10, 0x18, 0x00, 0x80]); // bus 0, slot 3, function 0, register 0x10
    append(0xcf9, [0x06]); // a byte at 0xcf9 (reset control) changes nothing
    const data = new Uint8Array(4);
    io.read(access(4), data);
    expect(new DataView(data.buffer).getUint32(0, true)).toBe((3 << 16) | 0x10);
    io.read(access(0), data); // the address register reads back what was written
    expect(new DataView(data.buffer).getUint32(0, true)).toBe(0x8000_1810);
  });

  test("a write that did exit (the ring was full) still comes after the ones before it", () => {
    const { mapping, append } = fakeMapping();
    const io = new PciConfigIo(target, undefined, null, new CoalescedRing(mapping, { page: RING_PAGE, lock: new SharedArrayBuffer(4) }));
    append(0xcf8, [0x00, 0x08, 0x00, 0x80]);
    io.write(access(0), Uint8Array.of(0x04, 0x10, 0x00, 0x80));
    const data = new Uint8Array(4);
    io.read(access(0), data);
    expect(new DataView(data.buffer).getUint32(0, true)).toBe(0x8000_1004);
  });
});
