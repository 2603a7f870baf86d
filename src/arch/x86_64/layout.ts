// layout.ts - tsvm's x86-64 guest physical memory map.
//
//   0x0000_0000  RAM: real-mode area (GDT 0x500, zero page 0x7000, page tables 0x9000-0xefff)
//   0x0002_0000  kernel command line (CMDLINE_MAX_SIZE bytes)
//   0x0009_fc00  reserved: EBDA (MP table), VGA hole, ACPI tables at 0xe_0000, up to 1 MiB
//   0x0010_0000  RAM: kernel, initrd, the rest of low memory
//   0xd000_0000  32-bit MMIO hole: PCI BARs, then IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000,
//                TSS/identity map 0xfffb_c000 (reserved in e820)
//   0x1_0000_0000 RAM above 4 GiB, when --mem is larger than the space below the hole
import { guestAddress, MAX_REGION_SIZE, type RegionSpec } from "../../memory/mod.ts";

export const GDT_ADDRESS = guestAddress(0x500);
export const ZERO_PAGE_ADDRESS = guestAddress(0x7000);
export const BOOT_STACK_POINTER = 0x8ff0;
export const PML4_ADDRESS = guestAddress(0x9000);
export const PDPT_ADDRESS = 0xa000;
/** Four page directories of 2 MiB pages identity-map the first 4 GiB. */
export const PD_ADDRESS = 0xb000;
export const IDENTITY_MAPPED_GIB = 4;
export const CMDLINE_ADDRESS = guestAddress(0x20000);
/** x86 COMMAND_LINE_SIZE: Linux's limit when the kernel does not state its own (ELF vmlinux). */
export const CMDLINE_MAX_SIZE = 2048;
/** Start of the EBDA, where the MP table goes (Linux scans 639 KiB..640 KiB). */
export const EBDA_START = guestAddress(0x9fc00);
/** ACPI tables (RSDP first) in the BIOS read-only area Linux scans for "RSD PTR ". */
export const ACPI_ADDRESS = guestAddress(0xe0000);
export const HIGH_MEMORY_START = 0x100000;
export const MMIO_HOLE_START = 0xd000_0000;
export const FOUR_GIB = 0x1_0000_0000;
export const IOAPIC_ADDRESS = 0xfec0_0000;
export const LAPIC_ADDRESS = 0xfee0_0000;
/** KVM_SET_IDENTITY_MAP_ADDR page and the three-page TSS after it (Intel VMX needs both). */
export const IDENTITY_MAP_ADDRESS = 0xfffb_c000;
export const TSS_ADDRESS = 0xfffb_d000;
export const TSS_RESERVED_END = 0xfffc_0000;
/** 32-bit PCI MMIO window handed out to BARs (up to the IOAPIC). */
export const PCI_MMIO_START = MMIO_HOLE_START;
export const PCI_MMIO_END = IOAPIC_ADDRESS;
/** I/O port window for I/O BARs, above the legacy ISA ports. */
export const PCI_IO_START = 0xc000;
export const PCI_IO_END = 0x1_0000;
const GIB = 1024 * 1024 * 1024;
/** 64-bit BARs go in a 64 GiB window from the first GiB boundary above RAM and 4 GiB. */
const PCI_MMIO64_SIZE = 64 * GIB;

/** The windows PCI BARs are placed in ([start, end)), the same in the PCI root and the ACPI tables. */
export type PciWindows = {
  readonly io: readonly [number, number];
  readonly mmio32: readonly [number, number];
  readonly mmio64: readonly [number, number];
};

/** The PCI windows of a guest whose RAM ends at `memoryEnd`. */
export function pciWindows(memoryEnd: number): PciWindows {
  const mmio64Start = Math.ceil(Math.max(FOUR_GIB, memoryEnd) / GIB) * GIB;
  return { io: [PCI_IO_START, PCI_IO_END], mmio32: [PCI_MMIO_START, PCI_MMIO_END], mmio64: [mmio64Start, mmio64Start + PCI_MMIO64_SIZE] };
}

/** The smallest guest that tsvm builds: room for the boot structures and a small kernel. */
export const MIN_MEMORY_SIZE = 16 * 1024 * 1024;

/** Splits `memorySize` bytes of RAM around the 32-bit hole into regions of at most 4 GiB. */
export function memoryRegions(memorySize: number): RegionSpec[] {
  const low = Math.min(memorySize, MMIO_HOLE_START);
  const regions: RegionSpec[] = [{ base: 0, size: low }];
  let remaining = memorySize - low;
  let base = FOUR_GIB;
  while (remaining > 0) {
    const size = Math.min(remaining, MAX_REGION_SIZE);
    regions.push({ base, size });
    base += size;
    remaining -= size;
  }
  return regions;
}

/** One past the last byte of RAM below 4 GiB. */
export function lowMemoryEnd(memorySize: number): number {
  return Math.min(memorySize, MMIO_HOLE_START);
}
