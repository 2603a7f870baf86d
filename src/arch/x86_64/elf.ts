// elf.ts - loads an ELF64 x86-64 kernel (vmlinux, the test guest) by the physical addresses of its PT_LOADs.
import { type GuestAddress, type GuestMemory, guestAddressFromU64, hex } from "../../memory/mod.ts";
import { CMDLINE_MAX_SIZE, HIGH_MEMORY_START } from "./layout.ts";
import { type KernelLoadOptions, KernelLoaderError, type LoadedKernel } from "./kernel_image.ts";

/** ELF constants (System V gABI, x86-64 psABI). */
const ELFMAG = 0x464c457f; // "\x7fELF" read little-endian
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const EV_CURRENT = 1;
const ET_EXEC = 2;
const EM_X86_64 = 62;
const PT_LOAD = 1;
const ELF64_EHDR_SIZE = 64;
const ELF64_PHDR_SIZE = 56;
/** bounds the headers read from an untrusted file */
const MAX_PROGRAM_HEADERS = 256;
/** Linux's initrd_addr_max default when the kernel states none (boot.rst). */
const DEFAULT_INITRD_ADDRESS_MAX = 0x37ffffff;

/** Returns whether `image` starts with the ELF magic. */
export function isElf(image: Uint8Array): boolean {
  return image.byteLength >= 4 && new DataView(image.buffer, image.byteOffset).getUint32(0, true) === ELFMAG;
}

type Segment = { paddr: GuestAddress; offset: number; filesz: number; memsz: number };

/**
 * Validates `image` as an ELF64 x86-64 executable and copies its PT_LOAD segments into `memory`.
 * Each segment's part past its file bytes (.bss) must read as zero: it is cleared, unless the caller
 * says `memory` is all zeros already (a VM's new guest memory). Clearing it there only allocated the
 * pages: the built-in guest's .bss is ~17 MiB, ~2 ms of start-up and that much guest RAM in use
 * before its first instruction.
 */
export function loadElf(memory: GuestMemory, image: Uint8Array, options: KernelLoadOptions = {}): LoadedKernel {
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (image.byteLength < ELF64_EHDR_SIZE || !isElf(image)) {
    throw new KernelLoaderError("bad_elf_header", "not an ELF file (bad magic or shorter than an ELF header)");
  }
  if (image[4] !== ELFCLASS64) throw new KernelLoaderError("bad_elf_header", "ELF file is not 64-bit (EI_CLASS)");
  if (image[5] !== ELFDATA2LSB) throw new KernelLoaderError("bad_elf_header", "ELF file is not little-endian (EI_DATA)");
  if (image[6] !== EV_CURRENT) throw new KernelLoaderError("bad_elf_header", "unknown ELF version (EI_VERSION)");
  const type = view.getUint16(16, true);
  const machine = view.getUint16(18, true);
  if (machine !== EM_X86_64) {
    throw new KernelLoaderError("bad_elf_header", `ELF file is for machine ${machine}, not x86-64 (${EM_X86_64})`);
  }
  if (type !== ET_EXEC) throw new KernelLoaderError("bad_elf_header", `ELF file is type ${type}, not an executable (ET_EXEC)`);
  const entry = Number(view.getBigUint64(24, true));
  const phoff = Number(view.getBigUint64(32, true));
  const phentsize = view.getUint16(54, true);
  const phnum = view.getUint16(56, true);
  if (phentsize !== ELF64_PHDR_SIZE) throw new KernelLoaderError("bad_program_headers", `program header size is ${phentsize}, not ${ELF64_PHDR_SIZE}`);
  if (phnum === 0 || phnum > MAX_PROGRAM_HEADERS) throw new KernelLoaderError("bad_program_headers", `ELF file has ${phnum} program headers`);
  if (!Number.isSafeInteger(phoff) || phoff + phnum * phentsize > image.byteLength) {
    throw new KernelLoaderError("truncated", "program headers lie beyond the end of the file");
  }

  const segments: Segment[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (view.getUint32(at, true) !== PT_LOAD) continue;
    const paddr = guestAddressFromU64(view.getBigUint64(at + 24, true));
    if (paddr === null) throw new KernelLoaderError("does_not_fit", `segment ${i} has a physical address beyond the 52-bit address space`);
    const seg: Segment = {
      offset: Number(view.getBigUint64(at + 8, true)),
      paddr,
      filesz: Number(view.getBigUint64(at + 32, true)),
      memsz: Number(view.getBigUint64(at + 40, true)),
    };
    if (seg.filesz > seg.memsz) throw new KernelLoaderError("bad_program_headers", `segment ${i} has p_filesz > p_memsz`);
    if (!Number.isSafeInteger(seg.offset + seg.filesz) || seg.offset + seg.filesz > image.byteLength) {
      throw new KernelLoaderError("truncated", `segment ${i} (${seg.filesz} bytes at file offset ${seg.offset}) lies beyond the end of the file`);
    }
    if (seg.paddr < HIGH_MEMORY_START) {
      throw new KernelLoaderError("does_not_fit", `segment ${i} at ${hex(seg.paddr)} is below ${hex(HIGH_MEMORY_START)}, where tsvm keeps boot structures`);
    }
    if (!memory.isValidRange(seg.paddr, seg.memsz)) {
      throw new KernelLoaderError("does_not_fit", `segment ${i} (${hex(seg.paddr)}+${hex(seg.memsz)}) is outside guest RAM`);
    }
    segments.push(seg);
  }
  if (segments.length === 0) throw new KernelLoaderError("bad_program_headers", "ELF file has no PT_LOAD segment");
  segments.sort((a, b) => a.paddr - b.paddr);
  for (let i = 1; i < segments.length; i++) {
    const prev = segments[i - 1]!;
    if (segments[i]!.paddr < prev.paddr + prev.memsz) {
      throw new KernelLoaderError("bad_program_headers", `segments at ${hex(prev.paddr)} and ${hex(segments[i]!.paddr)} overlap`);
    }
  }
  if (!segments.some((s) => entry >= s.paddr && entry < s.paddr + s.memsz)) {
    throw new KernelLoaderError("bad_elf_header", `entry point ${hex(entry)} is not inside a loaded segment`);
  }
  for (const s of segments) {
    const dst = memory.slice(s.paddr, s.memsz)!;
    dst.set(image.subarray(s.offset, s.offset + s.filesz));
    if (!options.memoryIsZero) dst.fill(0, s.filesz);
  }
  const last = segments[segments.length - 1]!;
  return {
    format: "elf",
    entry,
    end: last.paddr + last.memsz,
    setupHeader: null,
    cmdlineMaxSize: CMDLINE_MAX_SIZE,
    initrdAddressMax: DEFAULT_INITRD_ADDRESS_MAX,
  };
}
