// guest_memory.ts - guest RAM: one memfd, mapped once, split into regions of at most 4 GiB.
import { sys } from "../../ffi/mod.ts";
import { type GuestAddress, guestAddress, hex } from "./guest_address.ts";

/** Largest region: one ArrayBuffer view over external memory is at most 2^32 bytes in Bun. */
export const MAX_REGION_SIZE = 2 ** 32;
const PAGE_SIZE = 4096;
const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;
const MAP_NORESERVE = 0x4000;
const MFD_CLOEXEC = 1;
const MFD_ALLOW_SEALING = 2;

/** A contiguous range of guest RAM and where it lives in the memfd and in this process. */
export type MemoryRegion = {
  readonly guestBase: GuestAddress;
  readonly size: number;
  /** Offset of the region in the backing memfd. */
  readonly fileOffset: number;
  /** Host virtual address of the region's first byte. */
  readonly hostAddress: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
};

/** A requested region: guest base and size, both page aligned. */
export type RegionSpec = { readonly base: number; readonly size: number };

export type GuestMemoryErrorKind = "bad_layout" | "out_of_range";

/** A host-side misuse of guest memory (bad layout, an access the caller should have checked). */
export class GuestMemoryError extends Error {
  override readonly name = "GuestMemoryError";
  constructor(readonly kind: GuestMemoryErrorKind, message: string) {
    super(message);
  }
}

/**
 * Guest physical memory backed by a single memfd (so device processes can map the same pages).
 * Accesses never cross a region boundary: anything that would is refused, never truncated.
 */
export class GuestMemory {
  readonly regions: readonly MemoryRegion[];
  readonly fd: number;
  readonly #mapping: { address: number; size: number } | null;
  #closed = false;

  private constructor(fd: number, regions: MemoryRegion[], mapping: { address: number; size: number } | null) {
    this.fd = fd;
    this.regions = regions;
    this.#mapping = mapping;
  }

  /** Creates memory for `specs` (sorted, non-overlapping, page aligned, each <= 4 GiB). */
  static create(specs: readonly RegionSpec[]): GuestMemory {
    validateSpecs(specs);
    const total = specs.reduce((sum, s) => sum + s.size, 0);
    const fd = sys.memfdCreate("tsvm_guest_mem", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    try {
      sys.ftruncate(fd, total);
      return GuestMemory.#map(fd, specs, total);
    } catch (e) {
      sys.close(fd);
      throw e;
    }
  }

  /** Maps an existing memfd laid out as `specs` (a device process receiving guest memory). */
  static fromFd(fd: number, specs: readonly RegionSpec[]): GuestMemory {
    validateSpecs(specs);
    return GuestMemory.#map(fd, specs, specs.reduce((sum, s) => sum + s.size, 0));
  }

  /** Wraps plain buffers as guest memory (tests and tools; no fd, nothing to unmap). */
  static fromBuffers(regions: readonly { base: number; bytes: Uint8Array }[]): GuestMemory {
    validateSpecs(regions.map((r) => ({ base: r.base, size: r.bytes.byteLength })), 1);
    let fileOffset = 0;
    const out = regions.map((r) => {
      const region: MemoryRegion = {
        guestBase: guestAddress(r.base), size: r.bytes.byteLength, fileOffset, hostAddress: 0,
        bytes: r.bytes, view: new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength),
      };
      fileOffset += r.bytes.byteLength;
      return region;
    });
    return new GuestMemory(-1, out, null);
  }

  static #map(fd: number, specs: readonly RegionSpec[], total: number): GuestMemory {
    const address = sys.mmap(total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    let fileOffset = 0;
    const regions = specs.map((s) => {
      const hostAddress = address + fileOffset;
      const buffer = sys.viewOf(hostAddress, s.size);
      const region: MemoryRegion = {
        guestBase: guestAddress(s.base), size: s.size, fileOffset, hostAddress,
        bytes: new Uint8Array(buffer), view: new DataView(buffer),
      };
      fileOffset += s.size;
      return region;
    });
    return new GuestMemory(fd, regions, { address, size: total });
  }

  /** Total bytes of RAM. */
  get size(): number {
    return this.regions.reduce((sum, r) => sum + r.size, 0);
  }

  /** One past the highest RAM address. */
  get end(): number {
    const last = this.regions[this.regions.length - 1]!;
    return last.guestBase + last.size;
  }

  /** Returns the region holding `address`, or null. */
  regionOf(address: number): MemoryRegion | null {
    for (const r of this.regions) {
      if (address >= r.guestBase && address < r.guestBase + r.size) return r;
    }
    return null;
  }

