import { describe, expect, test } from "bun:test";
import { loadElf } from "../../../src/arch/x86_64/elf.ts";
import { GuestMemory, guestAddress as ga } from "../../../src/memory/mod.ts";
import { craftElf } from "../../support/images.ts";

const MIB = 1024 * 1024;
const memory = (): GuestMemory => GuestMemory.fromBuffers([{ base: 0, bytes: new Uint8Array(32 * MIB) }]);
const code = Uint8Array.of(0xf4, 0xeb, 0xfd);

describe("loadElf", () => {
  test("copies PT_LOAD segments to their physical addresses and zero-fills the rest", () => {
    const mem = memory();
    mem.writeU8(ga(0x200003), 0xee);
    const kernel = loadElf(mem, craftElf({ entry: 0x200000, segments: [{ paddr: 0x200000, data: code, memsz: 0x10 }] }));
    expect({ entry: kernel.entry, end: kernel.end, format: kernel.format }).toEqual({ entry: 0x200000, end: 0x200010, format: "elf" });
    expect([...mem.slice(ga(0x200000), 5)!]).toEqual([0xf4, 0xeb, 0xfd, 0, 0]);
  });

  test("memory said to read as zeros (a VM's new guest memory) gets no .bss writes: its pages stay untouched", () => {
    const mem = memory();
    mem.writeU8(ga(0x200005), 0xee); // not zero after all: shows that nothing wrote there
    loadElf(mem, craftElf({ entry: 0x200000, segments: [{ paddr: 0x200000, data: code, memsz: 0x10 }] }), { memoryIsZero: true });
    expect([...mem.slice(ga(0x200000), 6)!]).toEqual([0xf4, 0xeb, 0xfd, 0, 0, 0xee]);
  });

  test("rejects a file without the ELF magic", () => {
    expect(() => loadElf(memory(), new Uint8Array(64))).toThrow(/not an ELF file/);
  });

  test("rejects an ELF for another machine", () => {
    const elf = craftElf({ entry: 0x200000, machine: 183, segments: [{ paddr: 0x200000, data: code }] });
    expect(() => loadElf(memory(), elf)).toThrow(/machine 183, not x86-64/);
  });

  test("rejects a 32-bit ELF", () => {
    const elf = craftElf({ entry: 0x200000, klass: 1, segments: [{ paddr: 0x200000, data: code }] });
    expect(() => loadElf(memory(), elf)).toThrow(/not 64-bit/);
  });

  test("rejects overlapping segments", () => {
    const elf = craftElf({ entry: 0x200000, segments: [{ paddr: 0x200000, data: code, memsz: 0x1000 }, { paddr: 0x200800, data: code }] });
    expect(() => loadElf(memory(), elf)).toThrow(/overlap/);
  });

  test("rejects a segment outside guest RAM", () => {
    const elf = craftElf({ entry: 0x200000, segments: [{ paddr: 0x200000, data: code }, { paddr: 64 * MIB, data: code }] });
    expect(() => loadElf(memory(), elf)).toThrow(/outside guest RAM/);
  });

  test("rejects a segment over the boot structures below 1 MiB", () => {
    const elf = craftElf({ entry: 0x7000, segments: [{ paddr: 0x7000, data: code }] });
    expect(() => loadElf(memory(), elf)).toThrow(/below 0x100000/);
  });

  test("rejects a truncated file", () => {
    const elf = craftElf({ entry: 0x200000, segments: [{ paddr: 0x200000, data: new Uint8Array(256) }] });
    expect(() => loadElf(memory(), elf.subarray(0, elf.byteLength - 10))).toThrow(/beyond the end of the file/);
  });

  test("rejects an entry point outside every segment", () => {
    const elf = craftElf({ entry: 0x300000, segments: [{ paddr: 0x200000, data: code }] });
    expect(() => loadElf(memory(), elf)).toThrow(/entry point 0x300000/);
  });

  test("rejects a file with no PT_LOAD", () => {
    const elf = craftElf({ entry: 0x200000, segments: [{ paddr: 0x200000, data: code, type: 4 }] });
    expect(() => loadElf(memory(), elf)).toThrow(/no PT_LOAD/);
  });
});
