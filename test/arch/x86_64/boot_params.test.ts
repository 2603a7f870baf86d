import { describe, expect, test } from "bun:test";
import { BOOT_PARAMS, buildBootParams, writeCmdline } from "../../../src/arch/x86_64/boot_params.ts";
import { E820_TYPE } from "../../../src/arch/x86_64/e820.ts";
import { GuestMemory, guestAddress as ga } from "../../../src/memory/mod.ts";

const E820 = [{ address: 0, size: 0x9fc00, type: E820_TYPE.E820_RAM }, { address: 0x100000, size: 0xf00000, type: E820_TYPE.E820_RAM }];

describe("buildBootParams", () => {
  test("an ELF kernel gets a synthesized header, the command line and the e820 map", () => {
    const page = buildBootParams({ setupHeader: null, cmdlineAddress: 0x20000, cmdlineSize: 2047, initrd: null, e820: E820, acpiRsdp: 0xe0000 });
    const v = new DataView(page.buffer);
    expect({
      bootFlag: v.getUint16(BOOT_PARAMS.boot_flag, true),
      header: v.getUint32(BOOT_PARAMS.header, true),
      loader: page[BOOT_PARAMS.type_of_loader],
      cmdline: v.getUint32(BOOT_PARAMS.cmd_line_ptr, true),
      cmdlineSize: v.getUint32(BOOT_PARAMS.cmdline_size, true),
      entries: page[BOOT_PARAMS.e820_entries],
      secondAddress: v.getBigUint64(BOOT_PARAMS.e820_table + 20, true),
      secondType: v.getUint32(BOOT_PARAMS.e820_table + 20 + 16, true),
    }).toEqual({ bootFlag: 0xaa55, header: 0x53726448, loader: 0xff, cmdline: 0x20000, cmdlineSize: 2047, entries: 2, secondAddress: 0x100000n, secondType: 1 });
  });

  test("a bzImage's setup header is copied and the initrd recorded", () => {
    const header = new Uint8Array(0x26c - 0x1f1);
    header[BOOT_PARAMS.version - 0x1f1] = 0x0f;
    const page = buildBootParams({ setupHeader: header, cmdlineAddress: 0x20000, cmdlineSize: 0, initrd: { address: 0x800000, size: 1234 }, e820: E820, acpiRsdp: 0xe0000 });
    const v = new DataView(page.buffer);
    expect([page[BOOT_PARAMS.version], v.getUint32(BOOT_PARAMS.ramdisk_image, true), v.getUint32(BOOT_PARAMS.ramdisk_size, true)]).toEqual([0x0f, 0x800000, 1234]);
  });
});

describe("writeCmdline", () => {
  test("writes a NUL-terminated line", () => {
    const mem = GuestMemory.fromBuffers([{ base: 0, bytes: new Uint8Array(0x30000) }]);
    writeCmdline(mem, ga(0x20000), "console=ttyS0", 2048);
    expect(new TextDecoder().decode(mem.slice(ga(0x20000), 14)!)).toBe("console=ttyS0\0");
  });

  test("rejects a line longer than the kernel accepts", () => {
    const mem = GuestMemory.fromBuffers([{ base: 0, bytes: new Uint8Array(0x30000) }]);
    expect(() => writeCmdline(mem, ga(0x20000), "x".repeat(2048), 2048)).toThrow(/at most 2047/);
  });
});
