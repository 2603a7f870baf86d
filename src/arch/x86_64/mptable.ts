// mptable.ts - the Intel MultiProcessor Specification 1.4 table that tells the guest its CPUs and IOAPIC.
import { IOAPIC_ADDRESS } from "./layout.ts";

/** MP entry types (MP spec 1.4, table 4-3). */
const MP_PROCESSOR = 0;
const MP_BUS = 1;
const MP_IOAPIC = 2;
const MP_INTSRC = 3;
const MP_LINTSRC = 4;
const MP_IRQ_INT = 0;
const MP_IRQ_NMI = 1;
const MP_IRQ_EXTINT = 3;
const CPU_ENABLED = 1;
const CPU_BOOTPROCESSOR = 2;
/** APIC version 0x14: an integrated local APIC (xAPIC). */
const APIC_VERSION = 0x14;
/** IOAPIC version 0x11, as the in-kernel KVM IOAPIC reports (24 pins). */
const IOAPIC_VERSION = 0x11;
/** MP spec revision 1.4 */
const MP_SPEC_REV = 4;
/** ISA interrupts 0-15 wired to the IOAPIC pins of the same number (KVM's default routing). */
const ISA_IRQS = 16;
/** CPU signature family 6 with the FPU and APIC feature flags, as firmware writes it. */
const CPU_SIGNATURE = 0x600;
const CPU_FEATURES = 0x201;
/** Bus ids: PCI bus 0 is MP bus 0, the ISA bus is MP bus 1. */
const MP_BUS_PCI = 0;
const MP_BUS_ISA = 1;
/** PCI slots 1-31 have their INTA# routed (slot 0 is the host bridge, which has none). */
export const PCI_SLOTS = 31;
/** INTx flags: level triggered (3 << 2), active low (3), as PCI interrupts are. */
const PCI_INTX_FLAGS = 0x0f;

/** The IOAPIC pin tsvm wires PCI slot `slot`'s INTA# to: pins 16-23 in turn. */
export function pciSlotPin(slot: number): number {
  return 16 + ((slot - 1) % 8);
}

const FLOATING_POINTER_SIZE = 16;
const HEADER_SIZE = 44;
const PROCESSOR_SIZE = 20;
const BUS_SIZE = 8;
const IOAPIC_SIZE = 8;
const INTSRC_SIZE = 8;
const LINTSRC_SIZE = 8;

/** Returns the MP table size for `cpus` processors. */
export function mptableSize(cpus: number): number {
  return FLOATING_POINTER_SIZE + HEADER_SIZE + cpus * PROCESSOR_SIZE + 2 * BUS_SIZE + IOAPIC_SIZE +
    (ISA_IRQS + PCI_SLOTS) * INTSRC_SIZE + 2 * LINTSRC_SIZE;
}

/** Returns the 8-bit two's complement that makes the bytes of `range` sum to zero. */
export function checksum(range: Uint8Array): number {
  let sum = 0;
  for (const b of range) sum = (sum + b) & 0xff;
  return (0x100 - sum) & 0xff;
}

/** Builds the floating pointer and configuration table for `cpus` CPUs, to be placed at `address`. */
export function buildMptable(address: number, cpus: number): Uint8Array {
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 254) throw new RangeError(`cannot describe ${cpus} CPUs in an MP table`);
  const table = new Uint8Array(mptableSize(cpus));
  const view = new DataView(table.buffer);
  const ascii = (at: number, text: string): void => table.set(new TextEncoder().encode(text), at);

  // Floating pointer structure "_MP_": physical pointer to the configuration table right after it.
  ascii(0, "_MP_");
  view.setUint32(4, address + FLOATING_POINTER_SIZE, true);
  view.setUint8(8, 1); // length in 16-byte units
  view.setUint8(9, MP_SPEC_REV);
  view.setUint8(10, checksum(table.subarray(0, FLOATING_POINTER_SIZE)));

  // Configuration table header "PCMP".
  const base = FLOATING_POINTER_SIZE;
  ascii(base, "PCMP");
  view.setUint8(base + 6, MP_SPEC_REV);
  ascii(base + 8, "TSVM    ");
  ascii(base + 16, "000000000000");
  const ioapicId = cpus; // after the CPUs' APIC ids 0..cpus-1
  let at = base + HEADER_SIZE;
  let entries = 0;
  for (let cpu = 0; cpu < cpus; cpu++) {
    view.setUint8(at, MP_PROCESSOR);
    view.setUint8(at + 1, cpu);
    view.setUint8(at + 2, APIC_VERSION);
    view.setUint8(at + 3, CPU_ENABLED | (cpu === 0 ? CPU_BOOTPROCESSOR : 0));
    view.setUint32(at + 4, CPU_SIGNATURE, true);
    view.setUint32(at + 8, CPU_FEATURES, true);
    at += PROCESSOR_SIZE;
    entries++;
  }
  for (const [id, name] of [[MP_BUS_PCI, "PCI   "], [MP_BUS_ISA, "ISA   "]] as const) {
    view.setUint8(at, MP_BUS);
    view.setUint8(at + 1, id);
    ascii(at + 2, name);
    at += BUS_SIZE;
    entries++;
  }
  view.setUint8(at, MP_IOAPIC);
  view.setUint8(at + 1, ioapicId);
  view.setUint8(at + 2, IOAPIC_VERSION);
  view.setUint8(at + 3, 1); // enabled
  view.setUint32(at + 4, IOAPIC_ADDRESS, true);
  at += IOAPIC_SIZE;
  entries++;
  for (let irq = 0; irq < ISA_IRQS; irq++) {
    view.setUint8(at, MP_INTSRC);
    view.setUint8(at + 1, MP_IRQ_INT);
    view.setUint16(at + 2, 0, true); // conforms to the bus: ISA is edge, active high
    view.setUint8(at + 4, MP_BUS_ISA);
    view.setUint8(at + 5, irq);
    view.setUint8(at + 6, ioapicId);
    view.setUint8(at + 7, irq);
    at += INTSRC_SIZE;
    entries++;
  }
  for (let slot = 1; slot <= PCI_SLOTS; slot++) {
    view.setUint8(at, MP_INTSRC);
    view.setUint8(at + 1, MP_IRQ_INT);
    view.setUint16(at + 2, PCI_INTX_FLAGS, true);
    view.setUint8(at + 4, MP_BUS_PCI);
    view.setUint8(at + 5, slot << 2); // source: device number in bits 6:2, INTA# (0) in bits 1:0
    view.setUint8(at + 6, ioapicId);
    view.setUint8(at + 7, pciSlotPin(slot));
    at += INTSRC_SIZE;
    entries++;
  }
  for (const [type, lint] of [[MP_IRQ_EXTINT, 0], [MP_IRQ_NMI, 1]] as const) {
    view.setUint8(at, MP_LINTSRC);
    view.setUint8(at + 1, type);
    view.setUint16(at + 2, 0, true);
    view.setUint8(at + 4, 0);
    view.setUint8(at + 5, 0);
    view.setUint8(at + 6, 0xff); // every local APIC
    view.setUint8(at + 7, lint);
    at += LINTSRC_SIZE;
    entries++;
  }
  view.setUint16(base + 4, at - base, true); // base table length
  view.setUint16(base + 34, entries, true);
  view.setUint32(base + 36, 0xfee00000, true); // local APIC address
  view.setUint8(base + 7, checksum(table.subarray(base, at)));
  return table;
}
