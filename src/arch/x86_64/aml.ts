// aml.ts - just enough ACPI Machine Language (ACPI 6.5 §20) to describe tsvm's devices in the DSDT:
// scopes, devices, named integers, strings and packages, EISA ids, and resource templates.
//
// Each function returns the encoded bytes of one term; nesting is by passing terms to a container.

type Bytes = Uint8Array;

const ZERO_OP = 0x00;
const ONE_OP = 0x01;
const NAME_OP = 0x08;
const BYTE_PREFIX = 0x0a;
const WORD_PREFIX = 0x0b;
const DWORD_PREFIX = 0x0c;
const STRING_PREFIX = 0x0d;
const QWORD_PREFIX = 0x0e;
const SCOPE_OP = 0x10;
const BUFFER_OP = 0x11;
const PACKAGE_OP = 0x12;
const EXT_OP_PREFIX = 0x5b;
const DEVICE_OP = 0x82;
const ROOT_CHAR = 0x5c;

function concat(parts: readonly Bytes[]): Bytes {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

function le(value: bigint | number, bytes: number): number[] {
  let v = BigInt(value);
  const out: number[] = [];
  for (let i = 0; i < bytes; i++) {
    out.push(Number(v & 0xffn));
    v >>= 8n;
  }
  return out;
}

/** PkgLength (§20.2.4): the length of what follows, itself included, in 1 to 4 bytes. */
function pkgLength(contentLength: number): Bytes {
  for (let extra = 0; extra <= 3; extra++) {
    const total = contentLength + 1 + extra;
    if (extra === 0 && total <= 0x3f) return Uint8Array.of(total);
    if (extra > 0 && total < 2 ** (4 + 8 * extra)) {
      const out = [(extra << 6) | (total & 0x0f)];
      for (let i = 0; i < extra; i++) out.push((total >> (4 + 8 * i)) & 0xff);
      return Uint8Array.from(out);
    }
  }
  throw new Error(`an AML package of ${contentLength} bytes is too long`);
}

/** A name path: "\\_SB_" (from the root), "PCI0" or "_HID" (segments of four characters, padded with "_"). */
export function nameString(path: string): Bytes {
  const root = path.startsWith("\\");
  const segments = (root ? path.slice(1) : path).split(".").filter((s) => s.length > 0);
  const encoded = segments.map((s) => {
    if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(s)) throw new Error(`"${s}" is not an AML name segment`);
    return new TextEncoder().encode(s.padEnd(4, "_"));
  });
  const prefix = root ? [ROOT_CHAR] : [];
  if (encoded.length === 1) return concat([Uint8Array.from(prefix), encoded[0]!]);
  if (encoded.length === 2) return concat([Uint8Array.from([...prefix, 0x2e]), ...encoded]); // DualNamePrefix
  return concat([Uint8Array.from([...prefix, 0x2f, encoded.length]), ...encoded]); // MultiNamePrefix
}

/** The smallest encoding of an integer constant. */
export function integer(value: number | bigint): Bytes {
  const v = BigInt(value);
  if (v < 0n || v >= 1n << 64n) throw new Error(`${value} is not an AML integer`);
  if (v === 0n) return Uint8Array.of(ZERO_OP);
  if (v === 1n) return Uint8Array.of(ONE_OP);
  if (v <= 0xffn) return Uint8Array.of(BYTE_PREFIX, Number(v));
  if (v <= 0xffffn) return Uint8Array.from([WORD_PREFIX, ...le(v, 2)]);
  if (v <= 0xffff_ffffn) return Uint8Array.from([DWORD_PREFIX, ...le(v, 4)]);
  return Uint8Array.from([QWORD_PREFIX, ...le(v, 8)]);
}

export function string(text: string): Bytes {
  return concat([Uint8Array.of(STRING_PREFIX), new TextEncoder().encode(text), Uint8Array.of(0)]);
}

/** EisaId("PNP0A03"): three letters of five bits each and four hex digits, as a DWORD. */
export function eisaId(id: string): Bytes {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new Error(`"${id}" is not an EISA id`);
  const c = (i: number): number => id.charCodeAt(i) - 0x40;
  const b0 = (c(0) << 2) | (c(1) >> 3);
  const b1 = ((c(1) & 7) << 5) | c(2);
  const product = Number.parseInt(id.slice(3), 16);
  return Uint8Array.of(DWORD_PREFIX, b0, b1, product >> 8, product & 0xff);
}

