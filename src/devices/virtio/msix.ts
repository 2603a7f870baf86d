// msix.ts - an MSI-X table and pending-bit array (PCI 3.0 §6.8.2), delivering vectors through irqfds.
//
// Each vector owns a GSI and an eventfd registered with KVM_IRQFD; programming the table entry sets
// the GSI's MSI route. Triggering a masked vector (entry or function mask) sets its pending bit;
// unmasking delivers it.
import { EventFd } from "../../base/event_fd.ts";

/** Table entry: message address low/high, data, vector control (bit 0: masked). */
export const MSIX_ENTRY_SIZE = 16;
const VECTOR_CTRL_MASKED = 1;
/** Message control bits in the capability. */
export const MSIX_CONTROL_ENABLE = 0x8000;
export const MSIX_CONTROL_FUNCTION_MASK = 0x4000;

/** Where MSI routes are kept (KVM_SET_GSI_ROUTING) and irqfds registered. */
export interface MsiRouter {
  allocateGsi(): number;
  setMsiRoute(gsi: number, addressLo: number, addressHi: number, data: number): void;
  attachIrqfd(fd: number, gsi: number): void;
  detachIrqfd(fd: number, gsi: number): void;
}

type Vector = { gsi: number; event: EventFd; routed: boolean; lo: number; hi: number; data: number; ctrl: number; pending: boolean };

/** The MSI-X state of one function. */
export class MsixConfig {
  readonly #vectors: Vector[];
  readonly #table: DataView;
  enabled = false;
  functionMasked = false;
  #onChange: (() => void) | null = null;

  constructor(readonly count: number, readonly router: MsiRouter) {
    this.#table = new DataView(new ArrayBuffer(count * MSIX_ENTRY_SIZE));
    this.#vectors = Array.from({ length: count }, (_, i) => {
      this.#table.setUint32(i * MSIX_ENTRY_SIZE + 12, VECTOR_CTRL_MASKED, true);
      return { gsi: router.allocateGsi(), event: new EventFd(), routed: false, lo: 0, hi: 0, data: 0, ctrl: VECTOR_CTRL_MASKED, pending: false };
    });
  }

  /** Applies the capability's message control register (enable and function mask). */
  setControl(control: number): void {
    const wasMasked = !this.enabled || this.functionMasked;
    this.enabled = (control & MSIX_CONTROL_ENABLE) !== 0;
    this.functionMasked = (control & MSIX_CONTROL_FUNCTION_MASK) !== 0;
    if (wasMasked && this.enabled && !this.functionMasked) this.#vectors.forEach((_, i) => this.#deliverPending(i));
    this.#onChange?.();
  }

  /** Sets the one callback run after the control register or a table entry changed. */
  onChange(callback: (() => void) | null): void {
    this.#onChange = callback;
  }

  /**
   * Returns the irqfd eventfd of `vector` when a write to it would be delivered at once (MSI-X on,
   * neither the function nor the vector masked, the route set), or null when it must go through
   * `trigger` to honour a mask.
   */
  directNotifier(vector: number): EventFd | null {
    const v = this.#vectors[vector];
    if (!v || !this.enabled || this.functionMasked || v.ctrl & VECTOR_CTRL_MASKED || !v.routed) return null;
    return v.event;
  }

  /** Delivers `vector`, or records it pending while masked. Out-of-range vectors are ignored. */
  trigger(vector: number): void {
    const v = this.#vectors[vector];
    if (!v) return;
    if (!this.enabled || this.functionMasked || v.ctrl & VECTOR_CTRL_MASKED || !v.routed) {
      v.pending = true;
      return;
    }
    v.event.signal();
  }

  /** Reads the table (offset inside the table region). */
  readTable(offset: number, data: Uint8Array): void {
    this.#copyOut(this.#table, offset, data);
  }

  /** Writes the table; a changed entry gets its route updated, an unmasked one its pending message. */
  writeTable(offset: number, data: Uint8Array): void {
    if (offset < 0 || offset + data.byteLength > this.#table.byteLength || data.byteLength > 8) return;
    for (let i = 0; i < data.byteLength; i++) this.#table.setUint8(offset + i, data[i]!);
    const first = Math.floor(offset / MSIX_ENTRY_SIZE);
    const last = Math.floor((offset + data.byteLength - 1) / MSIX_ENTRY_SIZE);
    for (let index = first; index <= last; index++) this.#sync(index);
    this.#onChange?.();
  }

  /** Reads the pending-bit array. */
  readPba(offset: number, data: Uint8Array): void {
    const pba = new DataView(new ArrayBuffer(Math.ceil(this.count / 64) * 8));
    this.#vectors.forEach((v, i) => {
      if (v.pending) pba.setUint8(i >> 3, pba.getUint8(i >> 3) | (1 << (i & 7)));
    });
    this.#copyOut(pba, offset, data);
  }

  /** Unregisters the irqfds and closes their eventfds. */
  close(): void {
    for (const v of this.#vectors) {
      if (v.routed) this.router.detachIrqfd(v.event.fd, v.gsi);
      v.event.close();
    }
  }

  #sync(index: number): void {
    const v = this.#vectors[index]!;
    const at = index * MSIX_ENTRY_SIZE;
    const lo = this.#table.getUint32(at, true);
    const hi = this.#table.getUint32(at + 4, true);
    const data = this.#table.getUint32(at + 8, true);
    v.ctrl = this.#table.getUint32(at + 12, true);
    if (lo !== v.lo || hi !== v.hi || data !== v.data || !v.routed) {
      v.lo = lo;
      v.hi = hi;
      v.data = data;
      this.router.setMsiRoute(v.gsi, lo, hi, data);
      if (!v.routed) {
        this.router.attachIrqfd(v.event.fd, v.gsi);
        v.routed = true;
      }
    }
    this.#deliverPending(index);
  }

  #deliverPending(index: number): void {
    const v = this.#vectors[index]!;
    if (v.pending && this.enabled && !this.functionMasked && !(v.ctrl & VECTOR_CTRL_MASKED) && v.routed) {
      v.pending = false;
      v.event.signal();
    }
  }

  #copyOut(view: DataView, offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.byteLength; i++) {
      const at = offset + i;
      data[i] = at >= 0 && at < view.byteLength ? view.getUint8(at) : 0;
    }
  }
}
