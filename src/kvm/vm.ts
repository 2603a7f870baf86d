// vm.ts - a KVM VM: memory slots, the in-kernel irqchip and PIT, interrupt lines, vCPU creation.
import { sys } from "../../ffi/mod.ts";
import { checked } from "../base/errno.ts";
import { OwnedFd } from "../base/owned_fd.ts";
import type { GuestMemory } from "../memory/mod.ts";
import type { Kvm } from "./kvm.ts";
import {
  encodeMemoryRegion, KVM_CLOCK_DATA, KVM_COALESCED_MMIO_ZONE, KVM_IOEVENTFD, KVM_IOEVENTFD_FLAG_DEASSIGN, KVM_IOEVENTFD_FLAG_PIO, KVM_IRQ_LEVEL, KVM_IRQ_ROUTING,
  KVM_IRQ_ROUTING_ENTRY, KVM_IRQFD, KVM_IRQFD_FLAG_DEASSIGN, KVM_PIT_CONFIG,
} from "./kvm_structs.ts";
import {
  KVM_CAP, KVM_IOCTL, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
  KVM_PIT_SPEAKER_DUMMY,
} from "./kvm_sys.ts";

/** One GSI route: to an in-kernel irqchip pin, or an MSI message. */
export type GsiRoute =
  | { readonly gsi: number; readonly kind: "irqchip"; readonly chip: number; readonly pin: number }
  | { readonly gsi: number; readonly kind: "msi"; readonly addressLo: number; readonly addressHi: number; readonly data: number };

/** KVM's default routing, which KVM_SET_GSI_ROUTING replaces and so must repeat: GSI 0-15 to both
 * PICs and the IOAPIC, GSI 16-23 to the IOAPIC. */
export function defaultGsiRoutes(): GsiRoute[] {
  const routes: GsiRoute[] = [];
  for (let gsi = 0; gsi < 24; gsi++) {
    if (gsi < 16) {
      routes.push({ gsi, kind: "irqchip", chip: gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, pin: gsi % 8 });
    }
    routes.push({ gsi, kind: "irqchip", chip: KVM_IRQCHIP_IOAPIC, pin: gsi });
  }
  return routes;
}

/** First GSI free for MSI routes, after the IOAPIC's 24 pins. */
export const FIRST_MSI_GSI = 24;

/** Drives interrupt lines of the VM whose fd it is given (KVM_IRQ_LINE); one per thread. */
export class IrqLineSetter {
  readonly #irqLevel = new Uint8Array(KVM_IRQ_LEVEL.size);
  readonly #irqLevelView = new DataView(this.#irqLevel.buffer);

  constructor(readonly vmFd: number) {}

