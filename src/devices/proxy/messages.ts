// messages.ts - what the VMM and a device process say to each other over their seqpacket tube.
//
// VMM -> device: requests, each answered by exactly one RESULT (the VMM waits for it).
// device -> VMM: RESULT, plus VM operations the device cannot do itself (it holds no VM fd):
// MSI routes, irqfds and ioeventfds (the eventfd travels with the message), INTx levels. Those need
// no answer, so a device never waits on the VMM and the two cannot deadlock.
// Encoding: one kind byte, then little-endian fields. The setup message is JSON (sent once).

export const REQUEST = {
  CONFIG_READ: 1, CONFIG_WRITE: 2, BAR_READ: 3, BAR_WRITE: 4, INPUT: 5,
  BALLOON_TARGET: 6, BALLOON_STATS: 7, DISK_RESIZE: 8, FLUSH: 9, SETUP: 10,
} as const;
export const NOTICE = { RESULT: 0x80, MSI_ROUTE: 0x81, IRQFD: 0x82, IOEVENTFD: 0x83, IRQ_LINE: 0x84, READY: 0x85, FAILED: 0x86 } as const;

/** Builds a message: a kind byte and fields appended in order. */
export class MessageWriter {
  readonly #bytes = new Uint8Array(4096);
  readonly #view = new DataView(this.#bytes.buffer);
  #at = 0;
  constructor(kind: number) {
    this.u8(kind);
  }
  u8(v: number): this {
    this.#view.setUint8(this.#at++, v);
    return this;
  }
  u16(v: number): this {
    this.#view.setUint16(this.#at, v, true);
    this.#at += 2;
    return this;
  }
  u32(v: number): this {
    this.#view.setUint32(this.#at, v >>> 0, true);
    this.#at += 4;
    return this;
  }
  f64(v: number): this {
    this.#view.setFloat64(this.#at, v, true);
    this.#at += 8;
    return this;
  }
  bytes(b: Uint8Array): this {
    const n = Math.min(b.byteLength, this.#bytes.byteLength - this.#at);
    this.#bytes.set(b.subarray(0, n), this.#at);
    this.#at += n;
    return this;
  }
  text(s: string): this {
    return this.bytes(new TextEncoder().encode(s));
  }
  done(): Uint8Array {
    return this.#bytes.slice(0, this.#at);
  }
}

/** Reads fields in order; reads past the end give 0 (a malformed message decodes to harmless values). */
export class MessageReader {
  readonly kind: number;
  readonly #view: DataView;
  #at = 1;
  constructor(readonly message: Uint8Array) {
    this.#view = new DataView(message.buffer, message.byteOffset, message.byteLength);
    this.kind = message.byteLength > 0 ? message[0]! : 0;
  }
  #has(n: number): boolean {
    return this.#at + n <= this.message.byteLength;
  }
  u8(): number {
    return this.#has(1) ? this.#view.getUint8(this.#at++) : 0;
  }
  u16(): number {
    if (!this.#has(2)) return 0;
    const v = this.#view.getUint16(this.#at, true);
    this.#at += 2;
    return v;
  }
  u32(): number {
    if (!this.#has(4)) return 0;
    const v = this.#view.getUint32(this.#at, true);
    this.#at += 4;
    return v;
  }
  f64(): number {
    if (!this.#has(8)) return 0;
    const v = this.#view.getFloat64(this.#at, true);
    this.#at += 8;
    return v;
  }
  rest(): Uint8Array {
    const r = this.message.subarray(this.#at);
    this.#at = this.message.byteLength;
    return r;
  }
  text(): string {
    return new TextDecoder().decode(this.rest());
  }
}

/** What the VMM tells a device process once, before it locks itself down. */
export type DeviceSetup = {
  readonly kind: "rng" | "block" | "console" | "net" | "balloon";
  readonly label: string;
  readonly memory: readonly { base: number; size: number }[];
  /** GSIs for the MSI-X vectors (the VMM owns GSI allocation). */
  readonly gsis: readonly number[];
  readonly intxGsi: number;
  readonly policy: string;
  /** The policy files by name (read by the VMM: the device process cannot open files). */
  readonly policies: Readonly<Record<string, string>>;
  readonly logFailures: boolean;
  readonly logLevel: string;
  readonly block?: { readonly readOnly: boolean; readonly id: string };
  readonly net?: { readonly mac: string };
};
