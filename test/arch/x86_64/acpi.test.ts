import { describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildAcpiTables } from "../../../src/arch/x86_64/acpi.ts";
import { pciWindows } from "../../../src/arch/x86_64/layout.ts";
import { pciSlotPin } from "../../../src/arch/x86_64/mptable.ts";
import { tempDir } from "../../support/tsvm.ts";

const IASL = Bun.which("iasl");
if (!IASL) console.warn("tsvm tests: no iasl (Debian acpica-tools); the DSDT disassembly test is skipped");

const ADDRESS = 0xe0000;
const sum = (b: Uint8Array): number => b.reduce((s, x) => (s + x) & 0xff, 0);

describe("buildAcpiTables", () => {
  const acpi = buildAcpiTables(ADDRESS, 3, pciWindows(6 * 1024 ** 3));
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

  // ACPICA's own disassembler reads the DSDT back: the encoding is ACPI's, not just ours.
  test.skipIf(!IASL)("iasl disassembles the DSDT to the PCI host bridge, its windows and its slot routing", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "dsdt.dat"), table("DSDT"));
    const run = Bun.spawnSync([IASL!, "-d", join(dir, "dsdt.dat")], { cwd: dir, stdout: "pipe", stderr: "pipe" });
    expect(run.exitCode).toBe(0);
    const asl = readFileSync(join(dir, "dsdt.dsl"), "utf8");
    expect(asl).toContain("Device (PCI0)");
    expect(asl).toContain('Name (_HID, EisaId ("PNP0A03")');
    for (const field of ["_ADR", "_SEG", "_UID", "_BBN"]) expect(asl).toMatch(new RegExp(`Name \\(${field}, Zero\\)`));
    const compact = asl.replace(/\/\/.*$/gm, "").replace(/\s+/g, " ").replace(/ ,/g, ",");
    expect(compact).toContain("WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0x0000, 0x0000, 0x0000, 0x0000, 0x0001,");
    expect(compact).toContain("IO (Decode16, 0x0CF8, 0x0CF8, 0x01, 0x08, )");
    expect(compact).toContain("0x0000, 0x0D00, 0xFFFF, 0x0000, 0xF300,");
    expect(compact).toContain("0x00000000, 0xD0000000, 0xFEBFFFFF, 0x00000000, 0x2EC00000,");
    // RAM ending at 6 GiB puts the 64 GiB window for 64-bit BARs at [6 GiB, 70 GiB).
    expect(compact).toContain("NonCacheable, ReadWrite, 0x0000000000000000, 0x0000000180000000, 0x000000117FFFFFFF, 0x0000000000000000, 0x0000001000000000,");
    // The UARTs and the RTC, each with its ports and ISA interrupt (Linux maps no legacy IRQ itself on a hardware-reduced platform).
    for (const [dev, hid, port, irq] of [["COM1", "PNP0501", "0x03F8", 4], ["COM2", "PNP0501", "0x02F8", 3], ["COM4", "PNP0501", "0x02E8", 3], ["RTC", "PNP0B00", "0x0070", 8]] as const) {
      expect(compact).toMatch(new RegExp(`Device \\(${dev}\\) \\{ Name \\(_HID, EisaId \\("${hid}"\\)[^}]*IO \\(Decode16, ${port}, ${port}, 0x01, 0x0[28], \\) IRQ \\(Edge, ActiveHigh, Shared, \\) \\{${irq}\\}`));
    }
    for (const slot of [1, 2, 31]) {
      expect(compact).toMatch(new RegExp(`Package \\(0x04\\) \\{ 0x${((slot << 16) | 0xffff).toString(16).toUpperCase().padStart(8, "0")}, Zero, Zero, 0x${pciSlotPin(slot).toString(16).toUpperCase().padStart(2, "0")} \\}`));
    }
  });
});
