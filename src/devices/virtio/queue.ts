// queue.ts - the device side of a split virtqueue (virtio 1.2 §2.7).
//
//   descriptor table  16 B x size   driver-written: buffers, chained by `next`
//   available ring    flags | idx | ring[size] | used_event      driver -> device
//   used ring         flags | idx | ring[size] of {id, len} | avail_event   device -> driver
//
// Invariants kept here: the device never reads past `avail.idx` (acquire load), publishes `used.idx`
// only after the element it covers (release store), and re-reads `used_event` after a full fence.
// Everything the guest wrote is validated; a popped chain is either a DescriptorChain, a chain
// error (returned to the driver with zero length), or a fatal error (the device needs a reset).
import { err, ok, type Result } from "../../base/result.ts";
import { type GuestAddress, type GuestMemory, guestAddressFromHalves, guestAddressFromU64 } from "../../memory/mod.ts";
import { type DescriptorChain, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_SIZE } from "./descriptor_chain.ts";

export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;
/** MSI-X "no vector" (virtio 1.2 §4.1.5.1.2). */
export const VIRTIO_MSI_NO_VECTOR = 0xffff;
/** bounds an indirect table so a hostile length cannot make the device walk millions of entries */
export const MAX_INDIRECT_DESCRIPTORS = 4096;
/** bounds the bytes of one chain unless the device states its own limit (what it can use at most) */
export const DEFAULT_MAX_CHAIN_BYTES = 16 * 1024 * 1024;

/** What `pop` found. */
export type PopResult =
  | { readonly kind: "chain"; readonly chain: DescriptorChain }
  | { readonly kind: "bad_chain"; readonly head: number; readonly reason: string }
  | { readonly kind: "fatal"; readonly reason: string };

/** Queue settings the driver programs through the transport; ring addresses are the raw 64-bit registers. */
export type QueueConfig = { size: number; ready: boolean; desc: bigint; driver: bigint; device: bigint; vector: number };

/**
 * Where a started queue resumes (a vhost-user back-end takes over a ring that was already in use);
 * a null `nextUsed` continues from the used index the ring holds.
 */
export type QueueStart = { readonly nextAvail: number; readonly nextUsed: number | null };

/** The ring features that change how a queue is read. */
export type RingFeatures = { readonly eventIdx: boolean; readonly indirect: boolean };

type Rings = {
  readonly desc: DataView;
  readonly avail: DataView;
  readonly used: DataView;
  readonly availIdx: Uint16Array;
  readonly usedFlags: Uint16Array;
  readonly usedIdx: Uint16Array;
  readonly usedEvent: Uint16Array;
  readonly availEvent: Uint16Array;
};

/** One split virtqueue: its configuration, and once activated, its rings in guest memory. */
export class Queue {
  readonly maxSize: number;
  /** The queue's index in its device (interrupts name queues by index). */
  readonly index: number;
  /** The most bytes one chain may describe; a longer chain is returned unused. */
  readonly maxChainBytes: number;
  readonly config: QueueConfig;
  #memory: GuestMemory | null = null;
  #rings: Rings | null = null;
  #eventIdx = false;
  #indirect = false;
  #nextAvail = 0;
  #nextUsed = 0;
  #signalledUsed = 0;

  constructor(maxSize: number, index = 0, maxChainBytes = DEFAULT_MAX_CHAIN_BYTES) {
    this.maxSize = maxSize;
    this.index = index;
    this.maxChainBytes = maxChainBytes;
    this.config = Queue.initialConfig(maxSize);
  }

  static initialConfig(maxSize: number): QueueConfig {
    return { size: maxSize, ready: false, desc: 0n, driver: 0n, device: 0n, vector: VIRTIO_MSI_NO_VECTOR };
  }

  /** Returns the queue to its state after a device reset. */
  reset(): void {
    Object.assign(this.config, Queue.initialConfig(this.maxSize));
    this.#memory = null;
    this.#rings = null;
    this.#nextAvail = 0;
    this.#nextUsed = 0;
    this.#signalledUsed = 0;
  }

