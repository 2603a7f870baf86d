import { describe, expect, test } from "bun:test";
import { buildMptable, checksum, mptableSize } from "../../../src/arch/x86_64/mptable.ts";

const ADDRESS = 0x9fc00;
const sum = (b: Uint8Array): number => b.reduce((s, x) => (s + x) & 0xff, 0);

describe("buildMptable", () => {
  test("the floating pointer and the table both sum to zero", () => {
    const table = buildMptable(ADDRESS, 4);
    const length = new DataView(table.buffer).getUint16(16 + 4, true);
    expect(sum(table.subarray(0, 16))).toBe(0);
    expect(sum(table.subarray(16, 16 + length))).toBe(0);
    expect(16 + length).toBe(mptableSize(4));
  });

  test("lists one processor entry per CPU, the first one the boot CPU", () => {
    const table = buildMptable(ADDRESS, 3);
    const cpus = [0, 1, 2].map((i) => {
      const at = 16 + 44 + i * 20;
      return { type: table[at], apicId: table[at + 1], flags: table[at + 3] };
    });
    expect(cpus).toEqual([{ type: 0, apicId: 0, flags: 3 }, { type: 0, apicId: 1, flags: 1 }, { type: 0, apicId: 2, flags: 1 }]);
  });

  test("points the floating pointer at the table right after it", () => {
    const table = buildMptable(ADDRESS, 1);
    expect(new TextDecoder().decode(table.subarray(0, 4))).toBe("_MP_");
    expect(new DataView(table.buffer).getUint32(4, true)).toBe(ADDRESS + 16);
    expect(new TextDecoder().decode(table.subarray(16, 20))).toBe("PCMP");
  });

  test("routes each PCI slot's INTA# to an IOAPIC pin from 16, level-triggered and active low", () => {
    const table = buildMptable(ADDRESS, 1);
    const intsrcs: number[][] = [];
    for (let at = 16 + 44; at < table.byteLength; at += table[at] === 0 ? 20 : 8) {
      if (table[at] === 3 && table[at + 4] === 0) intsrcs.push([table[at + 2]!, table[at + 5]! >> 2, table[at + 7]!]);
    }
    expect(intsrcs.slice(0, 2)).toEqual([[0x0f, 1, 16], [0x0f, 2, 17]]);
    expect(intsrcs.length).toBe(31);
  });

  test("rejects CPU counts the table cannot describe", () => {
    expect(() => buildMptable(ADDRESS, 0)).toThrow();
    expect(() => buildMptable(ADDRESS, 255)).toThrow();
  });

  test("checksum is the two's complement of the byte sum", () => {
    expect(checksum(Uint8Array.of(1, 2, 3))).toBe(0xfa);
  });
});
