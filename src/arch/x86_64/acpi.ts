// acpi.ts - the ACPI tables that tell the guest its CPUs, interrupt controllers and PCI root (ACPI
// 6.x): RSDP -> XSDT -> FADT (hardware-reduced, with a DSDT) and MADT. Kernels built without
// MP-table support (Debian's cloud kernel, say) find their CPUs only here, and a kernel that uses
// ACPI finds PCI only through the DSDT's host bridge: without it Linux scans no PCI bus at all.
import { device, dwordAddress, eisaId, integer, ioPorts, isaIrq, name, pkg, qwordAddress, resourceTemplate, scope, wordAddress } from "./aml.ts";
import { IOAPIC_ADDRESS, LAPIC_ADDRESS, type PciWindows } from "./layout.ts";
import { checksum, PCI_SLOTS, pciSlotPin } from "./mptable.ts";

const HEADER_SIZE = 36;
const RSDP_SIZE = 36;
const FADT_SIZE = 276; // revision 6
const OEM_ID = "TSVM  ";
const OEM_TABLE_ID = "TSVMACPI";
const CREATOR_ID = "TSVM";
/** FADT flags: HW_REDUCED_ACPI (bit 20): no PM timer, SCI or fixed hardware to emulate. */
const FADT_HW_REDUCED_ACPI = 1 << 20;
/** FADT IAPC_BOOT_ARCH: VGA not present (bit 2); the CMOS RTC is present, so bit 5 stays clear. */
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT = 1 << 2;
/** MADT flags: PCAT_COMPAT, the dual 8259 PICs exist (KVM's in-kernel PIC). */
const MADT_PCAT_COMPAT = 1;
const MADT_LOCAL_APIC = 0;
const MADT_IO_APIC = 1;
const MADT_LOCAL_APIC_NMI = 4;
const LOCAL_APIC_ENABLED = 1;

/** Where each table went, for tests and the zero page's acpi_rsdp_addr. */
export type AcpiTables = { readonly rsdp: number; readonly bytes: Uint8Array; readonly tables: Readonly<Record<string, number>> };

const ascii = (bytes: Uint8Array, at: number, text: string): void => bytes.set(new TextEncoder().encode(text), at);

/** Fills the standard description header and computes the table's checksum. */
function finish(table: Uint8Array, signature: string, revision: number): Uint8Array {
  const v = new DataView(table.buffer, table.byteOffset, table.byteLength);
  ascii(table, 0, signature);
  v.setUint32(4, table.byteLength, true);
  v.setUint8(8, revision);
  ascii(table, 10, OEM_ID);
  ascii(table, 16, OEM_TABLE_ID);
  v.setUint32(24, 1, true);
  ascii(table, 28, CREATOR_ID);
  v.setUint32(32, 1, true);
  v.setUint8(9, 0);
  v.setUint8(9, checksum(table));
  return table;
}

function madt(cpus: number): Uint8Array {
  const size = HEADER_SIZE + 8 + cpus * 8 + 12 + 6;
  const t = new Uint8Array(size);
  const v = new DataView(t.buffer);
  v.setUint32(36, LAPIC_ADDRESS, true);
  v.setUint32(40, MADT_PCAT_COMPAT, true);
  let at = HEADER_SIZE + 8;
  for (let cpu = 0; cpu < cpus; cpu++) {
    t.set([MADT_LOCAL_APIC, 8, cpu, cpu], at); // type, length, ACPI processor UID, APIC id
    v.setUint32(at + 4, LOCAL_APIC_ENABLED, true);
    at += 8;
  }
  t.set([MADT_IO_APIC, 12, cpus, 0], at); // IOAPIC id follows the CPUs' APIC ids, as in the MP table
  v.setUint32(at + 4, IOAPIC_ADDRESS, true);
  v.setUint32(at + 8, 0, true); // GSI base: ISA IRQ n is GSI n (KVM's default routing)
  at += 12;
  t.set([MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1], at); // every processor, default polarity, LINT1
  return finish(t, "APIC", 5);
}

function fadt(dsdt: number): Uint8Array {
  const t = new Uint8Array(FADT_SIZE);
  const v = new DataView(t.buffer);
  v.setUint32(40, dsdt, true); // DSDT
  v.setUint16(109, IAPC_BOOT_ARCH_VGA_NOT_PRESENT, true);
  v.setUint32(112, FADT_HW_REDUCED_ACPI, true);
  v.setUint8(131, 3); // FADT minor version: 6.3
  v.setBigUint64(140, BigInt(dsdt), true); // X_DSDT
  ascii(t, 268, "TSVMTSVM"); // hypervisor vendor identity
  return finish(t, "FACP", 6);
}

