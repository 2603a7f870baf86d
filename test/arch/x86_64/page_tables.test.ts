import { expect, test } from "bun:test";
import { PD_ADDRESS, PDPT_ADDRESS, PML4_ADDRESS } from "../../../src/arch/x86_64/layout.ts";
import { writeIdentityPageTables } from "../../../src/arch/x86_64/page_tables.ts";
import { GuestMemory, guestAddress as ga } from "../../../src/memory/mod.ts";

test("writeIdentityPageTables maps the first 4 GiB 1:1 with present, writable 2 MiB pages", () => {
  const mem = GuestMemory.fromBuffers([{ base: 0, bytes: new Uint8Array(0x10000) }]);
  expect(writeIdentityPageTables(mem)).toBe(PML4_ADDRESS);
  expect(mem.readU64(ga(PML4_ADDRESS))).toBe(BigInt(PDPT_ADDRESS) | 3n);
  expect(mem.readU64(ga(PDPT_ADDRESS + 3 * 8))).toBe(BigInt(PD_ADDRESS + 3 * 0x1000) | 3n);
  // The last 2 MiB page of the fourth GiB holds the LAPIC at 0xfee0_0000.
  expect(mem.readU64(ga(PD_ADDRESS + 3 * 0x1000 + 511 * 8))).toBe(0xffe0_0000n | 0x83n);
  expect(mem.readU64(ga(PD_ADDRESS + 8))).toBe(0x20_0000n | 0x83n);
});
