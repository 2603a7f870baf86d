// guest_memory.ts - guest RAM: regions of at most 4 GiB over file mappings (memfds), or plain buffers.
import { sys } from "../../ffi/mod.ts";
import { type GuestAddress, guestAddress, guestAddressFromNumber, hex } from "./guest_address.ts";

/** Largest region: one ArrayBuffer view over external memory is at most 2^32 bytes in Bun. */
export const MAX_REGION_SIZE = 2 ** 32;
const PAGE_SIZE = 4096;
const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;
const MAP_NORESERVE = 0x4000;
/**
 * Guest memory is advised for transparent huge pages, in the VMM and in every device process that
 * maps it. A memfd gets them only where the host allows shared memory huge pages on request
 * (/sys/kernel/mm/transparent_hugepage/shmem_enabled = advise, or always); elsewhere the advice does
 * nothing. With them a 2 MiB folio is pinned, copied into and mapped as one: O_DIRECT reads of 64 KiB
 * at depth 32 took 55-60k TSC cycles a request against 75-87k without (QEMU, whose anonymous guest
 * RAM gets huge pages under the usual `enabled = madvise`, 61-64k).
 */
const MADV_HUGEPAGE = 14;
/** Guest memory is mapped 2 MiB aligned with its file, so a huge page can map a block whole. */
const HUGE_PAGE_SIZE = 2 * 1024 * 1024;
const O_RDONLY_CLOEXEC = 0o2000000;
/**
 * Whether this process asks for guest memory that takes O_DIRECT transfers to be collapsed into
 * huge pages (c/sys.c, tsvm_prefer_huge): wherever the host has not turned transparent huge pages
 * off (`enabled` = `never`), as QEMU's anonymous guest RAM gets them there. A device process
 * cannot read /sys in its jail: its VMM tells it through TSVM_GUEST_HUGE_PAGES (1 or 0), which
 * also overrides what the host says (tests, benchmarks).
 */
export const GUEST_HUGE_PAGES: boolean = hugePagesWanted(process.env.TSVM_GUEST_HUGE_PAGES);
function hugePagesWanted(setting: string | undefined): boolean {
  if (setting === "0" || setting === "1") return setting === "1";
  const fd = sys.openRaw("/sys/kernel/mm/transparent_hugepage/enabled", O_RDONLY_CLOEXEC);
  if (fd < 0) return false;
  try {
    const text = new Uint8Array(128);
    const n = sys.readRaw(fd, text);
    return n > 0 && !new TextDecoder().decode(text.subarray(0, n)).includes("[never]");
  } finally {
    sys.close(fd);
  }
}

const MFD_CLOEXEC = 1;
const MFD_ALLOW_SEALING = 2;
const F_ADD_SEALS = 1033;
const F_SEAL_SEAL = 1;
const F_SEAL_SHRINK = 2;
const F_SEAL_GROW = 4;

/** A contiguous range of guest RAM and where it lives: in a file (fd, offset) and in this process. */
export type MemoryRegion = {
  readonly guestBase: GuestAddress;
  readonly size: number;
  /** The file backing the region (a memfd), or -1 for a plain buffer. */
  readonly fd: number;
  /** Offset of the region's first byte in `fd`. */
  readonly fdOffset: number;
  /** Host virtual address of the region's first byte in this process (0 for a plain buffer). */
  readonly hostAddress: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
};

/** A requested region: guest base and size, both page aligned. */
export type RegionSpec = { readonly base: number; readonly size: number };

/** A region of a file to map as guest RAM (what a vhost-user memory table describes). */
export type RegionMapping = { readonly base: GuestAddress; readonly size: number; readonly fd: number; readonly fdOffset: number };

export type GuestMemoryErrorKind = "bad_layout" | "out_of_range";

/** A host-side misuse of guest memory (bad layout, an access the caller should have checked). */
export class GuestMemoryError extends Error {
  override readonly name = "GuestMemoryError";
  constructor(readonly kind: GuestMemoryErrorKind, message: string) {
    super(message);
  }
}

type Mapping = { readonly address: number; readonly size: number };