  /** Returns whether [address, address + length) lies inside one region. */
  isValidRange(address: number, length: number): boolean {
    return this.#locate(address, length) !== null;
  }

  /** Returns a live view of [address, address + length), or null when it is not inside one region. */
  slice(address: number, length: number): Uint8Array | null {
    const at = this.#locate(address, length);
    return at === null ? null : at.region.bytes.subarray(at.offset, at.offset + length);
  }

  /**
   * Returns live views covering [address, address + length), split where regions meet (RAM above
   * 4 GiB is contiguous across regions), or null when any byte is not RAM.
   */
  slices(address: number, length: number): Uint8Array[] | null {
    const whole = this.slice(address, length);
    if (whole !== null) return [whole];
    if (!Number.isSafeInteger(address) || !Number.isSafeInteger(length) || address < 0 || length < 0) return null;
    const out: Uint8Array[] = [];
    let at = address;
    let left = length;
    while (left > 0) {
      const region = this.regionOf(at);
      if (region === null) return null;
      const offset = at - region.guestBase;
      const n = Math.min(left, region.size - offset);
      out.push(region.bytes.subarray(offset, offset + n));
      at += n;
      left -= n;
    }
    return out;
  }

  /** Copies guest bytes into `dst`; throws when the range is not RAM. */
  read(address: number, dst: Uint8Array): void {
    dst.set(this.#slice(address, dst.byteLength));
  }

  /** Copies `src` into guest memory; throws when the range is not RAM. */
  write(address: number, src: Uint8Array): void {
    this.#slice(address, src.byteLength).set(src);
  }

  readU8(address: number): number {
    const at = this.#expect(address, 1);
    return at.region.view.getUint8(at.offset);
  }
  readU16(address: number): number {
    const at = this.#expect(address, 2);
    return at.region.view.getUint16(at.offset, true);
  }
  readU32(address: number): number {
    const at = this.#expect(address, 4);
    return at.region.view.getUint32(at.offset, true);
  }
  readU64(address: number): bigint {
    const at = this.#expect(address, 8);
    return at.region.view.getBigUint64(at.offset, true);
  }
  writeU8(address: number, value: number): void {
    const at = this.#expect(address, 1);
    at.region.view.setUint8(at.offset, value);
  }
  writeU16(address: number, value: number): void {
    const at = this.#expect(address, 2);
    at.region.view.setUint16(at.offset, value, true);
  }
  writeU32(address: number, value: number): void {
    const at = this.#expect(address, 4);
    at.region.view.setUint32(at.offset, value, true);
  }
  writeU64(address: number, value: bigint): void {
    const at = this.#expect(address, 8);
    at.region.view.setBigUint64(at.offset, value, true);
  }

  /** Unmaps the memory and closes the memfd; every view taken from it is dead afterwards. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#mapping) sys.munmap(this.#mapping.address, this.#mapping.size);
    if (this.fd >= 0) sys.close(this.fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #locate(address: number, length: number): { region: MemoryRegion; offset: number } | null {
    if (!Number.isSafeInteger(address) || !Number.isSafeInteger(length) || address < 0 || length < 0) return null;
    for (const region of this.regions) {
      const offset = address - region.guestBase;
      if (offset >= 0 && offset < region.size) {
        return length <= region.size - offset ? { region, offset } : null;
      }
    }
    return null;
  }

  #expect(address: number, length: number): { region: MemoryRegion; offset: number } {
    const at = this.#locate(address, length);
    if (at === null) {
      throw new GuestMemoryError("out_of_range", `guest range ${hex(address)}+${length} is not inside guest RAM`);
    }
    return at;
  }

  #slice(address: number, length: number): Uint8Array {
    const at = this.#expect(address, length);
    return at.region.bytes.subarray(at.offset, at.offset + length);
  }
}

function validateSpecs(specs: readonly RegionSpec[], alignment = PAGE_SIZE): void {
  if (specs.length === 0) throw new GuestMemoryError("bad_layout", "guest memory needs at least one region");
  let previousEnd = 0;
  for (const s of specs) {
    if (s.size <= 0 || s.size > MAX_REGION_SIZE || s.size % alignment !== 0 || s.base % alignment !== 0) {
      throw new GuestMemoryError("bad_layout", `bad guest memory region ${hex(s.base)}+${hex(s.size)}`);
    }
    if (s.base < previousEnd) {
      throw new GuestMemoryError("bad_layout", `guest memory region ${hex(s.base)} overlaps the one before it`);
    }
    guestAddress(s.base + s.size - 1);
    previousEnd = s.base + s.size;
  }
}
