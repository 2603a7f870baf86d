// gdt.ts - the boot GDT and the segment registers the Linux 64-bit boot protocol expects.
import type { Segment } from "../../kvm/kvm_structs.ts";

/** Selectors: Linux's __BOOT_CS and __BOOT_DS, then the TSS. */
export const BOOT_CS = 0x10;
export const BOOT_DS = 0x18;
export const BOOT_TSS = 0x20;

/** Packs a segment descriptor from its flags (bits 8-15 access, 20-23 granularity/size), base and limit. */
export function gdtEntry(flags: number, base: number, limit: number): bigint {
  const b = BigInt(base);
  const l = BigInt(limit);
  const f = BigInt(flags);
  return ((b & 0xff000000n) << 32n) | ((f & 0x0000f0ffn) << 40n) | ((l & 0x000f0000n) << 32n) |
    ((b & 0x00ffffffn) << 16n) | (l & 0x0000ffffn);
}

/** null, null, 64-bit code (0x10), data (0x18), 64-bit TSS (0x20). */
export const BOOT_GDT: readonly bigint[] = [
  0n,
  0n,
  gdtEntry(0xa09b, 0, 0xfffff),
  gdtEntry(0xc093, 0, 0xfffff),
  gdtEntry(0x808b, 0, 0xfffff),
];

/** Decodes a descriptor into the kvm_segment KVM wants for `selector`. */
export function segmentFromEntry(entry: bigint, selector: number): Segment {
  const bits = (shift: bigint, mask: bigint): number => Number((entry >> shift) & mask);
  const rawLimit = bits(0n, 0xffffn) | (bits(48n, 0xfn) << 16);
  const granular = bits(55n, 1n) === 1;
  return {
    base: BigInt(bits(16n, 0xffffffn) | (bits(56n, 0xffn) << 24)),
    // KVM takes the byte-granular limit: with G set, the 20-bit limit counts 4 KiB pages.
    limit: granular ? ((rawLimit * 0x1000 + 0xfff) >>> 0) : rawLimit,
    selector,
    type: bits(40n, 0xfn),
    present: bits(47n, 1n),
    dpl: bits(45n, 3n),
    db: bits(54n, 1n),
    s: bits(44n, 1n),
    l: bits(53n, 1n),
    g: bits(55n, 1n),
    avl: bits(52n, 1n),
    unusable: bits(47n, 1n) === 1 ? 0 : 1,
  };
}
