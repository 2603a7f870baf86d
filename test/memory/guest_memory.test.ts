import { describe, expect, test } from "bun:test";
import { toArrayBuffer } from "bun:ffi";
import { closeSync, openSync, readFileSync, readSync, writeFileSync } from "node:fs";
import { release } from "node:os";
import { join } from "node:path";
import { diskTransfer } from "../../ffi/aio.ts";
import { tempDir } from "../support/tsvm.ts";
import { sys } from "../../ffi/mod.ts";
import {
  checkedAdd, guestAddress, guestAddress as ga, guestAddressFromHalves, guestAddressFromU64, GuestMemory, mapForWriting,
} from "../../src/memory/mod.ts";

const PAGE = 4096;
const F_GET_SEALS = 1034;
const F_SEAL_SEAL = 1;
const F_SEAL_SHRINK = 2;
const F_SEAL_GROW = 4;

describe("GuestMemory", () => {
  test("create maps one memfd that every region shares", () => {
    using mem = GuestMemory.create([{ base: 0, size: 4 * PAGE }, { base: 0x1_0000_0000, size: 2 * PAGE }]);
    mem.writeU32(ga(0x1_0000_0004), 0xdeadbeef);
    expect(mem.readU32(ga(0x1_0000_0004))).toBe(0xdeadbeef);
    const [low, high] = mem.regions;
    expect([mem.size, mem.end, low!.fd === high!.fd, low!.fdOffset, high!.fdOffset]).toEqual([6 * PAGE, 0x1_0000_2000, true, 0, 4 * PAGE]);
  });

  test("the memfd is sealed: no process it is shared with can shrink or grow it", () => {
    using mem = GuestMemory.create([{ base: 0, size: PAGE }]);
    const fd = mem.regions[0]!.fd;
    // (The kernel may add F_SEAL_EXEC of its own, where vm.memfd_noexec asks for it.)
    expect(sys.fcntlIntRaw(fd, F_GET_SEALS, 0) & (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW)).toBe(F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW);
    expect(sys.ftruncateRaw(fd, 0)).toBe(-1); // EPERM
  });

  test("the creator's mapping and a device's are advised for huge pages", () => {
    using mem = GuestMemory.create([{ base: 0, size: 4 << 20 }]);
    const fd = sys.dup(mem.regions[0]!.fd);
    using other = GuestMemory.fromMappings([{ base: ga(0), size: 4 << 20, fd, fdOffset: 0 }]);
    // smaps lists VM_HUGEPAGE as "hg" among a mapping's VmFlags, whatever the host then gives it.
    const flagsOf = (address: number): string[] => {
      const smaps = readFileSync("/proc/self/smaps", "utf8").split("\n");
      const at = smaps.findIndex((l) => l.startsWith(`${address.toString(16)}-`));
      return smaps.slice(at).find((l) => l.startsWith("VmFlags:"))!.split(/\s+/).slice(1);
    };
    expect(flagsOf(mem.regions[0]!.hostAddress)).toContain("hg");
    expect(flagsOf(other.regions[0]!.hostAddress)).toContain("hg");
  });

  test("mapForWriting maps every page of a device's view of guest memory, and changes no byte", () => {
    const MIB = 1 << 20;
    const KIB = 1024;
    using mem = GuestMemory.create([{ base: 0, size: 4 * MIB }]);
    const fd = mem.regions[0]!.fd;
    // The guest's pages exist in the memfd (written through the file, so no mapping holds them yet).
    const pattern = new Uint8Array(MIB).map((_, i) => (i * 7) & 0xff);
    expect(sys.pwriteRaw(fd, pattern, MIB)).toBe(MIB);
    using device = GuestMemory.fromMappings([{ base: ga(0), size: 4 * MIB, fd: sys.dup(fd), fdOffset: 0 }]);
    const host = device.regions[0]!.hostAddress;
    // Whether the page at `offset` is mapped in this process (bit 63 of its /proc/self/pagemap entry).
    const pagemap = openSync("/proc/self/pagemap", "r");
    const mapped = (offset: number): boolean => {
      const entry = Buffer.alloc(8);
      readSync(pagemap, entry, 0, 8, Math.floor((host + offset) / PAGE) * 8);
      return (entry.readBigUInt64LE(0) >> 63n) === 1n;
    };
    try {
      // A view over the second half of one 64 KiB span and the first half of the next, whose last
      // page a write already mapped (a write maps its page alone): the read that would have mapped
      // the rest of that span around it finds its page mapped and does not fault.
      device.slice(ga(MIB + 92 * KIB), 1)![0] = pattern[92 * KIB]!;
      const view = device.slice(ga(MIB + 32 * KIB), 64 * KIB)!;
      const pages = Array.from({ length: 16 }, (_, i) => MIB + 32 * KIB + i * PAGE);
      expect(pages.filter(mapped).length).toBe(1);
      mapForWriting([view, new Uint8Array(0)]);
      expect(pages.filter((p) => !mapped(p))).toEqual([]);
      expect(device.slice(ga(MIB), MIB)!.every((b, i) => b === pattern[i])).toBe(true);
    } finally {
      closeSync(pagemap);
    }
  });

  test("an access that would cross out of a region is refused, not truncated", () => {
    using mem = GuestMemory.create([{ base: 0, size: PAGE }, { base: PAGE, size: PAGE }]);
    expect(mem.slice(ga(PAGE - 2), 4)).toBeNull();
    expect(() => mem.readU32(ga(PAGE - 2))).toThrow(/not inside guest RAM/);
    expect(mem.slice(ga(PAGE), 4)).not.toBeNull();
  });

  test("addresses outside RAM are refused", () => {
    using mem = GuestMemory.create([{ base: 0, size: PAGE }]);
    expect(mem.isValidRange(ga(PAGE), 1)).toBe(false);
    expect(mem.isValidRange(ga(0), PAGE + 1)).toBe(false);
    expect(() => mem.write(ga(PAGE - 1), Uint8Array.of(1, 2))).toThrow();
  });

  test("fromMappings sees the same bytes as the creator, at any offset in the file", () => {
    using mem = GuestMemory.create([{ base: 0, size: 2 * PAGE }]);
    mem.writeU8(ga(PAGE + 10), 42);
    const fd = sys.dup(mem.regions[0]!.fd);
    using other = GuestMemory.fromMappings([{ base: ga(0x10_0000), size: PAGE, fd, fdOffset: PAGE }]);
    expect(other.readU8(ga(0x10_0000 + 10))).toBe(42);
  });

  test("fromMappings refuses overlapping regions", () => {
    expect(() => GuestMemory.fromMappings([{ base: ga(0), size: 2 * PAGE, fd: 0, fdOffset: 0 }, { base: ga(PAGE), size: PAGE, fd: 0, fdOffset: 0 }])).toThrow(/overlaps/);
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

  test("guest u64 values at or above 2^52 are not addresses, so 2^53 and up never lose precision", () => {
    expect<unknown[]>([guestAddressFromU64(2n ** 52n - 1n), guestAddressFromU64(2n ** 52n), guestAddressFromU64(2n ** 64n - 1n)]).toEqual([2 ** 52 - 1, null, null]);
    expect<unknown[]>([guestAddressFromHalves(0xffff_ffff, 0xf_ffff), guestAddressFromHalves(0, 0x10_0000), guestAddressFromHalves(1, 0xffff_ffff)]).toEqual([2 ** 52 - 1, null, null]);
  });
});

// Guest memory under O_DIRECT transfers is collapsed into huge pages (c/sys.c, tsvm_prefer_huge).
describe("huge pages for O_DIRECT transfers", () => {
  const HUGE = 2 * 1024 * 1024;
  const O_RDONLY_DIRECT_CLOEXEC = 0o40000 | 0o2000000;

  /** ShmemPmdMapped of the mapping of this process that holds `address` (KiB). */
  function pmdMappedKib(address: number): number {
    let inside = false;
    for (const line of readFileSync("/proc/self/smaps", "utf8").split("\n")) {
      const range = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
      if (range) inside = parseInt(range[1]!, 16) <= address && address < parseInt(range[2]!, 16);
      const m = /^ShmemPmdMapped:\s+(\d+) kB/.exec(line);
      if (inside && m) return Number(m[1]);
    }
    return -1;
  }

  test("guest memory is mapped 2 MiB aligned with its file, also from a file offset that is not", () => {
    using mem = GuestMemory.create([{ base: 0, size: 2 * HUGE }, { base: 0x1_0000_0000, size: HUGE + PAGE }]);
    for (const r of mem.regions) expect((r.hostAddress - r.fdOffset) % HUGE).toBe(0);
    using mapped = GuestMemory.fromMappings([{ base: ga(0), size: HUGE, fd: sys.dup(mem.regions[0]!.fd), fdOffset: 3 * PAGE }]);
    expect((mapped.regions[0]!.hostAddress - 3 * PAGE) % HUGE).toBe(0);
    mapped.writeU32(ga(0), 0x12345678);
    expect(mem.readU32(ga(3 * PAGE))).toBe(0x12345678);
  });

  test("an O_DIRECT read into a registered range collapses the 2 MiB block it lands in; a buffered one, or an unregistered range, does not", () => {
    const [major, minor] = release().split(".").map(Number) as [number, number];
    if (major * 100 + minor < 601) return console.warn("skipping: MADV_COLLAPSE needs Linux 6.1");
    const path = join(tempDir(), "disk.img");
    writeFileSync(path, Uint8Array.from({ length: 1 << 20 }, (_, i) => (i * 13) & 0xff));
    const direct = sys.openRaw(path, O_RDONLY_DIRECT_CLOEXEC);
    if (direct < 0) return console.warn(`skipping: the temporary directory does not support O_DIRECT (errno ${-direct})`);
    const buffered = sys.openRaw(path, 0o2000000);
    const fd = sys.memfdCreate("huge_test", 1);
    try {
      sys.ftruncate(fd, 4 * HUGE);
      // One mapping per 2 MiB block, as smaps counts huge pages per mapping.
      const blocks = [0, 1, 2, 3].map((k) => sys.mmapAligned(HUGE, 3, 1, fd, k * HUGE, HUGE));
      for (const address of blocks) expect(address % HUGE).toBe(0);
      for (const k of [0, 1, 2]) expect(sys.hugeRangeAdd(blocks[k]!, HUGE)).toBe(0); // the 4th stays out
      const view = (k: number): Uint8Array => new Uint8Array(toArrayBuffer(blocks[k]!, 65536, 65536));
      expect(diskTransfer(buffered, [view(0)], 65536, 1, false)).toBe(0);
      for (let i = 0; i < 2; i++) expect(diskTransfer(direct, [view(3)], 65536, 4096, false)).toBe(0);
      expect([pmdMappedKib(blocks[0]!), pmdMappedKib(blocks[3]!)]).toEqual([0, 0]);
      // The block's first transfer finds it empty (nothing to collapse); the second collapses it.
      for (let i = 0; i < 2; i++) expect(diskTransfer(direct, [view(1)], 65536, 4096, false)).toBe(0);
      expect(pmdMappedKib(blocks[1]!)).toBe(2048);
      expect(Buffer.from(view(1)).equals(readFileSync(path).subarray(65536, 131072))).toBe(true);
      sys.hugeRangeRemove(blocks[2]!, HUGE);
      for (let i = 0; i < 2; i++) expect(diskTransfer(direct, [view(2)], 65536, 4096, false)).toBe(0);
      expect(pmdMappedKib(blocks[2]!)).toBe(0); // forgotten: not collapsed
      for (const k of [0, 1]) sys.hugeRangeRemove(blocks[k]!, HUGE);
      for (const address of blocks) sys.munmap(address, HUGE);
    } finally {
      for (const f of [fd, direct, buffered]) sys.close(f);
    }
  });
});
