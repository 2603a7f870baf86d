// pci_config_io.ts - configuration mechanism #1: the address register at 0xcf8 and data at 0xcfc-0xcff.
//
// The address latch lives in shared memory and every function's configuration space has an image
// (PciRoot.configImages), so a vCPU runner serves the latch and configuration reads itself; writes,
// and reads of registers with live contents, go to the PciRoot on the control loop, which renders
// the image again before it answers (see src/vcpu/worker_bus.ts).
//
// Where KVM can, writes to the address register do not exit at all: they are coalesced into KVM's
// ring (Vm.coalescePortWrites), and a vCPU runner applies them, in order, before it serves any access to
// these ports. A configuration read then costs one exit instead of two. Only a dword write at 0xcf8
// means anything here (0xcf9's reset control is not emulated), so delaying the others changes
// nothing; and every access that reads the latch comes through a runner, which has drained first.
import type { WorkerView } from "../../vcpu/worker_bus.ts";
import type { BusAccess, BusDevice } from "../bus.ts";
import type { CoalescedRing, CoalescedRingSpec } from "../../kvm/coalesced_ring.ts";
import { SharedRegisters } from "../shared_registers.ts";
import { PCI_CONFIG_SPACE_SIZE } from "./pci_configuration.ts";

export const PCI_CONFIG_IO_BASE = 0xcf8;
export const PCI_CONFIG_IO_SIZE = 8;
const ENABLE = 0x8000_0000;
/** Device slots on bus 0; each has PCI_CONFIG_SPACE_SIZE bytes in the images. */
export const PCI_SLOTS = 32;

/** Where configuration accesses go once decoded. */
export interface PciConfigTarget {
  configRead(bus: number, slot: number, fn: number, offset: number, length: number): number;
  configWrite(bus: number, slot: number, fn: number, offset: number, length: number, value: number): void;
}

/** Decodes CONFIG_ADDRESS (bit 31 enable, 23:16 bus, 15:11 device, 10:8 function, 7:2 register). */
export class PciConfigIo implements BusDevice {
  readonly debugLabel = "pci config io";
  readonly latch: SharedArrayBuffer;
  readonly #latch: Int32Array;
  /** Where KVM coalesces writes to the address register (set by the VMM; the runners drain it). */
  coalesced: CoalescedRingSpec | null = null;
  /** A runner's ring, drained before every access. */
  readonly #pending: CoalescedRing | null;

  /** `images`, when given, lets vCPU runners serve configuration reads (PciRoot.configImages). */
  constructor(readonly root: PciConfigTarget, latch?: SharedArrayBuffer, readonly images: SharedRegisters | null = null, pending: CoalescedRing | null = null) {
    this.latch = latch ?? new SharedArrayBuffer(4);
    this.#latch = new Int32Array(this.latch);
    this.#pending = pending;
  }

  get workerView(): WorkerView | null {
    return this.images ? { kind: "pci_config", latch: this.latch, images: this.images.buffer, coalesced: this.coalesced } : null;
  }

  /** Applies one write KVM coalesced (made once: draining allocates nothing). */
  readonly #applyCoalesced = (port: number, data: Uint8Array, pio: boolean): void => {
    if (pio && port >= PCI_CONFIG_IO_BASE && port < PCI_CONFIG_IO_BASE + 4) this.#writeAddress(port - PCI_CONFIG_IO_BASE, data);
  };

  read(access: BusAccess, data: Uint8Array): void {
    this.#pending?.drain(this.#applyCoalesced);
    const offset = access.offset;
    const address = Atomics.load(this.#latch, 0) >>> 0;
    let value: number;
    if (offset < 4) {
      value = address >>> (offset * 8);
    } else if (!(address & ENABLE)) {
      value = 0xffffffff;
    } else {
      const lane = offset - 4;
      const length = Math.min(data.byteLength, 4 - lane);
      value = this.root.configRead(...target(address), (address & 0xfc) + lane, length);
    }
    for (let i = 0; i < data.byteLength; i++) data[i] = i < 4 ? (value >>> (i * 8)) & 0xff : 0xff;
  }

  write(access: BusAccess, data: Uint8Array): void {
    this.#pending?.drain(this.#applyCoalesced);
    const offset = access.offset;
    if (offset < 4) {
      this.#writeAddress(offset, data);
      return;
    }
    let value = 0;
    for (let i = 0; i < Math.min(4, data.byteLength); i++) value |= data[i]! << (i * 8);
    value >>>= 0;
    const address = Atomics.load(this.#latch, 0) >>> 0;
    if (!(address & ENABLE)) return;
    const lane = offset - 4;
    const length = Math.min(data.byteLength, 4 - lane);
    this.root.configWrite(...target(address), (address & 0xfc) + lane, length, value);
  }

  /** Only a dword write at 0xcf8 sets the address; byte writes there (0xcf9 reset control) are ignored. */
  #writeAddress(offset: number, data: Uint8Array): void {
    if (offset !== 0 || data.byteLength !== 4) return;
    Atomics.store(this.#latch, 0, data[0]! | (data[1]! << 8) | (data[2]! << 16) | (data[3]! << 24));
  }
}

function target(address: number): [number, number, number] {
  return [(address >>> 16) & 0xff, (address >>> 11) & 0x1f, (address >>> 8) & 0x7];
}

/**
 * A vCPU runner's view of configuration space: reads from the images where they allow, everything
 * else as the port access it was, through `remote` (the control loop's PciConfigIo, which
 * decodes the same shared latch).
 */
export class WorkerPciConfigTarget implements PciConfigTarget {
  readonly #images: SharedRegisters;
  readonly #remote: BusDevice;
  readonly #access: BusAccess = { offset: 0, address: 0, vcpuId: 0 };
  readonly #bytes = Array.from({ length: 5 }, (_, n) => new Uint8Array(n));

  constructor(images: SharedArrayBuffer, remote: BusDevice) {
    this.#images = new SharedRegisters(images);
    this.#remote = remote;
  }

  configRead(bus: number, slot: number, fn: number, offset: number, length: number): number {
    const bytes = this.#bytes[length]!;
    // Only function 0 of bus 0 exists; its absent slots have images of all ones.
    if (bus !== 0 || fn !== 0) return length === 4 ? 0xffffffff : (1 << (length * 8)) - 1;
    if (!this.#images.read(slot * PCI_CONFIG_SPACE_SIZE + offset, bytes)) this.#port(false, offset, bytes);
    let value = 0;
    for (let i = 0; i < length; i++) value |= bytes[i]! << (i * 8);
    return value >>> 0;
  }

  configWrite(_bus: number, _slot: number, _fn: number, offset: number, length: number, value: number): void {
    const bytes = this.#bytes[length]!;
    for (let i = 0; i < length; i++) bytes[i] = (value >>> (i * 8)) & 0xff;
    this.#port(true, offset, bytes);
  }

  #port(write: boolean, offset: number, bytes: Uint8Array): void {
    const access = this.#access;
    access.address = PCI_CONFIG_IO_BASE + 4 + (offset & 3);
    access.offset = 4 + (offset & 3);
    if (write) this.#remote.write(access, bytes);
    else this.#remote.read(access, bytes);
  }
}

/** Configuration-space images for PCI_SLOTS functions, absent ones reading as all ones. */
export function createConfigImages(): SharedRegisters {
  const images = new SharedRegisters(PCI_SLOTS * PCI_CONFIG_SPACE_SIZE);
  images.fill(0, images.size, 0xff);
  images.setLocal(0, images.size, true);
  return images;
}