  /** Drives interrupt line `irq` (a GSI) to `level`. */
  set(irq: number, level: boolean): void {
    this.#irqLevelView.setUint32(KVM_IRQ_LEVEL.irq, irq, true);
    this.#irqLevelView.setUint32(KVM_IRQ_LEVEL.level, level ? 1 : 0, true);
    checked(sys.ioctlPtr(this.vmFd, KVM_IOCTL.KVM_IRQ_LINE, this.#irqLevel), `set IRQ ${irq}`);
  }
}

/** A KVM virtual machine (the VM fd). */
export class Vm extends OwnedFd {
  readonly kvm: Kvm;
  #irqLines: IrqLineSetter | null = null;

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
    this.#irqLines ??= new IrqLineSetter(this.fd);
    this.#irqLines.set(irq, level);
  }

  /** Replaces the whole GSI routing table. */
  setGsiRouting(routes: readonly GsiRoute[]): void {
    const bytes = new Uint8Array(KVM_IRQ_ROUTING.size + routes.length * KVM_IRQ_ROUTING_ENTRY.size);
    const v = new DataView(bytes.buffer);
    v.setUint32(KVM_IRQ_ROUTING.nr, routes.length, true);
    routes.forEach((r, i) => {
      const at = KVM_IRQ_ROUTING.entries + i * KVM_IRQ_ROUTING_ENTRY.size;
      v.setUint32(at + KVM_IRQ_ROUTING_ENTRY.gsi, r.gsi, true);
      if (r.kind === "irqchip") {
        v.setUint32(at + KVM_IRQ_ROUTING_ENTRY.type, KVM_IRQ_ROUTING_IRQCHIP, true);
        v.setUint32(at + KVM_IRQ_ROUTING_ENTRY.irqchip_irqchip, r.chip, true);
        v.setUint32(at + KVM_IRQ_ROUTING_ENTRY.irqchip_pin, r.pin, true);
      } else {
        v.setUint32(at + KVM_IRQ_ROUTING_ENTRY.type, KVM_IRQ_ROUTING_MSI, true);
        v.setUint32(at + KVM_IRQ_ROUTING_ENTRY.msi_address_lo, r.addressLo, true);
        v.setUint32(at + KVM_IRQ_ROUTING_ENTRY.msi_address_hi, r.addressHi, true);
        v.setUint32(at + KVM_IRQ_ROUTING_ENTRY.msi_data, r.data, true);
      }
    });
    checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_SET_GSI_ROUTING, bytes), "set GSI routing");
  }

  /** Makes writes to eventfd `fd` inject GSI `gsi` (assign), or stops that (deassign). */
  setIrqfd(fd: number, gsi: number, assign: boolean): void {
    const bytes = new Uint8Array(KVM_IRQFD.size);
    const v = new DataView(bytes.buffer);
    v.setUint32(KVM_IRQFD.fd, fd, true);
    v.setUint32(KVM_IRQFD.gsi, gsi, true);
    v.setUint32(KVM_IRQFD.flags, assign ? 0 : KVM_IRQFD_FLAG_DEASSIGN, true);
    checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_IRQFD, bytes), `${assign ? "assign" : "deassign"} irqfd for GSI ${gsi}`);
  }

  /** Makes guest writes of `length` bytes to `address` signal eventfd `fd` without a vCPU exit. */
  setIoeventfd(fd: number, space: "io" | "mmio", address: number, length: number, assign: boolean): void {
    const bytes = new Uint8Array(KVM_IOEVENTFD.size);
    const v = new DataView(bytes.buffer);
    v.setBigUint64(KVM_IOEVENTFD.addr, BigInt(address), true);
    v.setUint32(KVM_IOEVENTFD.len, length, true);
    v.setInt32(KVM_IOEVENTFD.fd, fd, true);
    v.setUint32(KVM_IOEVENTFD.flags, (space === "io" ? KVM_IOEVENTFD_FLAG_PIO : 0) | (assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN), true);
    checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_IOEVENTFD, bytes), `${assign ? "register" : "unregister"} ioeventfd at 0x${address.toString(16)}`);
  }

  /**
   * Makes guest port writes inside [port, port + size) go to KVM's coalesced ring instead of exiting
   * (KVM_CAP_COALESCED_PIO); whoever reads what those ports hold drains the ring first
   * (vcpu/coalesced_ring.ts). Returns the ring's page offset in each vCPU's mapping, or null when
   * this KVM cannot (the writes then exit as usual).
   */
  coalescePortWrites(port: number, size: number): number | null {
    const page = Math.max(0, sys.ioctlVal(this.fd, KVM_IOCTL.KVM_CHECK_EXTENSION, KVM_CAP.KVM_CAP_COALESCED_MMIO));
    if (page === 0 || sys.ioctlVal(this.fd, KVM_IOCTL.KVM_CHECK_EXTENSION, KVM_CAP.KVM_CAP_COALESCED_PIO) <= 0) return null;
    const bytes = new Uint8Array(KVM_COALESCED_MMIO_ZONE.size);
    const v = new DataView(bytes.buffer);
    v.setBigUint64(KVM_COALESCED_MMIO_ZONE.addr, BigInt(port), true);
    v.setUint32(KVM_COALESCED_MMIO_ZONE.zone_size, size, true);
    v.setUint32(KVM_COALESCED_MMIO_ZONE.pio, 1, true);
    return sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_REGISTER_COALESCED_MMIO, bytes) < 0 ? null : page;
  }

  /** Returns the kvmclock value (ns), to hold the guest's clock still across a suspend. */
  getClock(): bigint {
    const bytes = new Uint8Array(KVM_CLOCK_DATA.size);
    checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_GET_CLOCK, bytes), "read kvmclock");
    return new DataView(bytes.buffer).getBigUint64(KVM_CLOCK_DATA.clock, true);
  }

  /** Sets the kvmclock value (ns). */
  setClock(clock: bigint): void {
    const bytes = new Uint8Array(KVM_CLOCK_DATA.size);
    new DataView(bytes.buffer).setBigUint64(KVM_CLOCK_DATA.clock, clock, true);
    checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_SET_CLOCK, bytes), "set kvmclock");
  }

  /** Creates vCPU `id` and returns its fd. */
  createVcpuFd(id: number): number {
    return checked(sys.ioctlVal(this.fd, KVM_IOCTL.KVM_CREATE_VCPU, id), `create vCPU ${id}`);
  }
}
