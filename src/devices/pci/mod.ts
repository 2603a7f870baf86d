// mod.ts - the PCI device model: configuration spaces, bus 0, configuration I/O.
export { AddressAllocator } from "./address_allocator.ts";
export { PciConfigIo, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_SIZE } from "./pci_config_io.ts";
export { type BarSpec, PCI, PCI_COMMAND_MEMORY, PciConfiguration, type PciIds } from "./pci_configuration.ts";
export { PCI_INTERRUPT_PIN_INTA, type PciDevice } from "./pci_device.ts";
export { PciHostBridge } from "./pci_host_bridge.ts";
export { type BarWindows, PciRoot } from "./pci_root.ts";
