// vm.ts - a KVM VM: memory slots, the in-kernel irqchip and PIT, interrupt lines, vCPU creation.
import { sys } from "../../ffi/mod.ts";
import { checked } from "../base/errno.ts";
import { OwnedFd } from "../base/owned_fd.ts";
import type { GuestMemory } from "../memory/mod.ts";
import type { Kvm } from "./kvm.ts";
import { encodeMemoryRegion, KVM_IRQ_LEVEL, KVM_PIT_CONFIG } from "./kvm_structs.ts";
import { KVM_IOCTL, KVM_PIT_SPEAKER_DUMMY } from "./kvm_sys.ts";

/** A KVM virtual machine (the VM fd). */
export class Vm extends OwnedFd {
  readonly kvm: Kvm;
  readonly #irqLevel = new Uint8Array(KVM_IRQ_LEVEL.size);
  readonly #irqLevelView = new DataView(this.#irqLevel.buffer);

  constructor(kvm: Kvm) {
    super(kvm.createVmFd());
    this.kvm = kvm;
  }

  /** Registers every region of `memory` as a KVM memory slot, numbered from 0. */
  registerMemory(memory: GuestMemory): void {
    memory.regions.forEach((r, slot) => {
      const region = encodeMemoryRegion(slot, r.guestBase, r.size, r.hostAddress);
      checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_SET_USER_MEMORY_REGION, region), `add memory slot ${slot}`);
    });
  }

  /** Sets the three-page TSS area Intel VMX needs for real mode. */
  setTssAddress(address: number): void {
    checked(sys.ioctlVal(this.fd, KVM_IOCTL.KVM_SET_TSS_ADDR, address), "set TSS address");
  }

  /** Sets the identity-map page Intel VMX needs for unpaged protected mode. */
  setIdentityMapAddress(address: number): void {
    const arg = new BigUint64Array([BigInt(address)]);
    checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_SET_IDENTITY_MAP_ADDR, arg), "set identity map address");
  }

  /** Creates the in-kernel PIC pair, IOAPIC and local APICs. */
  createIrqChip(): void {
    checked(sys.ioctlVal(this.fd, KVM_IOCTL.KVM_CREATE_IRQCHIP, 0), "create in-kernel irqchip");
  }

  /** Creates the in-kernel i8254 PIT (with the speaker port emulated too). */
  createPit(): void {
    const config = new Uint8Array(KVM_PIT_CONFIG.size);
    new DataView(config.buffer).setUint32(KVM_PIT_CONFIG.flags, KVM_PIT_SPEAKER_DUMMY, true);
    checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_CREATE_PIT2, config), "create in-kernel PIT");
  }

  /** Drives interrupt line `irq` (a GSI) to `level`; safe from any thread. */
  setIrqLine(irq: number, level: boolean): void {
    this.#irqLevelView.setUint32(KVM_IRQ_LEVEL.irq, irq, true);
    this.#irqLevelView.setUint32(KVM_IRQ_LEVEL.level, level ? 1 : 0, true);
    checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_IRQ_LINE, this.#irqLevel), `set IRQ ${irq}`);
  }

  /** Creates vCPU `id` and returns its fd. */
  createVcpuFd(id: number): number {
    return checked(sys.ioctlVal(this.fd, KVM_IOCTL.KVM_CREATE_VCPU, id), `create vCPU ${id}`);
  }
}
