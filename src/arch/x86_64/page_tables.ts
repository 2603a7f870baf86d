// page_tables.ts - identity-mapped page tables for entering the kernel in long mode.
import type { GuestMemory } from "../../memory/mod.ts";
import { IDENTITY_MAPPED_GIB, PD_ADDRESS, PDPT_ADDRESS, PML4_ADDRESS } from "./layout.ts";

const PRESENT = 1n;
const WRITABLE = 2n;
const PAGE_SIZE_2M = 0x80n;
const TWO_MIB = 0x200000n;

/** Writes a PML4 -> PDPT -> 4 page directories of 2 MiB pages mapping [0, 4 GiB) 1:1; returns CR3. */
export function writeIdentityPageTables(memory: GuestMemory): number {
  // The three levels are contiguous pages (layout.ts): build them in one buffer, write it once.
  const tables = new BigUint64Array((PD_ADDRESS + IDENTITY_MAPPED_GIB * 0x1000 - PML4_ADDRESS) / 8);
  const entry = (address: number): number => (address - PML4_ADDRESS) / 8;
  tables[entry(PML4_ADDRESS)] = BigInt(PDPT_ADDRESS) | PRESENT | WRITABLE;
  for (let gib = 0; gib < IDENTITY_MAPPED_GIB; gib++) {
    const pd = PD_ADDRESS + gib * 0x1000;
    tables[entry(PDPT_ADDRESS) + gib] = BigInt(pd) | PRESENT | WRITABLE;
    for (let i = 0; i < 512; i++) {
      tables[entry(pd) + i] = BigInt(gib * 512 + i) * TWO_MIB | PRESENT | WRITABLE | PAGE_SIZE_2M;
    }
  }
  memory.write(PML4_ADDRESS, new Uint8Array(tables.buffer));
  return PML4_ADDRESS as number;
}