/** Name(NAME, value). */
export function name(path: string, value: Bytes): Bytes {
  return concat([Uint8Array.of(NAME_OP), nameString(path), value]);
}

export function scope(path: string, terms: readonly Bytes[]): Bytes {
  const body = concat([nameString(path), ...terms]);
  return concat([Uint8Array.of(SCOPE_OP), pkgLength(body.byteLength), body]);
}

export function device(path: string, terms: readonly Bytes[]): Bytes {
  const body = concat([nameString(path), ...terms]);
  return concat([Uint8Array.of(EXT_OP_PREFIX, DEVICE_OP), pkgLength(body.byteLength), body]);
}

export function pkg(elements: readonly Bytes[]): Bytes {
  if (elements.length > 0xff) throw new Error("an AML package holds at most 255 elements");
  const body = concat([Uint8Array.of(elements.length), ...elements]);
  return concat([Uint8Array.of(PACKAGE_OP), pkgLength(body.byteLength), body]);
}

export function buffer(bytes: Bytes): Bytes {
  const body = concat([integer(bytes.byteLength), bytes]);
  return concat([Uint8Array.of(BUFFER_OP), pkgLength(body.byteLength), body]);
}

// ---- resource descriptors (§6.4) ----

/** General flags of an address space descriptor: a producer (a bridge) with fixed bounds. */
const PRODUCER_MIN_MAX_FIXED = 0x0c;
const RESOURCE_TYPE = { memory: 0, io: 1, bus: 2 } as const;
/** Memory type-specific flags: read/write, not cacheable. I/O: both ISA and non-ISA ranges. */
const MEMORY_READ_WRITE = 0x01;
const IO_ENTIRE_RANGE = 0x03;

/** A window a bridge decodes: its type and [min, max] (inclusive). */
export type AddressRange = { readonly type: keyof typeof RESOURCE_TYPE; readonly min: bigint | number; readonly max: bigint | number };

function addressDescriptor(r: AddressRange, width: 2 | 4 | 8): Bytes {
  const min = BigInt(r.min);
  const max = BigInt(r.max);
  if (max < min || max >= 1n << BigInt(8 * width)) throw new Error(`[${min}, ${max}] does not fit a ${8 * width}-bit address descriptor`);
  const tag = width === 2 ? 0x88 : width === 4 ? 0x87 : 0x8a;
  const typeFlags = r.type === "memory" ? MEMORY_READ_WRITE : r.type === "io" ? IO_ENTIRE_RANGE : 0;
  const fields = [0n, min, max, 0n, max - min + 1n].flatMap((v) => le(v, width)); // granularity, min, max, translation, length
  const body = [RESOURCE_TYPE[r.type], PRODUCER_MIN_MAX_FIXED, typeFlags, ...fields];
  return Uint8Array.from([tag, ...le(body.length, 2), ...body]);
}

export const wordAddress = (r: AddressRange): Bytes => addressDescriptor(r, 2);
export const dwordAddress = (r: AddressRange): Bytes => addressDescriptor(r, 4);
export const qwordAddress = (r: AddressRange): Bytes => addressDescriptor(r, 8);

/** IO(Decode16, min, max, alignment, length): a fixed range of ports the device itself decodes. */
export function ioPorts(base: number, length: number): Bytes {
  return Uint8Array.from([0x47, 0x01, ...le(base, 2), ...le(base, 2), 1, length]);
}

/** IRQ(Edge, ActiveHigh, Shared) {irq}: an ISA interrupt, which other devices may share. */
export function isaIrq(irq: number): Bytes {
  if (irq < 0 || irq > 15) throw new Error(`${irq} is not an ISA IRQ`);
  const mask = 1 << irq;
  return Uint8Array.of(0x23, mask & 0xff, mask >> 8, 0x11); // flags: shareable (bit 4), edge (bit 0)
}

/** ResourceTemplate(): the descriptors and an end tag, in a buffer. */
export function resourceTemplate(descriptors: readonly Bytes[]): Bytes {
  return buffer(concat([...descriptors, Uint8Array.of(0x79, 0)]));
}
