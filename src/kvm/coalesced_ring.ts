// coalesced_ring.ts - the ring KVM appends coalesced writes to (KVM_REGISTER_COALESCED_MMIO).
//
// A write to a coalesced zone does not exit: KVM appends it to a one-page ring that every vCPU's
// mapping holds at the same page, and userspace applies it later, in order. That suits a register
// whose writes only matter to a later read (the PCI configuration address at 0xcf8): whoever reads
// what such writes set drains the ring first. The ring is one per VM, so the vCPU runners that
// drain it take a lock shared between them.
import { KVM_COALESCED_MMIO, KVM_COALESCED_MMIO_RING } from "./kvm_structs.ts";

const PAGE_SIZE = 4096;
/** Entries in the one-page ring (the kernel's KVM_COALESCED_MMIO_MAX). */
export const COALESCED_RING_ENTRIES = Math.floor((PAGE_SIZE - KVM_COALESCED_MMIO_RING.entries) / KVM_COALESCED_MMIO.size);
const MAX_WRITE_BYTES = 8;

/** Where the ring is, for a vCPU runner: its page in the vCPU mapping, and the drainers' lock. */
export type CoalescedRingSpec = { readonly page: number; readonly lock: SharedArrayBuffer };

/** Receives one drained write: the address (a port for `pio`), and its bytes (valid during the call). */
export type CoalescedWrite = (address: number, data: Uint8Array, pio: boolean) => void;

export class CoalescedRing {
  readonly #ring: DataView;
  readonly #bytes: Uint8Array;
  readonly #lock: Int32Array;
  /** A buffer per write length, so draining allocates nothing. */
  readonly #data = Array.from({ length: MAX_WRITE_BYTES + 1 }, (_, n) => new Uint8Array(n));

  /** `mapping` is a vCPU's whole mapping (kvm_run and the pages after it). */
  constructor(mapping: Uint8Array, spec: CoalescedRingSpec) {
    const start = spec.page * PAGE_SIZE;
    if (spec.page <= 0 || start + PAGE_SIZE > mapping.byteLength) throw new Error(`the coalesced ring's page ${spec.page} lies outside the vCPU mapping`);
    this.#bytes = mapping.subarray(start, start + PAGE_SIZE);
    this.#ring = new DataView(this.#bytes.buffer, this.#bytes.byteOffset, PAGE_SIZE);
    this.#lock = new Int32Array(spec.lock);
  }

  /** Applies every write in the ring, oldest first, and gives their entries back to KVM. */
  drain(apply: CoalescedWrite): void {
    const ring = this.#ring;
    if (ring.getUint32(KVM_COALESCED_MMIO_RING.first, true) === ring.getUint32(KVM_COALESCED_MMIO_RING.last, true)) return;
    while (Atomics.compareExchange(this.#lock, 0, 0, 1) !== 0); // another vCPU drains: a few entries
    try {
      let first = ring.getUint32(KVM_COALESCED_MMIO_RING.first, true) % COALESCED_RING_ENTRIES;
      const last = ring.getUint32(KVM_COALESCED_MMIO_RING.last, true) % COALESCED_RING_ENTRIES;
      while (first !== last) {
        const at = KVM_COALESCED_MMIO_RING.entries + first * KVM_COALESCED_MMIO.size;
        const address = ring.getUint32(at + KVM_COALESCED_MMIO.phys_addr, true) + ring.getUint32(at + KVM_COALESCED_MMIO.phys_addr + 4, true) * 0x1_0000_0000;
        const data = this.#data[Math.min(MAX_WRITE_BYTES, ring.getUint32(at + KVM_COALESCED_MMIO.len, true))]!;
        for (let i = 0; i < data.byteLength; i++) data[i] = this.#bytes[at + KVM_COALESCED_MMIO.data + i]!;
        const pio = ring.getUint32(at + KVM_COALESCED_MMIO.pio, true) !== 0;
        first = (first + 1) % COALESCED_RING_ENTRIES;
        // Give the entry back before applying it: a write that throws is not applied twice.
        ring.setUint32(KVM_COALESCED_MMIO_RING.first, first, true);
        apply(address, data, pio);
      }
    } finally {
      Atomics.store(this.#lock, 0, 0);
    }
  }
}
