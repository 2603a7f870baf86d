// e820.ts - the e820 memory map tsvm reports to the guest (Linux boot protocol, zero page 0x2d0).
import type { RegionSpec } from "../../memory/mod.ts";
import { EBDA_START, HIGH_MEMORY_START, IDENTITY_MAP_ADDRESS, TSS_RESERVED_END } from "./layout.ts";

/** e820 entry types (ACPI address range types). */
export const E820_TYPE = { E820_RAM: 1, E820_RESERVED: 2 } as const;
export type E820Type = (typeof E820_TYPE)[keyof typeof E820_TYPE];

export type E820Entry = { readonly address: number; readonly size: number; readonly type: E820Type };

/** The zero page holds at most 128 entries (E820_MAX_ENTRIES_ZEROPAGE). */
export const E820_MAX_ENTRIES = 128;
/** struct boot_e820_entry { __u64 addr; __u64 size; __u32 type; } __packed */
export const E820_ENTRY_SIZE = 20;

/** Builds the map for RAM `regions` (the first starting at 0): RAM, the legacy hole, the TSS pages. */
export function buildE820(regions: readonly RegionSpec[]): E820Entry[] {
  const [low, ...high] = regions;
  if (!low || low.base !== 0 || low.size <= HIGH_MEMORY_START) throw new RangeError("low RAM must cover the first MiB");
  const entries: E820Entry[] = [
    { address: 0, size: EBDA_START, type: E820_TYPE.E820_RAM },
    { address: EBDA_START, size: HIGH_MEMORY_START - EBDA_START, type: E820_TYPE.E820_RESERVED },
    { address: HIGH_MEMORY_START, size: low.size - HIGH_MEMORY_START, type: E820_TYPE.E820_RAM },
    { address: IDENTITY_MAP_ADDRESS, size: TSS_RESERVED_END - IDENTITY_MAP_ADDRESS, type: E820_TYPE.E820_RESERVED },
  ];
  // Adjacent high regions are one range of RAM to the guest.
  for (const r of high) {
    const last = entries[entries.length - 1]!;
    if (last.type === E820_TYPE.E820_RAM && last.address + last.size === r.base) {
      entries[entries.length - 1] = { ...last, size: last.size + r.size };
    } else {
      entries.push({ address: r.base, size: r.size, type: E820_TYPE.E820_RAM });
    }
  }
  return entries;
}