  /**
   * Checks the driver's settings and maps the rings, starting at the rings' beginning or at `start`;
   * returns why they are unusable.
   */
  activate(memory: GuestMemory, features: RingFeatures, start: QueueStart = { nextAvail: 0, nextUsed: 0 }): Result<null> {
    const { size } = this.config;
    if (size === 0 || size > this.maxSize || (size & (size - 1)) !== 0) return err(`queue size ${size} is not a power of two up to ${this.maxSize}`);
    const desc = guestAddressFromU64(this.config.desc);
    const driver = guestAddressFromU64(this.config.driver);
    const device = guestAddressFromU64(this.config.device);
    if (desc === null || driver === null || device === null) return err("a ring address lies beyond the physical address space");
    if (desc % 16 !== 0 || driver % 2 !== 0 || device % 4 !== 0) return err("ring addresses are misaligned");
    const region = (address: GuestAddress, length: number): DataView | null => {
      const bytes = memory.slice(address, length);
      return bytes ? new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength) : null;
    };
    const d = region(desc, VIRTQ_DESC_SIZE * size);
    const a = region(driver, 6 + 2 * size);
    const u = region(device, 6 + 8 * size);
    if (!d || !a || !u) return err("a ring lies outside guest RAM");
    const u16 = (v: DataView, offset: number): Uint16Array => new Uint16Array(v.buffer, v.byteOffset + offset, 1);
    this.#rings = {
      desc: d, avail: a, used: u,
      availIdx: u16(a, 2), usedFlags: u16(u, 0), usedIdx: u16(u, 2), usedEvent: u16(a, 4 + 2 * size), availEvent: u16(u, 4 + 8 * size),
    };
    this.#memory = memory;
    this.#eventIdx = features.eventIdx;
    this.#indirect = features.indirect;
    this.#nextAvail = start.nextAvail & 0xffff;
    this.#nextUsed = start.nextUsed === null ? Atomics.load(this.#rings.usedIdx, 0) : start.nextUsed & 0xffff;
    this.#signalledUsed = this.#nextUsed;
    return ok(null);
  }

  get active(): boolean {
    return this.#rings !== null;
  }

  /** The index of the next available entry the device will take (vhost-user's "vring base"). */
  get nextAvail(): number {
    return this.#nextAvail;
  }

  /** The used index as published in the ring (0 before activation). */
  get publishedUsed(): number {
    const r = this.#rings;
    return r === null ? 0 : Atomics.load(r.usedIdx, 0);
  }

  /** Returns whether the driver has made buffers available that were not popped yet. */
  hasAvailable(): boolean {
    const r = this.#rings;
    return r !== null && Atomics.load(r.availIdx, 0) !== this.#nextAvail;
  }

  /** Takes the next available chain, or null when there is none. */
  pop(): PopResult | null {
    const r = this.#rings;
    if (r === null) return null;
    const size = this.config.size;
    const availIdx = Atomics.load(r.availIdx, 0);
    const pending = (availIdx - this.#nextAvail) & 0xffff;
    if (pending === 0) return null;
    if (pending > size) return { kind: "fatal", reason: `avail index jumped by ${pending} on a queue of ${size}` };
    const head = r.avail.getUint16(4 + 2 * (this.#nextAvail % size), true);
    this.#nextAvail = (this.#nextAvail + 1) & 0xffff;
    if (head >= size) return { kind: "fatal", reason: `avail ring names descriptor ${head} of ${size}` };
    const parsed = this.#parseChain(head, r.desc, size);
    return typeof parsed === "string" ? { kind: "bad_chain", head, reason: parsed } : { kind: "chain", chain: parsed };
  }

  /** Puts back the last `count` popped chains (not yet used), to be popped again later. */
  undoPop(count: number): void {
    this.#nextAvail = (this.#nextAvail - count) & 0xffff;
  }

  /**
   * Tells the driver it need not notify: the device will look at the ring anyway (virtio 1.2
   * §2.7.10). With event idx, avail_event is simply left behind; without, VIRTQ_USED_F_NO_NOTIFY.
   */
  disableNotification(): void {
    const r = this.#rings;
    if (r && !this.#eventIdx) Atomics.store(r.usedFlags, 0, VIRTQ_USED_F_NO_NOTIFY);
  }

  /**
   * Tells the driver to notify after the next buffer it adds (event idx: avail_event; otherwise
   * clearing VIRTQ_USED_F_NO_NOTIFY). The caller then looks at the ring once more: a buffer added
   * before the driver saw this got no notification.
   */
  enableNotification(): void {
    const r = this.#rings;
    if (r === null) return;
    if (this.#eventIdx) Atomics.store(r.availEvent, 0, this.#nextAvail);
    else Atomics.store(r.usedFlags, 0, 0);
  }

  /** Returns chain `head` to the driver with `length` bytes written. */
  addUsed(head: number, length: number): void {
    const r = this.#rings;
    if (r === null) return;
    const slot = 4 + 8 * (this.#nextUsed % this.config.size);
    r.used.setUint32(slot, head, true);
    r.used.setUint32(slot + 4, length, true);
    this.#nextUsed = (this.#nextUsed + 1) & 0xffff;
    Atomics.store(r.usedIdx, 0, this.#nextUsed); // release: the element is visible before the index
  }

  /** Returns whether the driver wants an interrupt for the buffers used since the last one (§2.7.10). */
  shouldNotify(): boolean {
    const r = this.#rings;
    if (r === null) return false;
    const previous = this.#signalledUsed;
    const current = this.#nextUsed;
    if (previous === current) return false;
    this.#signalledUsed = current;
    if (this.#eventIdx) {
      const usedEvent = Atomics.load(r.usedEvent, 0); // seq-cst: ordered after the used.idx store
      return ((current - usedEvent - 1) & 0xffff) < ((current - previous) & 0xffff);
    }
    return (r.avail.getUint16(0, true) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /** Walks and validates the chain at `head`; returns it, or why it is invalid. */
  #parseChain(head: number, mainTable: DataView, size: number): DescriptorChain | string {
    const memory = this.#memory!;
    const readable: Uint8Array[] = [];
    const writable: Uint8Array[] = [];
    let readableLength = 0;
    let writableLength = 0;
    let table = mainTable;
    let tableSize = size;
    let index = head;
    let visited = 0;
    let inIndirect = false;
    let total = 0;
    for (;;) {
      if (index >= tableSize) return `descriptor index ${index} is outside a table of ${tableSize}`;
      if (++visited > tableSize) return "descriptor chain loops or is longer than its table";
      const at = index * VIRTQ_DESC_SIZE;
      const address = guestAddressFromHalves(table.getUint32(at, true), table.getUint32(at + 4, true));
      const length = table.getUint32(at + 8, true);
      if (address === null) return "a descriptor address lies beyond the physical address space";
      const flags = table.getUint16(at + 12, true);
      const next = table.getUint16(at + 14, true);
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.#indirect) return "indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC";
        if (inIndirect) return "indirect descriptor inside an indirect table";
        if (flags & VIRTQ_DESC_F_NEXT) return "indirect descriptor with VIRTQ_DESC_F_NEXT";
        if (length === 0 || length % VIRTQ_DESC_SIZE !== 0 || length / VIRTQ_DESC_SIZE > MAX_INDIRECT_DESCRIPTORS) {
          return `indirect table length ${length} is not a multiple of 16 up to ${MAX_INDIRECT_DESCRIPTORS} entries`;
        }
        const bytes = memory.slice(address, length);
        if (bytes === null) return "indirect table lies outside guest RAM";
        table = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        tableSize = length / VIRTQ_DESC_SIZE;
        index = 0;
        visited = 0;
        inIndirect = true;
        continue;
      }
      total += length;
      if (total > this.maxChainBytes) return `chain describes more than ${this.maxChainBytes} bytes, the most this device uses`;
      const views = memory.slices(address, length);
      if (views === null) return `buffer 0x${address.toString(16)}+${length} lies outside guest RAM`;
      if (flags & VIRTQ_DESC_F_WRITE) {
        for (let i = 0; i < views.length; i++) writable.push(views[i]!); // (no spread: this runs per buffer)
        writableLength += length;
      } else {
        if (writable.length > 0) return "device-readable buffer after a device-writable one";
        for (let i = 0; i < views.length; i++) readable.push(views[i]!);
        readableLength += length;
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) break;
      index = next;
    }
    return { head, readable, writable, readableLength, writableLength };
  }
}

/** The index the device has reached in `queue`'s used ring, as the guest sees it (null outside RAM). */
export function usedRingIndex(memory: GuestMemory, queue: Queue): number | null {
  const address = guestAddressFromU64(queue.config.device + 2n);
  const bytes = address === null ? null : memory.slice(address, 2);
  return bytes === null ? null : bytes[0]! | (bytes[1]! << 8);
}

/** The VMM's own addresses of a queue's rings (vhost's "user addresses"), or null outside shared RAM. */
export function ringHostAddresses(memory: GuestMemory, queue: Queue): { descriptor: bigint; available: bigint; used: bigint } | null {
  const host = (address: bigint): bigint | null => {
    const guest = guestAddressFromU64(address);
    const at = guest === null ? null : memory.hostAddressOf(guest);
    return at === null ? null : BigInt(at);
  };
  const descriptor = host(queue.config.desc);
  const available = host(queue.config.driver);
  const used = host(queue.config.device);
  return descriptor === null || available === null || used === null ? null : { descriptor, available, used };
}
