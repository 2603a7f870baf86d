// page_tables.ts - identity-mapped page tables for entering the kernel in long mode.
import type { GuestMemory } from "../../memory/mod.ts";
import { IDENTITY_MAPPED_GIB, PD_ADDRESS, PDPT_ADDRESS, PML4_ADDRESS } from "./layout.ts";

const PRESENT = 1;
const WRITABLE = 2;
const PAGE_SIZE_2M = 0x80;
const TWO_MIB = 0x200000;
const FOUR_GIB = 2 ** 32;

/** Writes a PML4 -> PDPT -> 4 page directories of 2 MiB pages mapping [0, 4 GiB) 1:1; returns CR3. */
export function writeIdentityPageTables(memory: GuestMemory): number {
  // The three levels are contiguous pages (layout.ts): build them in one buffer, write it once. Each
  // 64-bit entry is two little-endian 32-bit halves, in plain numbers (BigInt arithmetic cost the VMM
  // ~0.5 ms of start-up here): [address | flags, address above 4 GiB].
  const tables = new Uint32Array((PD_ADDRESS + IDENTITY_MAPPED_GIB * 0x1000 - PML4_ADDRESS) / 4);
  const set = (address: number, value: number): void => {
    const at = (address - PML4_ADDRESS) / 4;
    tables[at] = value % FOUR_GIB;
    tables[at + 1] = Math.floor(value / FOUR_GIB);
  };
  set(PML4_ADDRESS, PDPT_ADDRESS + PRESENT + WRITABLE);
  for (let gib = 0; gib < IDENTITY_MAPPED_GIB; gib++) {
    const pd = PD_ADDRESS + gib * 0x1000;
    set(PDPT_ADDRESS + gib * 8, pd + PRESENT + WRITABLE);
    for (let i = 0; i < 512; i++) set(pd + i * 8, (gib * 512 + i) * TWO_MIB + PRESENT + WRITABLE + PAGE_SIZE_2M);
  }
  memory.write(PML4_ADDRESS, new Uint8Array(tables.buffer));
  return PML4_ADDRESS as number;
}
