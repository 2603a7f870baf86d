// pci_host_bridge.ts - the host bridge at 00:00.0, which the guest expects before any device.
import { PciConfiguration } from "./pci_configuration.ts";
import type { PciDevice } from "./pci_device.ts";

/** Intel 440FX: a host bridge every PC operating system knows. Class 06/00 (host bridge). */
const VENDOR_INTEL = 0x8086;
const DEVICE_440FX = 0x1237;
const CLASS_HOST_BRIDGE = 0x060000;

/** A host bridge with no BARs and no behaviour beyond its configuration space. */
export class PciHostBridge implements PciDevice {
  readonly debugLabel = "pci host bridge";
  readonly config = new PciConfiguration({ vendorId: VENDOR_INTEL, deviceId: DEVICE_440FX, classCode: CLASS_HOST_BRIDGE });

  readConfig(offset: number, length: number): number {
    return this.config.read(offset, length);
  }
  writeConfig(offset: number, length: number, value: number): void {
    this.config.write(offset, length, value);
  }
  readBar(_index: number, _offset: number, data: Uint8Array): void {
    data.fill(0xff);
  }
  writeBar(): void {}
}
