// messages.ts - the control socket's requests and responses, and their binary encoding.
//
// Every message: le32 magic "TSVM", le16 protocol version, le16 kind, then the kind's fields.
// Strings are le32 length + UTF-8. The protocol is internal: only tsvm's own subcommands speak it.

export const CONTROL_MAGIC = 0x4d565354; // "TSVM"
export const CONTROL_VERSION = 1;
const HEADER_SIZE = 8;

export type VmRequest =
  | { readonly kind: "stop" }
  | { readonly kind: "suspend" }
  | { readonly kind: "resume" }
  | { readonly kind: "balloon"; readonly bytes: number }
  | { readonly kind: "balloon_stats" }
  | { readonly kind: "disk_resize"; readonly index: number; readonly bytes: number };

export type VmResponse =
  | { readonly kind: "ok" }
  | { readonly kind: "error"; readonly message: string }
  | { readonly kind: "balloon_stats"; readonly json: string };

const REQUEST_KINDS = ["stop", "suspend", "resume", "balloon", "balloon_stats", "disk_resize"] as const;
const RESPONSE_KINDS = ["ok", "error", "balloon_stats"] as const;
const RESPONSE_BASE = 0x80;

/** A message that is not ours, or is malformed: decoding never throws, it says why. */
export type Decoded<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly reason: string };

class Writer {
  readonly bytes = new Uint8Array(4096);
  readonly view = new DataView(this.bytes.buffer);
  at = 0;
  u16(v: number): this {
    this.view.setUint16(this.at, v, true);
    this.at += 2;
    return this;
  }
  u32(v: number): this {
    this.view.setUint32(this.at, v, true);
    this.at += 4;
    return this;
  }
  u64(v: number): this {
    this.view.setBigUint64(this.at, BigInt(v), true);
    this.at += 8;
    return this;
  }
  str(s: string): this {
    const b = new TextEncoder().encode(s).subarray(0, this.bytes.byteLength - this.at - 4);
    this.u32(b.byteLength);
    this.bytes.set(b, this.at);
    this.at += b.byteLength;
    return this;
  }
  done(): Uint8Array {
    return this.bytes.slice(0, this.at);
  }
}

class Reader {
  readonly view: DataView;
  at = HEADER_SIZE;
  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  #need(n: number): boolean {
    return this.at + n <= this.bytes.byteLength;
  }
  u32(): number | null {
    if (!this.#need(4)) return null;
    const v = this.view.getUint32(this.at, true);
    this.at += 4;
    return v;
  }
  u64(): number | null {
    if (!this.#need(8)) return null;
    const v = this.view.getBigUint64(this.at, true);
    this.at += 8;
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : null;
  }
  str(): string | null {
    const n = this.u32();
    if (n === null || !this.#need(n)) return null;
    const s = new TextDecoder().decode(this.bytes.subarray(this.at, this.at + n));
    this.at += n;
    return s;
  }
}

function header(kind: number): Writer {
  return new Writer().u32(CONTROL_MAGIC).u16(CONTROL_VERSION).u16(kind);
}

function readHeader(bytes: Uint8Array): Decoded<number> {
  if (bytes.byteLength < HEADER_SIZE) return { ok: false, reason: "message shorter than its header" };
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getUint32(0, true) !== CONTROL_MAGIC) return { ok: false, reason: "not a tsvm control message" };
  if (v.getUint16(4, true) !== CONTROL_VERSION) return { ok: false, reason: `protocol version ${v.getUint16(4, true)}, expected ${CONTROL_VERSION}` };
  return { ok: true, value: v.getUint16(6, true) };
}

export function encodeRequest(r: VmRequest): Uint8Array {
  const w = header(REQUEST_KINDS.indexOf(r.kind));
  if (r.kind === "balloon") w.u64(r.bytes);
  if (r.kind === "disk_resize") w.u32(r.index).u64(r.bytes);
  return w.done();
}

export function decodeRequest(bytes: Uint8Array): Decoded<VmRequest> {
  const h = readHeader(bytes);
  if (!h.ok) return h;
  const kind = REQUEST_KINDS[h.value];
  const r = new Reader(bytes);
  switch (kind) {
    case "stop":
    case "suspend":
    case "resume":
    case "balloon_stats":
      return { ok: true, value: { kind } };
    case "balloon": {
      const n = r.u64();
      return n === null ? { ok: false, reason: "truncated balloon request" } : { ok: true, value: { kind, bytes: n } };
    }
    case "disk_resize": {
      const index = r.u32();
      const n = r.u64();
      return index === null || n === null ? { ok: false, reason: "truncated disk resize request" } : { ok: true, value: { kind, index, bytes: n } };
    }
    default:
      return { ok: false, reason: `unknown request kind ${h.value}` };
  }
}

export function encodeResponse(r: VmResponse): Uint8Array {
  const w = header(RESPONSE_BASE + RESPONSE_KINDS.indexOf(r.kind));
  if (r.kind === "error") w.str(r.message);
  if (r.kind === "balloon_stats") w.str(r.json);
  return w.done();
}

export function decodeResponse(bytes: Uint8Array): Decoded<VmResponse> {
  const h = readHeader(bytes);
  if (!h.ok) return h;
  const kind = RESPONSE_KINDS[h.value - RESPONSE_BASE];
  const r = new Reader(bytes);
  switch (kind) {
    case "ok":
      return { ok: true, value: { kind } };
    case "error":
    case "balloon_stats": {
      const s = r.str();
      if (s === null) return { ok: false, reason: `truncated ${kind} response` };
      return { ok: true, value: kind === "error" ? { kind, message: s } : { kind, json: s } };
    }
    default:
      return { ok: false, reason: `unknown response kind ${h.value}` };
  }
}
