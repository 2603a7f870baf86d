// pci_config_io.ts - configuration mechanism #1: the address register at 0xcf8 and data at 0xcfc-0xcff.
import type { BusAccess, BusDevice } from "../bus.ts";
import type { PciRoot } from "./pci_root.ts";

export const PCI_CONFIG_IO_BASE = 0xcf8;
export const PCI_CONFIG_IO_SIZE = 8;
const ENABLE = 0x8000_0000;

/** Decodes CONFIG_ADDRESS (bit 31 enable, 23:16 bus, 15:11 device, 10:8 function, 7:2 register). */
export class PciConfigIo implements BusDevice {
  readonly debugLabel = "pci config io";
  #address = 0;

  constructor(readonly root: PciRoot) {}

  read(access: BusAccess, data: Uint8Array): void {
    const offset = access.offset;
    let value: number;
    if (offset < 4) {
      value = this.#address >>> (offset * 8);
    } else if (!(this.#address & ENABLE)) {
      value = 0xffffffff;
    } else {
      const lane = offset - 4;
      const length = Math.min(data.byteLength, 4 - lane);
      value = this.root.configRead(...this.#target(), (this.#address & 0xfc) + lane, length);
    }
    for (let i = 0; i < data.byteLength; i++) data[i] = i < 4 ? (value >>> (i * 8)) & 0xff : 0xff;
  }

  write(access: BusAccess, data: Uint8Array): void {
    const offset = access.offset;
    let value = 0;
    for (let i = 0; i < Math.min(4, data.byteLength); i++) value |= data[i]! << (i * 8);
    value >>>= 0;
    if (offset < 4) {
      // Only a dword write at 0xcf8 sets the address; byte writes there (0xcf9 reset control) are ignored.
      if (offset === 0 && data.byteLength === 4) this.#address = value;
      return;
    }
    if (!(this.#address & ENABLE)) return;
    const lane = offset - 4;
    const length = Math.min(data.byteLength, 4 - lane);
    this.root.configWrite(...this.#target(), (this.#address & 0xfc) + lane, length, value);
  }

  #target(): [number, number, number] {
    return [(this.#address >>> 16) & 0xff, (this.#address >>> 11) & 0x1f, (this.#address >>> 8) & 0x7];
  }
}
