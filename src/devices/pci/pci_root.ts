// pci_root.ts - bus 0: the host bridge and the devices, their BARs mapped on the MMIO bus while enabled.
import { log } from "../../base/log.ts";
import type { WorkerView } from "../../vcpu/worker_bus.ts";
import type { Bus, BusAccess, BusDevice } from "../bus.ts";
import type { SharedRegisters } from "../shared_registers.ts";
import type { AddressAllocator } from "./address_allocator.ts";
import { createConfigImages, PCI_SLOTS } from "./pci_config_io.ts";
import { PCI, PCI_COMMAND_IO, PCI_COMMAND_MEMORY, PCI_CONFIG_SPACE_SIZE } from "./pci_configuration.ts";
import type { PciDevice } from "./pci_device.ts";
import { PciHostBridge } from "./pci_host_bridge.ts";

/** Devices per bus (PCI 3.0: 5-bit device number). */
const MAX_DEVICES = PCI_SLOTS;

/** Forwards a BAR's bus range to its device, with the offset inside the BAR. */
class BarWindow implements BusDevice {
  readonly debugLabel: string;
  constructor(readonly device: PciDevice, readonly index: number) {
    this.debugLabel = `${device.debugLabel} BAR${index}`;
  }
  read(access: BusAccess, data: Uint8Array): void {
    this.device.readBar(this.index, access.offset, data);
  }
  write(access: BusAccess, data: Uint8Array): void {
    this.device.writeBar(this.index, access.offset, data);
  }
  get workerView(): WorkerView | null {
    return this.device.barView?.(this.index) ?? null;
  }
}

type Mapping = { space: "mmio" | "io"; base: number; window: BarWindow };

/** The address windows BARs are allocated from. */
export type BarWindows = { readonly mmio32: AddressAllocator; readonly mmio64: AddressAllocator; readonly io: AddressAllocator };

/** PCI bus 0. Device 0 is the host bridge; added devices take the next free slots. */
export class PciRoot {
  readonly #devices: (PciDevice | null)[] = new Array<PciDevice | null>(MAX_DEVICES).fill(null);
  readonly #mappings = new Map<string, Mapping>();
  /** Every slot's configuration space as vCPU runners read it (pci_config_io.ts). */
  readonly configImages: SharedRegisters = createConfigImages();
  readonly #dword = new Uint8Array(4);

  constructor(readonly buses: { readonly mmio: Bus; readonly io: Bus }, readonly windows: BarWindows) {
    this.#devices[0] = new PciHostBridge();
    this.configChanged(0);
  }

  /** The slot the next `add` will use; throws when the bus is full. */
  nextSlot(): number {
    const slot = this.#devices.indexOf(null);
    if (slot < 0) throw new Error(`PCI bus 0 is full (${MAX_DEVICES - 1} devices)`);
    return slot;
  }

  /** Adds `device` at the next free slot, assigns its BARs and maps them; returns the device number. */
  add(device: PciDevice): number {
    const slot = this.nextSlot();
    this.#devices[slot] = device;
    for (const bar of device.config.bars) {
      const window = bar.kind === "io" ? this.windows.io : bar.kind === "memory64" ? this.windows.mmio64 : this.windows.mmio32;
      device.config.setBarAddress(bar.index, window.allocate(bar.size));
    }
    // Firmware would leave decoding on for devices it assigned resources to.
    device.config.write(PCI.COMMAND, 2, device.config.command | PCI_COMMAND_MEMORY | PCI_COMMAND_IO);
    this.#remap(slot);
    this.configChanged(slot);
    return slot;
  }

  /** Renders slot `slot`'s configuration image again (after anything that changed its registers). */
  configChanged(slot: number): void {
    const device = this.#devices[slot];
    const base = slot * PCI_CONFIG_SPACE_SIZE;
    const images = this.configImages;
    if (!device) {
      images.fill(base, PCI_CONFIG_SPACE_SIZE, 0xff);
      images.setLocal(base, PCI_CONFIG_SPACE_SIZE, true);
      return;
    }
    const live = device.liveConfigDwords ?? [];
    const dword = this.#dword;
    for (let i = 0; i < PCI_CONFIG_SPACE_SIZE / 4; i++) {
      const at = base + i * 4;
      if (live.includes(i)) {
        images.setLocal(at, 4, false);
        continue;
      }
      const value = device.readConfig(i * 4, 4);
      for (let b = 0; b < 4; b++) dword[b] = (value >>> (b * 8)) & 0xff;
      images.set(at, dword);
      images.setLocal(at, 4, true);
    }
  }

  /** The device at `slot`, or null. */
  device(slot: number): PciDevice | null {
    return this.#devices[slot] ?? null;
  }

  /** Reads configuration space; absent functions read as all ones. */
  configRead(bus: number, slot: number, fn: number, offset: number, length: number): number {
    const device = bus === 0 && fn === 0 ? this.#devices[slot] : null;
    if (!device) return length === 4 ? 0xffffffff : (1 << (length * 8)) - 1;
    return device.readConfig(offset, length);
  }

  /** Writes configuration space; BAR and command changes move the device's windows. */
  configWrite(bus: number, slot: number, fn: number, offset: number, length: number, value: number): void {
    const device = bus === 0 && fn === 0 ? this.#devices[slot] : null;
    if (!device) return;
    device.writeConfig(offset, length, value);
    this.configChanged(slot);
    const touchesBars = offset < PCI.BAR0 + 24 && offset + length > PCI.BAR0;
    const touchesCommand = offset < PCI.COMMAND + 2 && offset + length > PCI.COMMAND;
    if (touchesBars || touchesCommand) this.#remap(slot);
  }

  /** Maps each enabled BAR at its programmed address; unmaps BARs that moved or were disabled. */
  #remap(slot: number): void {
    const device = this.#devices[slot]!;
    const command = device.config.command;
    for (const bar of device.config.bars) {
      const key = `${slot}:${bar.index}`;
      const space = bar.kind === "io" ? "io" : "mmio";
      const enabled = (command & (space === "io" ? PCI_COMMAND_IO : PCI_COMMAND_MEMORY)) !== 0;
      const base = device.config.barAddress(bar.index);
      const current = this.#mappings.get(key);
      if (current && (!enabled || current.base !== base)) {
        this.buses[current.space].remove(current.base);
        this.#mappings.delete(key);
      }
      if (!enabled || base === 0 || this.#mappings.has(key)) continue;
      const window = new BarWindow(device, bar.index);
      try {
        this.buses[space].insert(window, base, bar.size);
        this.#mappings.set(key, { space, base, window });
      } catch (e) {
        // A guest may program an overlapping address (while sizing, say): leave the BAR unmapped.
        log.debug(`not mapping ${window.debugLabel}: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
  }
}
