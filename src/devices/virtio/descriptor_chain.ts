// descriptor_chain.ts - a validated descriptor chain and sequential access to its buffers (virtio 1.2 §2.7.5).
//
// A chain is parsed completely when it is popped: every descriptor is checked against guest RAM, the
// chain length is bounded, indirect tables are followed once, and device-writable buffers must come
// after the readable ones. Buffers are kept as live views of guest memory, so a device reads and
// writes the guest's pages directly.

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
/** struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; } */
export const VIRTQ_DESC_SIZE = 16;

/** A popped chain: its head index (for the used ring) and its buffers, split at region boundaries. */
export type DescriptorChain = {
  readonly head: number;
  readonly readable: readonly Uint8Array[];
  readonly writable: readonly Uint8Array[];
  readonly readableLength: number;
  readonly writableLength: number;
};

/** A position in a list of buffers, handing out the next bytes as views (no copies). */
export class BufferCursor {
  #index = 0;
  #offset = 0;
  #taken = 0;
  constructor(readonly buffers: readonly Uint8Array[], readonly length: number) {}

  get taken(): number {
    return this.#taken;
  }

  get remaining(): number {
    return this.length - this.#taken;
  }

  /** Returns views of the next `length` bytes, or null (taking nothing) when fewer remain. */
  take(length: number): Uint8Array[] | null {
    if (length > this.remaining) return null;
    const out: Uint8Array[] = [];
    let left = length;
    while (left > 0) {
      const buf = this.buffers[this.#index]!;
      const n = Math.min(buf.byteLength - this.#offset, left);
      out.push(buf.subarray(this.#offset, this.#offset + n));
      left -= n;
      this.#advance(buf, n);
    }
    this.#taken += length;
    return out;
  }

  /**
   * Copies the next `bytes.byteLength` bytes into `bytes` ("out": reading the chain) or from it
   * ("in": writing the chain); false, moving nothing, when fewer remain. A few bytes (a request
   * header, a status byte) are copied one by one: no view is made for them, which on a device's hot
   * path cost more than the copy.
   */
  copy(bytes: Uint8Array, direction: "out" | "in"): boolean {
    const length = bytes.byteLength;
    if (length > this.remaining) return false;
    let at = 0;
    while (at < length) {
      const buf = this.buffers[this.#index]!;
      const n = Math.min(buf.byteLength - this.#offset, length - at);
      if (n <= SMALL_COPY) {
        for (let i = 0; i < n; i++) {
          if (direction === "out") bytes[at + i] = buf[this.#offset + i]!;
          else buf[this.#offset + i] = bytes[at + i]!;
        }
      } else if (direction === "out") bytes.set(buf.subarray(this.#offset, this.#offset + n), at);
      else buf.set(bytes.subarray(at, at + n), this.#offset);
      at += n;
      this.#advance(buf, n);
    }
    this.#taken += length;
    return true;
  }

  /** Moves `n` bytes on in `buf`, the current buffer, to the next buffer at its end. */
  #advance(buf: Uint8Array, n: number): void {
    this.#offset += n;
    if (this.#offset === buf.byteLength) {
      this.#index++;
      this.#offset = 0;
    }
  }
}

/**
 * Copies up to this many bytes byte by byte (BufferCursor.copy): a block request's header (16), a
 * net header (12), a status byte. Longer runs go through a view: a vsock header (44 bytes) copied
 * byte by byte cost its device more than the view, its code running mostly in JSC's interpreter.
 */
const SMALL_COPY = 16;

/** Reads a chain's device-readable bytes in order. */
export class ChainReader {
  readonly #cursor: BufferCursor;
  constructor(readonly chain: DescriptorChain) {
    this.#cursor = new BufferCursor(chain.readable, chain.readableLength);
  }

  /** Bytes not yet read. */
  get remaining(): number {
    return this.#cursor.remaining;
  }

  /** Fills `dst` from the chain; returns false (having read nothing) when fewer bytes remain. */
  read(dst: Uint8Array): boolean {
    return this.#cursor.copy(dst, "out");
  }

  /** Returns the next `length` readable bytes as views (no copy), or null when fewer remain. */
  take(length: number): Uint8Array[] | null {
    return this.#cursor.take(length);
  }
}

/** Writes into a chain's device-writable buffers in order and counts what was written. */
export class ChainWriter {
  readonly #cursor: BufferCursor;
  constructor(readonly chain: DescriptorChain) {
    this.#cursor = new BufferCursor(chain.writable, chain.writableLength);
  }

  /** Bytes written so far (the used length to report). */
  get written(): number {
    return this.#cursor.taken;
  }

  get remaining(): number {
    return this.#cursor.remaining;
  }

  /** Copies `src` into the chain; returns false (having written nothing) when it does not fit. */
  write(src: Uint8Array): boolean {
    return this.#cursor.copy(src, "in");
  }

  /** Returns the next `length` writable bytes as views to fill, counting them as written. */
  take(length: number): Uint8Array[] | null {
    return this.#cursor.take(length);
  }
}
