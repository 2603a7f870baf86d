// bzimage.ts - loads a bzImage's protected-mode kernel for the 64-bit boot protocol (boot.rst).
import { type GuestMemory, guestAddress, hex } from "../../memory/mod.ts";
import { BOOT_FLAG_MAGIC, BOOT_PARAMS, HDRS_MAGIC, LOADFLAGS, XLOADFLAGS } from "./boot_params.ts";
import { HIGH_MEMORY_START } from "./layout.ts";
import { KernelLoaderError, type LoadedKernel } from "./kernel_image.ts";

/** Boot protocol 2.12 added xloadflags, which is where a kernel says it has a 64-bit entry. */
const MIN_PROTOCOL = 0x020c;
/** The 64-bit entry point is 0x200 bytes into the protected-mode kernel. */
const ENTRY_64_OFFSET = 0x200;
const SECTOR_SIZE = 512;

/** Returns whether `image` carries a setup header ("HdrS" and the 0xAA55 boot flag). */
export function isBzImage(image: Uint8Array): boolean {
  if (image.byteLength < BOOT_PARAMS.header + 4) return false;
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  return view.getUint16(BOOT_PARAMS.boot_flag, true) === BOOT_FLAG_MAGIC && view.getUint32(BOOT_PARAMS.header, true) === HDRS_MAGIC;
}

/** Validates a bzImage and copies its protected-mode kernel to the preferred load address. */
export function loadBzImage(memory: GuestMemory, image: Uint8Array, lowMemoryEnd: number): LoadedKernel {
  if (!isBzImage(image)) throw new KernelLoaderError("not_a_kernel", "not a bzImage (no 0xAA55 boot flag and HdrS header)");
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const headerEnd = BOOT_PARAMS.jump + 2 + view.getUint8(BOOT_PARAMS.jump + 1);
  if (image.byteLength < headerEnd || headerEnd < BOOT_PARAMS.init_size + 4) {
    throw new KernelLoaderError("truncated", "bzImage ends inside its setup header");
  }
  const version = view.getUint16(BOOT_PARAMS.version, true);
  if (version < MIN_PROTOCOL) {
    throw new KernelLoaderError("unsupported", `boot protocol ${version >> 8}.${version & 0xff} is older than 2.12 and has no 64-bit entry`);
  }
  if (!(view.getUint16(BOOT_PARAMS.xloadflags, true) & XLOADFLAGS.XLF_KERNEL_64)) {
    throw new KernelLoaderError("unsupported", "bzImage has no 64-bit entry point (XLF_KERNEL_64 not set)");
  }
  if (!(view.getUint8(BOOT_PARAMS.loadflags) & LOADFLAGS.LOADED_HIGH)) {
    throw new KernelLoaderError("bad_setup_header", "kernel is a zImage (LOADED_HIGH not set); only bzImage is supported");
  }
  const setupSects = view.getUint8(BOOT_PARAMS.setup_sects) || 4; // 0 means 4 (boot.rst)
  const kernelOffset = (setupSects + 1) * SECTOR_SIZE;
  const syssize = view.getUint32(BOOT_PARAMS.syssize, true) * 16;
  if (syssize === 0 || kernelOffset + syssize > image.byteLength) {
    throw new KernelLoaderError("truncated", `bzImage is truncated: the header promises ${syssize} bytes of kernel after offset ${kernelOffset}, the file has ${Math.max(0, image.byteLength - kernelOffset)}`);
  }
  const alignment = view.getUint32(BOOT_PARAMS.kernel_alignment, true);
  const relocatable = view.getUint8(BOOT_PARAMS.relocatable_kernel) !== 0;
  const preferred = Number(view.getBigUint64(BOOT_PARAMS.pref_address, true));
  const loadAddress = relocatable ? preferred : HIGH_MEMORY_START;
  if (alignment !== 0 && (alignment & (alignment - 1)) !== 0) {
    throw new KernelLoaderError("bad_setup_header", `kernel_alignment ${hex(alignment)} is not a power of two`);
  }
  if (relocatable && alignment !== 0 && loadAddress % alignment !== 0) {
    throw new KernelLoaderError("bad_setup_header", `pref_address ${hex(loadAddress)} is not aligned to kernel_alignment ${hex(alignment)}`);
  }
  const initSize = view.getUint32(BOOT_PARAMS.init_size, true);
  const kernelBytes = image.subarray(kernelOffset);
  const needed = Math.max(initSize, kernelBytes.byteLength);
  if (loadAddress < HIGH_MEMORY_START || loadAddress + needed > lowMemoryEnd) {
    throw new KernelLoaderError("does_not_fit", `kernel needs ${hex(loadAddress)}..${hex(loadAddress + needed)} (init_size ${needed} bytes) but RAM below the MMIO hole ends at ${hex(lowMemoryEnd)}; give the VM more memory`);
  }
  memory.write(guestAddress(loadAddress), kernelBytes);
  return {
    format: "bzimage",
    entry: loadAddress + ENTRY_64_OFFSET,
    end: loadAddress + needed,
    setupHeader: image.slice(BOOT_PARAMS.hdr, headerEnd),
    cmdlineMaxSize: view.getUint32(BOOT_PARAMS.cmdline_size, true) + 1,
    initrdAddressMax: view.getUint32(BOOT_PARAMS.initrd_addr_max, true),
  };
}
