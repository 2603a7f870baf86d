import { describe, expect, test } from "bun:test";
import { loadBzImage } from "../../../src/arch/x86_64/bzimage.ts";
import { GuestMemory, guestAddress as ga } from "../../../src/memory/mod.ts";
import { craftBzImage } from "../../support/images.ts";

const MIB = 1024 * 1024;
const RAM = 64 * MIB;
const memory = (): GuestMemory => GuestMemory.fromBuffers([{ base: 0, bytes: new Uint8Array(RAM) }]);

describe("loadBzImage", () => {
  test("loads the protected-mode kernel at pref_address with the 64-bit entry 0x200 in", () => {
    const mem = memory();
    const kernel = loadBzImage(mem, craftBzImage(), RAM);
    expect({ entry: kernel.entry, end: kernel.end, cmdlineMaxSize: kernel.cmdlineMaxSize }).toEqual({ entry: 0x1000200, end: 0x1010000, cmdlineMaxSize: 2048 });
    expect([...mem.slice(ga(0x1000000), 4)!]).toEqual([0, 1, 2, 3]);
    expect(kernel.setupHeader!.byteLength).toBe(0x26c - 0x1f1);
  });

  test("a non-relocatable kernel goes to 1 MiB", () => {
    expect(loadBzImage(memory(), craftBzImage({ relocatable: false }), RAM).entry).toBe(0x100200);
  });

  test("rejects a truncated image", () => {
    expect(() => loadBzImage(memory(), craftBzImage({ truncateBy: 100 }), RAM)).toThrow(/truncated/);
  });

  test("rejects boot protocols before 2.12", () => {
    expect(() => loadBzImage(memory(), craftBzImage({ version: 0x020a }), RAM)).toThrow(/older than 2.12/);
  });

  test("rejects a kernel without a 64-bit entry", () => {
    expect(() => loadBzImage(memory(), craftBzImage({ xloadflags: 0 }), RAM)).toThrow(/XLF_KERNEL_64/);
  });

  test("rejects a zImage", () => {
    expect(() => loadBzImage(memory(), craftBzImage({ loadflags: 0 }), RAM)).toThrow(/zImage/);
  });

  test("rejects a kernel whose init_size does not fit in RAM", () => {
    expect(() => loadBzImage(memory(), craftBzImage({ initSize: 60 * MIB }), RAM)).toThrow(/give the VM more memory/);
  });

  test("rejects a misaligned pref_address", () => {
    expect(() => loadBzImage(memory(), craftBzImage({ prefAddress: 0x1001000 }), RAM)).toThrow(/not aligned/);
  });
});
