// irq_router.ts - the VM's GSI routing table: the irqchip defaults plus one MSI route per MSI-X vector.
import { defaultGsiRoutes, FIRST_MSI_GSI, type GsiRoute, type Vm } from "../kvm/vm.ts";
import type { MsiRouter } from "../devices/virtio/msix.ts";

/** KVM's routing table holds at most KVM_MAX_IRQ_ROUTES (4096 on x86) GSIs. */
export const MAX_GSI = 4095;

/** Keeps every route (KVM_SET_GSI_ROUTING replaces the whole table) and registers irqfds. */
export class IrqRouter implements MsiRouter {
  readonly #msi = new Map<number, GsiRoute>();
  #nextGsi = FIRST_MSI_GSI;

  constructor(readonly vm: Vm) {}

  /** Hands out the next free GSI; throws when KVM's table is full (a configuration with too many vectors). */
  allocateGsi(): number {
    if (this.#nextGsi > MAX_GSI) throw new Error(`failed to allocate a GSI: all ${MAX_GSI - FIRST_MSI_GSI + 1} MSI routes are in use`);
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
