// irq_router.ts - the VM's GSI routing table: the irqchip defaults plus one MSI route per MSI-X vector.
import { defaultGsiRoutes, FIRST_MSI_GSI, type GsiRoute, type Vm } from "../kvm/vm.ts";
import type { MsiRouter } from "./virtio/msix.ts";

/** Keeps every route (KVM_SET_GSI_ROUTING replaces the whole table) and registers irqfds. */
export class IrqRouter implements MsiRouter {
  readonly #msi = new Map<number, GsiRoute>();
  #nextGsi = FIRST_MSI_GSI;

  constructor(readonly vm: Vm) {}

  allocateGsi(): number {
    return this.#nextGsi++;
  }

  setMsiRoute(gsi: number, addressLo: number, addressHi: number, data: number): void {
    this.#msi.set(gsi, { gsi, kind: "msi", addressLo, addressHi, data });
    this.vm.setGsiRouting([...defaultGsiRoutes(), ...this.#msi.values()]);
  }

  attachIrqfd(fd: number, gsi: number): void {
    this.vm.setIrqfd(fd, gsi, true);
  }

  detachIrqfd(fd: number, gsi: number): void {
    this.vm.setIrqfd(fd, gsi, false);
  }
}