/** Advises a new mapping of guest memory for huge pages, and registers it for collapsing (GUEST_HUGE_PAGES). */
function preferHugePages(address: number, size: number): void {
  sys.madvise(address, size, MADV_HUGEPAGE); // a hint: nothing depends on it being taken
  if (GUEST_HUGE_PAGES) sys.hugeRangeAdd(address, size); // the same: 16 mappings at most are registered
}

function unmap(m: Mapping): void {
  if (GUEST_HUGE_PAGES) sys.hugeRangeRemove(m.address, m.size);
  sys.munmap(m.address, m.size);
}

/**
 * Guest physical memory. Accesses never cross a region boundary: anything that would is refused,
 * never truncated. Views handed out stay valid until `close`.
 */
export class GuestMemory {
  readonly regions: readonly MemoryRegion[];
  readonly #mappings: readonly Mapping[];
  readonly #ownedFds: readonly number[];
  #closed = false;

  private constructor(regions: MemoryRegion[], mappings: Mapping[], ownedFds: number[]) {
    this.regions = regions;
    this.#mappings = mappings;
    this.#ownedFds = ownedFds;
  }

  /**
   * Creates memory for `specs` (sorted, non-overlapping, page aligned, each <= 4 GiB) in one memfd,
   * sealed against shrinking and growing so no process it is shared with can take RAM away.
   */
  static create(specs: readonly RegionSpec[]): GuestMemory {
    validateSpecs(specs);
    const total = specs.reduce((sum, s) => sum + s.size, 0);
    const fd = sys.memfdCreate("tsvm_guest_mem", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    try {
      sys.ftruncate(fd, total);
      sys.fcntlInt(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL, "seal guest memory");
      const address = sys.mmapAligned(total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0, HUGE_PAGE_SIZE);
      preferHugePages(address, total);
      let fdOffset = 0;
      const regions = specs.map((s) => {
        const region = mappedRegion(guestAddress(s.base), s.size, fd, fdOffset, address + fdOffset);
        fdOffset += s.size;
        return region;
      });
      return new GuestMemory(regions, [{ address, size: total }], [fd]);
    } catch (e) {
      sys.close(fd);
      throw e;
    }
  }

  /**
   * Maps each file range in `mappings` as guest RAM (a device receiving a vhost-user memory table).
   * The fds become this object's to close. Ranges larger than 4 GiB become several regions.
   */
  static fromMappings(mappings: readonly RegionMapping[]): GuestMemory {
    const sorted = [...mappings].sort((a, b) => a.base - b.base);
    validateMappings(sorted);
    const regions: MemoryRegion[] = [];
    const maps: Mapping[] = [];
    try {
      for (const m of sorted) {
        // mmap wants a page-aligned file offset; a region may start anywhere in its file.
        const mapOffset = m.fdOffset - (m.fdOffset % PAGE_SIZE);
        const delta = m.fdOffset - mapOffset;
        const address = sys.mmapAligned(delta + m.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, m.fd, mapOffset, HUGE_PAGE_SIZE);
        maps.push({ address, size: delta + m.size });
        preferHugePages(address, delta + m.size);
        for (let at = 0; at < m.size; at += MAX_REGION_SIZE) {
          const size = Math.min(MAX_REGION_SIZE, m.size - at);
          regions.push(mappedRegion(guestAddress(m.base + at), size, m.fd, m.fdOffset + at, address + delta + at));
        }
      }
    } catch (e) {
      for (const map of maps) unmap(map);
      throw e;
    }
    return new GuestMemory(regions, maps, [...new Set(sorted.map((m) => m.fd))]);
  }

  /** Wraps plain buffers as guest memory (tests and tools; no fd, nothing to unmap). */
  static fromBuffers(regions: readonly { base: number; bytes: Uint8Array }[]): GuestMemory {
    validateSpecs(regions.map((r) => ({ base: r.base, size: r.bytes.byteLength })), 1);
    const out = regions.map((r): MemoryRegion => ({
      guestBase: guestAddress(r.base), size: r.bytes.byteLength, fd: -1, fdOffset: 0, hostAddress: 0,
      bytes: r.bytes, view: new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength),
    }));
    return new GuestMemory(out, [], []);
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
  regionOf(address: GuestAddress): MemoryRegion | null {
    for (const r of this.regions) {
      if (address >= r.guestBase && address < r.guestBase + r.size) return r;
    }
    return null;
  }

  /**
   * The guest's RAM as mappings of its memfd in this process, adjacent regions joined (a region is
   * at most 4 GiB, but the kernel and vhost-user back-ends want as few entries as possible). Empty
   * when the memory is not shareable (plain buffers).
   */
  hostMappings(): { guestBase: number; size: number; fd: number; fdOffset: number; hostAddress: number }[] {
    const out: { guestBase: number; size: number; fd: number; fdOffset: number; hostAddress: number }[] = [];
    for (const r of this.regions) {
      if (r.fd < 0 || r.hostAddress === 0) return [];
      const last = out[out.length - 1];
      if (last && last.fd === r.fd && last.guestBase + last.size === r.guestBase && last.fdOffset + last.size === r.fdOffset &&
        last.hostAddress + last.size === r.hostAddress) {
        last.size += r.size;
      } else {
        out.push({ guestBase: r.guestBase, size: r.size, fd: r.fd, fdOffset: r.fdOffset, hostAddress: r.hostAddress });
      }
    }
    return out;
  }

  /** This process's address of guest `address` (for the kernel or a back-end), or null outside shared RAM. */
  hostAddressOf(address: GuestAddress): number | null {
    const r = this.regionOf(address);
    return r === null || r.hostAddress === 0 ? null : r.hostAddress + (address - r.guestBase);
  }

  /** Returns whether [address, address + length) lies inside one region. */
  isValidRange(address: GuestAddress, length: number): boolean {
    return this.#holding(address, length) !== null;
  }

  /** Returns a live view of [address, address + length), or null when it is not inside one region. */
  slice(address: GuestAddress, length: number): Uint8Array | null {
    const region = this.#holding(address, length);
    if (region === null) return null;
    const offset = address - region.guestBase;
    return region.bytes.subarray(offset, offset + length);
  }

  /**
   * Returns live views covering [address, address + length), split where regions meet (RAM above
   * 4 GiB is contiguous across regions), or null when any byte is not RAM.
   */
  slices(address: GuestAddress, length: number): Uint8Array[] | null {
    const whole = this.slice(address, length);
    if (whole !== null) return [whole];
    if (!Number.isSafeInteger(length) || length < 0) return null;
    const out: Uint8Array[] = [];
    let at: number = address;
    let left = length;
    while (left > 0) {
      const region = this.regionOf(at as GuestAddress);
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
  read(address: GuestAddress, dst: Uint8Array): void {
    dst.set(this.#slice(address, dst.byteLength));
  }

  /** Copies `src` into guest memory; throws when the range is not RAM. */
  write(address: GuestAddress, src: Uint8Array): void {
    this.#slice(address, src.byteLength).set(src);
  }

  readU8(address: GuestAddress): number {
    const region = this.#expect(address, 1);
    return region.view.getUint8(address - region.guestBase);
  }
  readU16(address: GuestAddress): number {
    const region = this.#expect(address, 2);
    return region.view.getUint16(address - region.guestBase, true);
  }
  readU32(address: GuestAddress): number {
    const region = this.#expect(address, 4);
    return region.view.getUint32(address - region.guestBase, true);
  }
  readU64(address: GuestAddress): bigint {
    const region = this.#expect(address, 8);
    return region.view.getBigUint64(address - region.guestBase, true);
  }
  writeU8(address: GuestAddress, value: number): void {
    const region = this.#expect(address, 1);
    region.view.setUint8(address - region.guestBase, value);
  }
  writeU16(address: GuestAddress, value: number): void {
    const region = this.#expect(address, 2);
    region.view.setUint16(address - region.guestBase, value, true);
  }
  writeU32(address: GuestAddress, value: number): void {
    const region = this.#expect(address, 4);
    region.view.setUint32(address - region.guestBase, value, true);
  }
  writeU64(address: GuestAddress, value: bigint): void {
    const region = this.#expect(address, 8);
    region.view.setBigUint64(address - region.guestBase, value, true);
  }

  /** Unmaps the memory and closes its fds; every view taken from it is dead afterwards. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const m of this.#mappings) unmap(m);
    for (const fd of this.#ownedFds) sys.close(fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * The region holding all of [address, address + length), or null. Returns the region alone (the
   * offset is `address - region.guestBase`): this runs for every buffer of every request, and an
   * object per lookup showed in the block device's profile.
   */
  #holding(address: number, length: number): MemoryRegion | null {
    if (!Number.isSafeInteger(address) || !Number.isSafeInteger(length) || address < 0 || length < 0) return null;
    const regions = this.regions;
    for (let i = 0; i < regions.length; i++) {
      const region = regions[i]!;
      const offset = address - region.guestBase;
      if (offset >= 0 && offset < region.size) return length <= region.size - offset ? region : null;
    }
    return null;
  }

  #expect(address: GuestAddress, length: number): MemoryRegion {
    const region = this.#holding(address, length);
    if (region === null) {
      throw new GuestMemoryError("out_of_range", `guest range ${hex(address)}+${length} is not inside guest RAM`);
    }
    return region;
  }

  #slice(address: GuestAddress, length: number): Uint8Array {
    const region = this.#expect(address, length);
    const offset = address - region.guestBase;
    return region.bytes.subarray(offset, offset + length);
  }
}

/** Where `mapForWriting` leaves what it read, so the compiler cannot drop the reads. */
const probe = { sink: 0 };

/**
 * Maps the guest pages under `views` into this process before the device writes them in bulk (a
 * read from a socket into a guest's receive buffers), by reading a byte of each page first. A write
 * to a page of guest memory this process has not mapped costs a fault per 4 KiB page, while a read
 * fault on a file mapping maps the 64 KiB around it that the memfd holds (the kernel's fault-around;
 * it happens only for an access that faults, hence a read of every page, not one per 64 KiB): on
 * this host, mapping 1 MiB of guest pages took ~360 us by writing them and ~50 us with a read first
 * (a C loop over a memfd). A page already mapped costs a load; the bytes read are not used.
 */
export function mapForWriting(views: readonly Uint8Array[]): void {
  let sink = 0;
  for (const view of views) {
    const n = view.byteLength;
    if (n === 0) continue;
    for (let at = 0; at < n; at += PAGE_SIZE) sink ^= view[at]!;
    sink ^= view[n - 1]!; // the last page, when `at` stepped over its start
  }
  probe.sink = sink;
}

function mappedRegion(guestBase: GuestAddress, size: number, fd: number, fdOffset: number, hostAddress: number): MemoryRegion {
  const buffer = sys.viewOf(hostAddress, size);
  return { guestBase, size, fd, fdOffset, hostAddress, bytes: new Uint8Array(buffer), view: new DataView(buffer) };
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
    if (guestAddressFromNumber(s.base + s.size - 1) === null) {
      throw new GuestMemoryError("bad_layout", `guest memory region ${hex(s.base)}+${hex(s.size)} ends beyond the physical address space`);
    }
    previousEnd = s.base + s.size;
  }
}

function validateMappings(sorted: readonly RegionMapping[]): void {
  if (sorted.length === 0) throw new GuestMemoryError("bad_layout", "guest memory needs at least one region");
  let previousEnd = 0;
  for (const m of sorted) {
    const bad = !Number.isSafeInteger(m.size) || m.size <= 0 || m.size % PAGE_SIZE !== 0 || m.base % PAGE_SIZE !== 0 ||
      !Number.isSafeInteger(m.fdOffset) || m.fdOffset < 0 || m.fd < 0;
    if (bad) throw new GuestMemoryError("bad_layout", `bad guest memory region ${hex(m.base)}+${hex(m.size)} at file offset ${hex(m.fdOffset)}`);
    if (m.base < previousEnd) throw new GuestMemoryError("bad_layout", `guest memory region ${hex(m.base)} overlaps the one before it`);
    if (guestAddressFromNumber(m.base + m.size - 1) === null) {
      throw new GuestMemoryError("bad_layout", `guest memory region ${hex(m.base)}+${hex(m.size)} ends beyond the physical address space`);
    }
    previousEnd = m.base + m.size;
  }
}
