// pci_device.ts - what a PCI function offers the root: its configuration space and its BARs.
import type { WorkerView } from "../../vcpu/worker_bus.ts";
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
  /**
   * Configuration dwords (offset / 4) whose reads are not plain state (they reach into a BAR, say):
   * always read through readConfig. Every other dword is served from the root's image, which the
   * root renders after each configuration write; a device that changes configuration space on its
   * own must call PciRoot.configChanged.
   */
  readonly liveConfigDwords?: readonly number[];
  /** How vCPU runners may serve a BAR themselves (a register image); absent: through the control loop's Bus. */
  barView?(index: number): WorkerView | null;
}

/** Returns the PCI interrupt pin number of INTA#. */
export const PCI_INTERRUPT_PIN_INTA = 1;
