// interrupt.ts - how a virtio device interrupts its driver: an MSI-X vector, or INTx plus the ISR.
import type { IrqLine } from "../interrupt.ts";
import type { MsixConfig } from "./msix.ts";
import { VIRTIO_MSI_NO_VECTOR } from "./queue.ts";

/** ISR status bits (virtio 1.2 §4.1.4.5). */
export const VIRTIO_ISR_QUEUE = 1;
export const VIRTIO_ISR_CONFIG = 2;

/** The interrupt half of a virtio-pci function. */
export class VirtioInterrupt {
  #isr = 0;
  configVector = VIRTIO_MSI_NO_VECTOR;

  constructor(readonly msix: MsixConfig, readonly intx: IrqLine) {}

  /** Tells the driver that queue buffers were used; `vector` is the queue's MSI-X vector. */
  signalUsedQueue(vector: number): void {
    this.#signal(vector, VIRTIO_ISR_QUEUE);
  }

  /** Tells the driver that the device configuration (or status) changed. */
  signalConfigChanged(): void {
    this.#signal(this.configVector, VIRTIO_ISR_CONFIG);
  }

  /** Returns and clears the ISR, lowering INTx (reading the ISR is the driver's acknowledgement). */
  readIsr(): number {
    const isr = this.#isr;
    this.#isr = 0;
    this.intx.setLevel(false);
    return isr;
  }

  reset(): void {
    this.#isr = 0;
    this.configVector = VIRTIO_MSI_NO_VECTOR;
    this.intx.setLevel(false);
  }

  #signal(vector: number, isrBit: number): void {
    if (this.msix.enabled) {
      if (vector !== VIRTIO_MSI_NO_VECTOR) this.msix.trigger(vector);
      return;
    }
    this.#isr |= isrBit;
    this.intx.setLevel(true);
  }
}
