// images.ts - crafts small ELF and bzImage files for loader tests.

export type ElfSegment = { paddr: number; data: Uint8Array; memsz?: number; type?: number };
export type ElfOptions = { entry: number; segments: ElfSegment[]; machine?: number; type?: number; klass?: number };

/** Builds an ELF64 little-endian file with one program header per segment. */
export function craftElf(o: ElfOptions): Uint8Array {
  const phoff = 64;
  const dataStart = phoff + 56 * o.segments.length;
  const total = dataStart + o.segments.reduce((n, s) => n + s.data.byteLength, 0);
  const bytes = new Uint8Array(total);
  const v = new DataView(bytes.buffer);
  bytes.set([0x7f, 0x45, 0x4c, 0x46, o.klass ?? 2, 1, 1]);
  v.setUint16(16, o.type ?? 2, true);
  v.setUint16(18, o.machine ?? 62, true);
  v.setUint32(20, 1, true);
  v.setBigUint64(24, BigInt(o.entry), true);
  v.setBigUint64(32, BigInt(phoff), true);
  v.setUint16(52, 64, true);
  v.setUint16(54, 56, true);
  v.setUint16(56, o.segments.length, true);
  let offset = dataStart;
  o.segments.forEach((s, i) => {
    const at = phoff + i * 56;
    v.setUint32(at, s.type ?? 1, true);
    v.setBigUint64(at + 8, BigInt(offset), true);
    v.setBigUint64(at + 16, BigInt(s.paddr), true);
    v.setBigUint64(at + 24, BigInt(s.paddr), true);
    v.setBigUint64(at + 32, BigInt(s.data.byteLength), true);
    v.setBigUint64(at + 40, BigInt(s.memsz ?? s.data.byteLength), true);
    bytes.set(s.data, offset);
    offset += s.data.byteLength;
  });
  return bytes;
}

export type BzImageOptions = {
  version?: number; kernelBytes?: number; initSize?: number; prefAddress?: number; relocatable?: boolean;
  xloadflags?: number; loadflags?: number; truncateBy?: number; setupSects?: number;
};

/** Builds a bzImage with a setup header (boot protocol fields only) and a patterned kernel body. */
export function craftBzImage(o: BzImageOptions = {}): Uint8Array {
  const setupSects = o.setupSects ?? 4;
  const kernelBytes = o.kernelBytes ?? 0x2000;
  const full = new Uint8Array((setupSects + 1) * 512 + kernelBytes);
  const v = new DataView(full.buffer);
  v.setUint8(0x1f1, setupSects);
  v.setUint32(0x1f4, kernelBytes / 16, true);
  v.setUint16(0x1fe, 0xaa55, true);
  v.setUint8(0x200, 0xeb);
  v.setUint8(0x201, 0x6a); // header ends at 0x26c
  v.setUint32(0x202, 0x53726448, true);
  v.setUint16(0x206, o.version ?? 0x020f, true);
  v.setUint8(0x211, o.loadflags ?? 0x01);
  v.setUint32(0x22c, 0x7fffffff, true);
  v.setUint32(0x230, 0x200000, true);
  v.setUint8(0x234, o.relocatable === false ? 0 : 1);
  v.setUint16(0x236, o.xloadflags ?? 0x03, true);
  v.setUint32(0x238, 2047, true);
  v.setBigUint64(0x258, BigInt(o.prefAddress ?? 0x1000000), true);
  v.setUint32(0x260, o.initSize ?? 0x10000, true);
  for (let i = 0; i < kernelBytes; i++) full[(setupSects + 1) * 512 + i] = i & 0xff;
  return full.subarray(0, full.byteLength - (o.truncateBy ?? 0));
}
