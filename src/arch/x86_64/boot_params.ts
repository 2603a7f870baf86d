// boot_params.ts - the Linux zero page (struct boot_params) and its setup header.
//
// Offsets from Documentation/arch/x86/boot.rst ("THE REAL-MODE KERNEL HEADER") and
// arch/x86/include/uapi/asm/bootparam.h; all fields little-endian.
import type { GuestAddress, GuestMemory } from "../../memory/mod.ts";
import { KernelLoaderError } from "./kernel_image.ts";
import { E820_ENTRY_SIZE, E820_MAX_ENTRIES, type E820Entry } from "./e820.ts";

/** Byte offsets in struct boot_params (the setup header starts at 0x1f1). */
export const BOOT_PARAMS = {
  size: 4096,
  acpi_rsdp_addr: 0x070,
  ext_ramdisk_image: 0x0c0,
  ext_ramdisk_size: 0x0c4,
  ext_cmd_line_ptr: 0x0c8,
  alt_mem_k: 0x1e0,
  e820_entries: 0x1e8,
  hdr: 0x1f1,
  setup_sects: 0x1f1,
  syssize: 0x1f4,
  boot_flag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  version: 0x206,
  type_of_loader: 0x210,
  loadflags: 0x211,
  code32_start: 0x214,
  ramdisk_image: 0x218,
  ramdisk_size: 0x21c,
  heap_end_ptr: 0x224,
  cmd_line_ptr: 0x228,
  initrd_addr_max: 0x22c,
  kernel_alignment: 0x230,
  relocatable_kernel: 0x234,
  min_alignment: 0x235,
  xloadflags: 0x236,
  cmdline_size: 0x238,
  hardware_subarch: 0x23c,
  payload_offset: 0x248,
  payload_length: 0x24c,
  setup_data: 0x250,
  pref_address: 0x258,
  init_size: 0x260,
  e820_table: 0x2d0,
} as const;

/** "HdrS", the setup header magic. */
export const HDRS_MAGIC = 0x53726448;
export const BOOT_FLAG_MAGIC = 0xaa55;
/** type_of_loader 0xff: "undefined" boot loader (no assigned id). */
export const LOADER_TYPE_UNDEFINED = 0xff;
export const LOADFLAGS = { LOADED_HIGH: 0x01, KEEP_SEGMENTS: 0x40, CAN_USE_HEAP: 0x80 } as const;
export const XLOADFLAGS = { XLF_KERNEL_64: 0x01, XLF_CAN_BE_LOADED_ABOVE_4G: 0x02 } as const;

/** What tsvm writes into the zero page beyond the kernel's own setup header. */
export type BootParamsSpec = {
  /** The kernel's setup header (bytes 0x1f1.. of a bzImage), or null for an ELF vmlinux. */
  readonly setupHeader: Uint8Array | null;
  readonly cmdlineAddress: number;
  readonly cmdlineSize: number;
  readonly initrd: { readonly address: number; readonly size: number } | null;
  readonly e820: readonly E820Entry[];
  /** Physical address of the ACPI RSDP (boot protocol 2.14 reads it from the zero page). */
  readonly acpiRsdp: number;
};

/** Builds the 4 KiB zero page. */
export function buildBootParams(spec: BootParamsSpec): Uint8Array {
  const page = new Uint8Array(BOOT_PARAMS.size);
  const view = new DataView(page.buffer);
  if (spec.setupHeader) {
    page.set(spec.setupHeader.subarray(0, BOOT_PARAMS.size - BOOT_PARAMS.hdr), BOOT_PARAMS.hdr);
  } else {
    view.setUint16(BOOT_PARAMS.boot_flag, BOOT_FLAG_MAGIC, true);
    view.setUint32(BOOT_PARAMS.header, HDRS_MAGIC, true);
    view.setUint32(BOOT_PARAMS.kernel_alignment, 0x1000000, true);
  }
  view.setUint8(BOOT_PARAMS.type_of_loader, LOADER_TYPE_UNDEFINED);
  view.setUint8(BOOT_PARAMS.loadflags, view.getUint8(BOOT_PARAMS.loadflags) | LOADFLAGS.LOADED_HIGH | LOADFLAGS.CAN_USE_HEAP);
  // heap_end_ptr: end of the setup heap relative to the real-mode code (0xe000 - 0x200 as boot.rst suggests)
  view.setUint16(BOOT_PARAMS.heap_end_ptr, 0xfe00, true);
  view.setUint32(BOOT_PARAMS.cmd_line_ptr, spec.cmdlineAddress, true);
  view.setUint32(BOOT_PARAMS.ext_cmd_line_ptr, 0, true);
  if (spec.setupHeader === null) view.setUint32(BOOT_PARAMS.cmdline_size, spec.cmdlineSize, true);
  if (spec.initrd) {
    view.setUint32(BOOT_PARAMS.ramdisk_image, spec.initrd.address, true);
    view.setUint32(BOOT_PARAMS.ramdisk_size, spec.initrd.size, true);
  }
  view.setBigUint64(BOOT_PARAMS.acpi_rsdp_addr, BigInt(spec.acpiRsdp), true);
  if (spec.e820.length > E820_MAX_ENTRIES) throw new RangeError(`too many e820 entries: ${spec.e820.length}`);
  view.setUint8(BOOT_PARAMS.e820_entries, spec.e820.length);
  spec.e820.forEach((e, i) => {
    const at = BOOT_PARAMS.e820_table + i * E820_ENTRY_SIZE;
    view.setBigUint64(at, BigInt(e.address), true);
    view.setBigUint64(at + 8, BigInt(e.size), true);
    view.setUint32(at + 16, e.type, true);
  });
  return page;
}

/** Writes the command line NUL-terminated at `address`; throws when it exceeds `maxSize` with the NUL. */
export function writeCmdline(memory: GuestMemory, address: GuestAddress, cmdline: string, maxSize: number): void {
  const bytes = new TextEncoder().encode(`${cmdline}\0`);
  if (bytes.length > maxSize) {
    throw new KernelLoaderError("cmdline_too_long", `command line is ${bytes.length - 1} bytes; the kernel accepts at most ${maxSize - 1}`);
  }
  memory.write(address, bytes);
}
