// codec.ts - the one little-endian binary codec of tsvm's own messages (device tubes, control socket).
//
// ByteWriter appends fields and grows as needed. ByteReader reads fields in order; a read past the
// end (or a value that does not fit a JS number) makes the reader fail: that read and every later
// one return 0 / empty, and `finish` turns the first failure into an error Result. A decoder
// therefore reads every field, then calls `finish` once, and never throws on malformed input.
import { err, ok, type Result } from "./result.ts";

const encoder = new TextEncoder();
/** Refuses text that is not UTF-8 instead of replacing it. */
const decoder = new TextDecoder("utf-8", { fatal: true });

/** Builds a message field by field. */
export class ByteWriter {
  #bytes: Uint8Array;
  #view: DataView;
  #at = 0;

  constructor(capacity = 64) {
    this.#bytes = new Uint8Array(capacity);
    this.#view = new DataView(this.#bytes.buffer);
  }

  /** Bytes written so far. */
  get length(): number {
    return this.#at;
  }

  u8(v: number): this {
    this.#reserve(1).setUint8(this.#at, v);
    this.#at += 1;
    return this;
  }

  u16(v: number): this {
    this.#reserve(2).setUint16(this.#at, v, true);
    this.#at += 2;
    return this;
  }

  u32(v: number): this {
    this.#reserve(4).setUint32(this.#at, v >>> 0, true);
    this.#at += 4;
    return this;
  }

  /** A 64-bit field from a non-negative safe integer or a bigint. */
  u64(v: number | bigint): this {
    this.#reserve(8).setBigUint64(this.#at, BigInt(v), true);
    this.#at += 8;
    return this;
  }

  /** Raw bytes, with no length in front (the reader must know how many). */
  raw(b: Uint8Array): this {
    this.#reserve(b.byteLength);
    this.#bytes.set(b, this.#at);
    this.#at += b.byteLength;
    return this;
  }

  /** A le32 length, then the bytes. */
  bytes(b: Uint8Array): this {
    return this.u32(b.byteLength).raw(b);
  }

  /** A le32 length, then the UTF-8 text. */
  str(s: string): this {
    return this.bytes(encoder.encode(s));
  }

  /** Returns a copy of what was written. */
  done(): Uint8Array {
    return this.#bytes.slice(0, this.#at);
  }

  #reserve(n: number): DataView {
    if (this.#at + n > this.#bytes.byteLength) {
      const grown = new Uint8Array(Math.max(this.#bytes.byteLength * 2, this.#at + n));
      grown.set(this.#bytes.subarray(0, this.#at));
      this.#bytes = grown;
      this.#view = new DataView(grown.buffer);
    }
    return this.#view;
  }
}

/** Reads a message field by field; the first malformed read is remembered (see the file comment). */
export class ByteReader {
  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  #at: number;
  #failure: string | null = null;

  constructor(bytes: Uint8Array, start = 0) {
    this.#bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.#at = start;
  }

  /** Bytes not read yet. */
  get remaining(): number {
    return Math.max(0, this.#bytes.byteLength - this.#at);
  }

  /** The first failure, or null while every read succeeded. */
  get failure(): string | null {
    return this.#failure;
  }

  u8(): number {
    return this.#take(1) ? this.#view.getUint8(this.#at - 1) : 0;
  }

  u16(): number {
    return this.#take(2) ? this.#view.getUint16(this.#at - 2, true) : 0;
  }

  u32(): number {
    return this.#take(4) ? this.#view.getUint32(this.#at - 4, true) : 0;
  }

  /** A 64-bit field as a number; values above 2^53 - 1 fail the reader. */
  u64(): number {
    const v = this.u64n();
    if (v <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
    this.fail(`64-bit value ${v} is too large`);
    return 0;
  }

  /** A 64-bit field as a bigint (feature words, addresses of the peer's address space). */
  u64n(): bigint {
    return this.#take(8) ? this.#view.getBigUint64(this.#at - 8, true) : 0n;
  }

  /** The next `n` bytes (a view, not a copy). */
  raw(n: number): Uint8Array {
    return this.#take(n) ? this.#bytes.subarray(this.#at - n, this.#at) : new Uint8Array(0);
  }

  /** A le32 length, then that many bytes. */
  bytes(): Uint8Array {
    return this.raw(this.u32());
  }

  /** A le32 length, then UTF-8 text; text that is not UTF-8 fails the reader. */
  str(): string {
    const b = this.bytes();
    try {
      return decoder.decode(b);
    } catch {
      this.fail("text is not valid UTF-8");
      return "";
    }
  }

  /** Everything not read yet. */
  rest(): Uint8Array {
    return this.raw(this.remaining);
  }

  /** Marks the message malformed (a decoder's own check, such as an unknown kind). */
  fail(reason: string): void {
    this.#failure ??= reason;
    this.#at = this.#bytes.byteLength;
  }

  /** Returns `value`, or the first failure; with `exact`, bytes left over are a failure too. */
  finish<T>(value: T, exact = false): Result<T> {
    if (this.#failure === null && exact && this.remaining > 0) this.fail(`${this.remaining} unexpected bytes at the end`);
    return this.#failure === null ? ok(value) : err(this.#failure);
  }

  #take(n: number): boolean {
    if (this.#failure !== null) return false;
    if (!Number.isSafeInteger(n) || n < 0 || this.#at + n > this.#bytes.byteLength) {
      this.fail(`truncated message: ${n} bytes needed at offset ${this.#at} of ${this.#bytes.byteLength}`);
      return false;
    }
    this.#at += n;
    return true;
  }
}
