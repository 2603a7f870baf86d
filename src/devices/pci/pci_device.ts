// pci_device.ts - what a PCI function offers the root: its configuration space and its BARs.
import type { PciConfiguration } from "./pci_configuration.ts";

/** A PCI function. BAR accesses arrive with the offset inside the BAR. */
export interface PciDevice {
  readonly debugLabel: string;
  readonly config: PciConfiguration;
  /** Reads configuration space; devices overlay live registers (MSI-X control, say). */
  readConfig(offset: number, length: number): number;
  /** Writes configuration space. */
  writeConfig(offset: number, length: number, value: number): void;
  readBar(index: number, offset: number, data: Uint8Array): void;
  writeBar(index: number, offset: number, data: Uint8Array): void;
}

/** Returns the PCI interrupt pin number of INTA#. */
export const PCI_INTERRUPT_PIN_INTA = 1;
