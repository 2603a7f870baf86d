// virtqueue_driver.ts - the driver side of a split virtqueue, writing rings into a GuestMemory for tests.
import { Queue } from "../../src/devices/virtio/queue.ts";
import { GuestMemory, guestAddress as ga } from "../../src/memory/mod.ts";

export const RAM_SIZE = 1 << 20;
export const DESC = 0x1000;
export const AVAIL = 0x2000;
export const USED = 0x3000;
export const BUFFERS = 0x10000;

/** A descriptor as the driver writes it. */
export type DriverDesc = { addr: number; len: number; flags: number; next: number };

/** Guest RAM plus a queue configured by this "driver". */
export class VirtqueueDriver {
  readonly memory: GuestMemory;
  readonly queue: Queue;
  readonly #desc: number;
  readonly #avail: number;
  readonly #used: number;
  #availIdx = 0;

  /**
   * `place`: a second queue shares another driver's memory, its rings from `rings` on (three
   * pages: table, avail, used; the default is DESC, AVAIL and USED) and is queue `index`.
   */
  constructor(readonly size = 8, features = { eventIdx: false, indirect: true }, place: { memory?: GuestMemory; rings?: number; index?: number } = {}) {
    this.memory = place.memory ?? GuestMemory.fromBuffers([{ base: 0, bytes: new Uint8Array(RAM_SIZE) }]);
    this.#desc = place.rings ?? DESC;
    this.#avail = this.#desc + (AVAIL - DESC);
    this.#used = this.#desc + (USED - DESC);
    this.queue = new Queue(size, place.index ?? 0);
    Object.assign(this.queue.config, { size, desc: BigInt(this.#desc), driver: BigInt(this.#avail), device: BigInt(this.#used), ready: true });
    const started = this.queue.activate(this.memory, features);
    if (!started.ok) throw new Error(started.error);
  }

  /** Writes descriptor `index` of the main table (or of a table at `tableAddress`). */
  writeDesc(index: number, d: DriverDesc, tableAddress = this.#desc): void {
    const at = tableAddress + index * 16;
    this.memory.writeU64(ga(at), BigInt(d.addr));
    this.memory.writeU32(ga(at + 8), d.len);
    this.memory.writeU16(ga(at + 12), d.flags);
    this.memory.writeU16(ga(at + 14), d.next);
  }

  /** Puts `head` in the avail ring and publishes it. */
  publish(head: number): void {
    this.memory.writeU16(ga(this.#avail + 4 + 2 * (this.#availIdx % this.size)), head);
    this.#availIdx = (this.#availIdx + 1) & 0xffff;
    this.memory.writeU16(ga(this.#avail + 2), this.#availIdx);
  }

  /** Sets avail.idx directly (to make it jump). */
  setAvailIdx(value: number): void {
    this.#availIdx = value & 0xffff;
    this.memory.writeU16(ga(this.#avail + 2), this.#availIdx);
  }

  setUsedEvent(value: number): void {
    this.memory.writeU16(ga(this.#avail + 4 + 2 * this.size), value);
  }

  /** used.flags (VIRTQ_USED_F_NO_NOTIFY: the device asks not to be notified). */
  usedFlags(): number {
    return this.memory.readU16(ga(this.#used));
  }

  usedIdx(): number {
    return this.memory.readU16(ga(this.#used + 2));
  }

  /** Returns used element `n` as {id, len}. */
  used(n: number): { id: number; len: number } {
    const at = this.#used + 4 + 8 * (n % this.size);
    return { id: this.memory.readU32(ga(at)), len: this.memory.readU32(ga(at + 4)) };
  }

  availEvent(): number {
    return this.memory.readU16(ga(this.#used + 4 + 8 * this.size));
  }
}
