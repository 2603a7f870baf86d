// interrupt.ts - how a virtio device interrupts its driver, whichever side of a socket it runs on.
//
// A device calls `signalUsedQueue(queue)` and `signalConfigChanged()`. On the VMM's side that is
// PciInterrupt: an MSI-X vector (an irqfd), or INTx plus the ISR. A device running elsewhere (a
// vhost-user backend) cannot call into the VMM; it writes an eventfd instead: `queueNotifier(queue)`
// is the vector's irqfd itself when the vector can be delivered straight away (the fast path, no
// VMM involved), or an eventfd the VMM watches and turns into a pending bit or INTx when it cannot
// (MSI-X off or masked). When that choice changes, `onNotifiersChanged` listeners hear about it.
import { EventFd } from "../../base/event_fd.ts";
import type { IrqLine } from "../interrupt.ts";
import type { MsixConfig } from "./msix.ts";
import { VIRTIO_MSI_NO_VECTOR } from "./queue.ts";
import type { DeviceEventLoop } from "./virtio_device.ts";

/** ISR status bits (virtio 1.2 §4.1.4.5). */
export const VIRTIO_ISR_QUEUE = 1;
export const VIRTIO_ISR_CONFIG = 2;

/** What a device uses to interrupt its driver. */
export interface VirtioInterrupt {
  /** Tells the driver that buffers of queue `queue` were used. */
  signalUsedQueue(queue: number): void;
  /** Tells the driver that the device configuration (or status) changed. */
  signalConfigChanged(): void;
  /** Returns an eventfd whose writes interrupt the driver for `queue` (for devices in other processes). */
  queueNotifier(queue: number): EventFd;
  /** Sets the one listener told when queue notifiers may have changed (null: none). */
  onNotifiersChanged(listener: (() => void) | null): void;
}

/** The interrupt half of a virtio-pci function: MSI-X vectors, or INTx and the ISR. */
export class PciInterrupt implements VirtioInterrupt {
  #isr = 0;
  configVector = VIRTIO_MSI_NO_VECTOR;
  /** One eventfd per queue that the VMM watches while a queue's vector cannot be written directly. */
  readonly #fallbacks: EventFd[];
  #listener: (() => void) | null = null;
  #watching = false;

  constructor(
    readonly msix: MsixConfig,
    readonly intx: IrqLine,
    readonly queueVector: (queue: number) => number,
    queueCount: number,
  ) {
    this.#fallbacks = Array.from({ length: queueCount }, () => new EventFd());
    msix.onChange(() => this.#listener?.());
  }

  signalUsedQueue(queue: number): void {
    this.#signal(this.queueVector(queue), VIRTIO_ISR_QUEUE);
  }

  signalConfigChanged(): void {
    this.#signal(this.configVector, VIRTIO_ISR_CONFIG);
  }

  queueNotifier(queue: number): EventFd {
    const vector = this.queueVector(queue);
    if (vector !== VIRTIO_MSI_NO_VECTOR) {
      const direct = this.msix.directNotifier(vector);
      if (direct) return direct;
    }
    return this.#fallbacks[queue]!;
  }

  onNotifiersChanged(listener: (() => void) | null): void {
    this.#listener = listener;
  }

  /** Tells the listener that a queue's vector changed (the transport calls this). */
  notifiersChanged(): void {
    this.#listener?.();
  }

  /** Watches the fallback eventfds on `loop` while a device may write them (from activation to reset). */
  watchFallbacks(loop: DeviceEventLoop): void {
    if (this.#watching) return;
    this.#watching = true;
    this.#fallbacks.forEach((fd, queue) => loop.watch(fd.fd, () => {
      if (fd.read() > 0) this.signalUsedQueue(queue);
    }));
  }

  unwatchFallbacks(loop: DeviceEventLoop): void {
    if (!this.#watching) return;
    this.#watching = false;
    for (const fd of this.#fallbacks) {
      loop.unwatch(fd.fd);
      fd.read();
    }
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

  close(): void {
    for (const fd of this.#fallbacks) fd.close();
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
