import { describe, expect, test } from "bun:test";
import { loadInitrd, loadKernel } from "../../../src/arch/x86_64/kernel_loader.ts";
import { GuestMemory, guestAddress as ga } from "../../../src/memory/mod.ts";
import { craftBzImage, craftElf } from "../../support/images.ts";

const MIB = 1024 * 1024;
const RAM = 64 * MIB;
const memory = (): GuestMemory => GuestMemory.fromBuffers([{ base: 0, bytes: new Uint8Array(RAM) }]);

describe("loadKernel", () => {
  test("takes ELF first and bzImage second", () => {
    const elf = craftElf({ entry: 0x200000, segments: [{ paddr: 0x200000, data: Uint8Array.of(0xf4) }] });
    expect(loadKernel(memory(), elf, RAM).format).toBe("elf");
    expect(loadKernel(memory(), craftBzImage(), RAM).format).toBe("bzimage");
  });

  test("rejects a file that is neither", () => {
    expect(() => loadKernel(memory(), new TextEncoder().encode("#!/bin/sh\n"), RAM)).toThrow(/neither an ELF file nor a bzImage/);
  });
});

describe("loadInitrd", () => {
  const kernel = { format: "elf", entry: 0x200000, end: 0x300000, setupHeader: null, cmdlineMaxSize: 2048, initrdAddressMax: 0x37ffffff } as const;

  test("places the initrd page-aligned at the top of low RAM", () => {
    const mem = memory();
    const address = loadInitrd(mem, kernel, Uint8Array.of(1, 2, 3), RAM);
    expect(address).toBe(RAM - 4096);
    expect([...mem.slice(ga(address), 3)!]).toEqual([1, 2, 3]);
  });

  test("respects the kernel's initrd_addr_max", () => {
    const address = loadInitrd(memory(), { ...kernel, initrdAddressMax: 0x1ffffff }, new Uint8Array(5000), RAM);
    expect(address).toBe(0x2000000 - 8192);
  });

  test("rejects an initrd that would overlap the kernel", () => {
    expect(() => loadInitrd(memory(), kernel, new Uint8Array(RAM - 0x200000), RAM)).toThrow(/does not fit/);
  });
});