/** PCI configuration mechanism #1: the address and data ports (0xcf8-0xcff). */
const PCI_CONFIG_PORTS = 0xcf8;
/** The four 16550A UARTs (tsvm always has all four) and the CMOS RTC, with their ISA interrupts. */
const UARTS = [{ base: 0x3f8, irq: 4 }, { base: 0x2f8, irq: 3 }, { base: 0x3e8, irq: 4 }, { base: 0x2e8, irq: 3 }];
const RTC = { base: 0x70, irq: 8 };

/**
 * The DSDT: \_SB.PCI0, the PCI host bridge (bus 0 only), with the windows tsvm places BARs in and
 * the INTA# of each slot wired as the MP table says (_PRT: slot, pin, no link device, GSI); and the
 * ISA devices with interrupts, COM1-COM4 and the RTC. The FADT says hardware-reduced, so Linux
 * sets up no legacy interrupts of its own: a UART gets its IRQ only from a device described here.
 */
export function dsdt(pci: PciWindows): Uint8Array {
  const routing = Array.from({ length: PCI_SLOTS }, (_, i) => {
    const slot = i + 1;
    return pkg([integer((slot << 16) | 0xffff), integer(0), integer(0), integer(pciSlotPin(slot))]);
  });
  const hostBridge = device("PCI0", [
    name("_HID", eisaId("PNP0A03")),
    name("_ADR", integer(0)),
    name("_SEG", integer(0)),
    name("_UID", integer(0)),
    name("_BBN", integer(0)),
    name("_CRS", resourceTemplate([
      wordAddress({ type: "bus", min: 0, max: 0 }),
      ioPorts(PCI_CONFIG_PORTS, 8),
      // Every port but the configuration ports goes to the bus (the ISA devices answer their own).
      wordAddress({ type: "io", min: 0, max: PCI_CONFIG_PORTS - 1 }),
      wordAddress({ type: "io", min: 0xd00, max: pci.io[1] - 1 }),
      dwordAddress({ type: "memory", min: pci.mmio32[0], max: pci.mmio32[1] - 1 }),
      qwordAddress({ type: "memory", min: pci.mmio64[0], max: pci.mmio64[1] - 1 }),
    ])),
    name("_PRT", pkg(routing)),
  ]);
  const isa = [
    ...UARTS.map((u, i) => device(`COM${i + 1}`, [
      name("_HID", eisaId("PNP0501")),
      name("_UID", integer(i + 1)),
      name("_CRS", resourceTemplate([ioPorts(u.base, 8), isaIrq(u.irq)])),
    ])),
    device("RTC", [name("_HID", eisaId("PNP0B00")), name("_CRS", resourceTemplate([ioPorts(RTC.base, 2), isaIrq(RTC.irq)]))]),
  ];
  const body = scope("\\_SB_", [hostBridge, ...isa]);
  const table = new Uint8Array(HEADER_SIZE + body.byteLength);
  table.set(body, HEADER_SIZE);
  return finish(table, "DSDT", 2);
}

/** Builds the tables for `cpus` CPUs and the PCI windows `pci`, to be placed at `address` (16-byte aligned, below 1 MiB). */
export function buildAcpiTables(address: number, cpus: number, pci: PciWindows): AcpiTables {
  const dsdtTable = dsdt(pci);
  const layout: [string, Uint8Array][] = [];
  const align = (n: number): number => Math.ceil(n / 16) * 16;
  let at = address + align(RSDP_SIZE);
  const place = (name: string, table: Uint8Array): number => {
    const where = at;
    layout.push([name, table]);
    at = align(at + table.byteLength);
    return where;
  };
  const dsdtAddress = place("DSDT", dsdtTable);
  const fadtAddress = place("FACP", fadt(dsdtAddress));
  const madtAddress = place("APIC", madt(cpus));
  const xsdt = new Uint8Array(HEADER_SIZE + 2 * 8);
  const xv = new DataView(xsdt.buffer);
  xv.setBigUint64(HEADER_SIZE, BigInt(fadtAddress), true);
  xv.setBigUint64(HEADER_SIZE + 8, BigInt(madtAddress), true);
  const xsdtAddress = place("XSDT", finish(xsdt, "XSDT", 1));

  const bytes = new Uint8Array(at - address);
  const rsdp = bytes.subarray(0, RSDP_SIZE);
  const rv = new DataView(bytes.buffer);
  ascii(rsdp, 0, "RSD PTR ");
  ascii(rsdp, 9, OEM_ID);
  rsdp[15] = 2; // ACPI 2.0+: use the XSDT
  rv.setUint32(20, RSDP_SIZE, true);
  rv.setBigUint64(24, BigInt(xsdtAddress), true);
  rsdp[8] = checksum(rsdp.subarray(0, 20));
  rsdp[32] = checksum(rsdp);
  let offset = align(RSDP_SIZE);
  const tables: Record<string, number> = { RSDP: address };
  for (const [name, table] of layout) {
    bytes.set(table, offset);
    tables[name] = address + offset;
    offset = align(offset + table.byteLength);
  }
  return { rsdp: address, bytes, tables };
}
