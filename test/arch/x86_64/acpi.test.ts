import { describe, expect, test } from "bun:test";
import { buildAcpiTables } from "../../../src/arch/x86_64/acpi.ts";

const ADDRESS = 0xe0000;
const sum = (b: Uint8Array): number => b.reduce((s, x) => (s + x) & 0xff, 0);

describe("buildAcpiTables", () => {
  const acpi = buildAcpiTables(ADDRESS, 3);
  const table = (name: string): Uint8Array => {
    const at = acpi.tables[name]! - ADDRESS;
    const length = new DataView(acpi.bytes.buffer).getUint32(at + 4, true);
    return acpi.bytes.subarray(at, at + length);
  };

  test("the RSDP is ACPI 2.0 and both its checksums hold", () => {
    const rsdp = acpi.bytes.subarray(0, 36);
    expect(new TextDecoder().decode(rsdp.subarray(0, 8))).toBe("RSD PTR ");
    expect([rsdp[15], sum(rsdp.subarray(0, 20)), sum(rsdp)]).toEqual([2, 0, 0]);
    expect(Number(new DataView(acpi.bytes.buffer).getBigUint64(24, true))).toBe(acpi.tables.XSDT!);
  });

  test("every table's checksum holds", () => {
    for (const name of ["DSDT", "FACP", "APIC", "XSDT"]) expect([name, sum(table(name))]).toEqual([name, 0]);
  });

  test("the XSDT lists the FADT and the MADT", () => {
    const v = new DataView(table("XSDT").buffer, table("XSDT").byteOffset);
    expect([Number(v.getBigUint64(36, true)), Number(v.getBigUint64(44, true))]).toEqual([acpi.tables.FACP!, acpi.tables.APIC!]);
  });

  test("the MADT has one enabled local APIC per CPU and the IOAPIC", () => {
    const madt = table("APIC");
    const entries: number[][] = [];
    for (let at = 44; at < madt.byteLength; at += madt[at + 1]!) entries.push([...madt.subarray(at, at + 4)]);
    expect(entries).toEqual([[0, 8, 0, 0], [0, 8, 1, 1], [0, 8, 2, 2], [1, 12, 3, 0], [4, 6, 0xff, 0]]);
  });

  test("the FADT is hardware-reduced and points at the DSDT", () => {
    const v = new DataView(table("FACP").buffer, table("FACP").byteOffset);
    expect([v.getUint32(112, true) & (1 << 20), v.getUint32(40, true), Number(v.getBigUint64(140, true))]).toEqual([1 << 20, acpi.tables.DSDT!, acpi.tables.DSDT!]);
  });

  test("everything fits below 1 MiB", () => {
    expect(ADDRESS + acpi.bytes.byteLength).toBeLessThan(0x100000);
  });
});
