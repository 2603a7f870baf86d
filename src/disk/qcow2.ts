// qcow2.ts - QEMU's qcow2 format, versions 2 and 3 (docs/interop/qcow2.txt): L1/L2 lookup, cluster
// allocation with refcounts, zero clusters, compressed clusters (deflate) on read, raw or qcow2 backing.
//
// Crash safety: a write to an unallocated cluster goes (1) data into a new cluster at the end of the
// file, (2) its refcount, (3) the L2 entry that points at it. A new L2 table or refcount block is
// written and counted before the entry that points at it. Killing tsvm between steps leaves at worst
// a leaked cluster (refcount 1, unreferenced), which `qemu-img check` reports as a leak, not corruption.
import { type DiskExtent, DiskFile, type DiskImage, type PoolTarget, writeZeroBytes } from "./disk_file.ts";

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
const HEADER_V2_SIZE = 72;
const HEADER_V3_SIZE = 104;
const L1E_OFFSET_MASK = 0x00ff_ffff_ffff_fe00n;
const OFLAG_COPIED = 1n << 63n;
const OFLAG_COMPRESSED = 1n << 62n;
const OFLAG_ZERO = 1n;
/** Incompatible feature bits we can honour: none. Known ones get their own message. */
const INCOMPATIBLE_NAMES = ["dirty (needs qemu-img check -r)", "corrupt", "external data file", "compression type other than zlib", "extended L2 entries"];
const MIN_CLUSTER_BITS = 9;
const MAX_CLUSTER_BITS = 21;
/** bounds the backing chain so a loop of backing files cannot recurse forever */
export const MAX_BACKING_DEPTH = 8;
const BACKING_PATH_MAX = 1023;
/** Header extension types (docs/interop/qcow2.txt): the end of the list, and the backing file's format. */
const EXT_END = 0;
const EXT_BACKING_FORMAT = 0xe2792aca;
/** bounds the cached L2 tables and refcount blocks (whole clusters, least recently used go first) */
export const L2_CACHE_BYTES = 4 * 1024 * 1024;
export const REFCOUNT_CACHE_BYTES = 1024 * 1024;
/** A request scattered over more host extents than this is served at once, not on the I/O pool. */
const MAX_POOL_EXTENTS = 64;
/** QEMU's own limits on the tables (QCOW_MAX_L1_SIZE, QCOW_MAX_REFTABLE_SIZE): a hostile header cannot make us allocate more. */
const MAX_L1_BYTES = 32 * 1024 * 1024;
const MAX_REFCOUNT_TABLE_BYTES = 8 * 1024 * 1024;

/** Why an image cannot be opened (a usage error: the message names the problem). */
export class Qcow2Error extends Error {
  override readonly name = "Qcow2Error";
}

type Header = {
  version: number; clusterBits: number; size: number; l1Size: number; l1Offset: number;
  refcountTableOffset: number; refcountTableClusters: number; refcountOrder: number; headerLength: number;
  backingOffset: number; backingSize: number;
};

const u64 = (v: DataView, at: number): number => {
  const n = v.getBigUint64(at, false);
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new Qcow2Error("a header field is beyond 2^53");
  return Number(n);
};

/**
 * Opens the backing file an image names (read-only); throws Qcow2Error. The VMM resolves the name
 * against the image's directory; a jailed device process takes the next fd the VMM opened for it.
 */
export type BackingOpener = (name: string, format: "raw" | "qcow2" | null) => DiskImage;

/**
 * Which backing files a qcow2 image may name (`--block ...,backing_files=`): "dir" (the default)
 * only files inside the top image's own directory, after symbolic links are resolved; "any" any
 * file; "off" none (an image that names one is refused). An image is data, often downloaded: left
 * to it, its backing name could point at any file the VMM can read (/etc/shadow, a key), whose
 * bytes the guest would then read as its disk.
 */
export const BACKING_FILES = ["dir", "any", "off"] as const;
export type BackingFiles = (typeof BACKING_FILES)[number];

export type OpenOptions = {
  /** O_DIRECT for the image and its backing chain. */
  readonly direct?: boolean;
  readonly backingFiles?: BackingFiles;
};

/** Returns whether the first bytes of a file are the qcow2 magic. */
export function isQcow2(first4: Uint8Array): boolean {
  return first4.byteLength >= 4 && new DataView(first4.buffer, first4.byteOffset).getUint32(0, false) === QCOW2_MAGIC;
}

/**
 * node:fs and node:path, loaded only when a backing file is followed or an image created: each
 * built-in module a process touches stays in its memory (node:fs ~0.8 MiB), and a VMM that opens raw
 * images needs neither.
 */
const nodeFs = (): typeof import("node:fs") => require("node:fs");
const nodePath = (): typeof import("node:path") => require("node:path");

/** node:zlib's raw inflate, once a qcow2 image was opened in this process. */
let inflateRaw: typeof import("node:zlib").inflateRawSync | null = null;

/** A qcow2 image on top of a locked DiskFile. I/O returns false on failure and never throws. */
export class Qcow2Image implements DiskImage {
  readonly format = "qcow2";
  readonly readOnly: boolean;
  readonly #file: DiskFile;
  readonly #h: Header;
  readonly #clusterSize: number;
  readonly #l2Entries: number;
  readonly #l1: BigUint64Array;
  readonly #refcountTable: BigUint64Array;
  readonly #refcountBits: number;
  readonly #l2Cache: LruCache<number, DataView>;
  readonly #refcountCache: LruCache<number, DataView>;
  readonly #backing: DiskImage | null;
  #endOfFile: number;

  private constructor(file: DiskFile, h: Header, backing: DiskImage | null) {
    // zlib is loaded here, for qcow2 images only, and before any jail: node:zlib keeps ~2.2 MiB in
    // a process that merely imports it (the VMM, a block device on a raw image).
    inflateRaw ??= (require("node:zlib") as typeof import("node:zlib")).inflateRawSync;
    this.#file = file;
    this.#h = h;
    this.readOnly = file.readOnly;
    this.#clusterSize = 2 ** h.clusterBits;
    this.#l2Entries = this.#clusterSize / 8;
    this.#refcountBits = 2 ** h.refcountOrder;
    this.#l2Cache = new LruCache(Math.max(2, Math.floor(L2_CACHE_BYTES / this.#clusterSize)));
    this.#refcountCache = new LruCache(Math.max(2, Math.floor(REFCOUNT_CACHE_BYTES / this.#clusterSize)));
    this.#backing = backing;
    this.#l1 = this.#readTable(h.l1Offset, h.l1Size);
    this.#refcountTable = this.#readTable(h.refcountTableOffset, (h.refcountTableClusters * this.#clusterSize) / 8);
    this.#endOfFile = Math.ceil(file.size / this.#clusterSize) * this.#clusterSize;
  }

  /**
   * Whether the cluster at `offset` lies inside the file. New clusters are allocated at the end of
   * the file, so in a writable image a table or data cluster said to lie beyond it is corruption
   * (a truncated or hostile image): it is never written in place (a later allocation would land on
   * it), and a table there is an I/O error.
   */
  #inFile(offset: number): boolean {
    return this.readOnly || offset + this.#clusterSize <= this.#endOfFile;
  }

  /**
   * Validates the header of an open image file and builds the image; throws Qcow2Error. An image
   * that names a backing file needs `openBacking` (null: such images are refused).
   */
  static open(file: DiskFile, openBacking: BackingOpener | null): Qcow2Image {
    const raw = new Uint8Array(HEADER_V3_SIZE + 8);
    if (!file.preadExact(raw, 0)) throw new Qcow2Error("cannot read the header");
    const v = new DataView(raw.buffer);
    if (v.getUint32(0, false) !== QCOW2_MAGIC) throw new Qcow2Error("not a qcow2 image");
    const version = v.getUint32(4, false);
    if (version !== 2 && version !== 3) throw new Qcow2Error(`qcow2 version ${version} is not supported (2 and 3 are)`);
    const h: Header = {
      version,
      backingOffset: u64(v, 8), backingSize: v.getUint32(16, false),
      clusterBits: v.getUint32(20, false), size: u64(v, 24), l1Size: v.getUint32(36, false), l1Offset: u64(v, 40),
      refcountTableOffset: u64(v, 48), refcountTableClusters: v.getUint32(56, false),
      refcountOrder: version === 3 ? v.getUint32(96, false) : 4,
      headerLength: version === 3 ? v.getUint32(100, false) : HEADER_V2_SIZE,
    };
    if (v.getUint32(32, false) !== 0) throw new Qcow2Error("encrypted qcow2 images are not supported");
    if (h.clusterBits < MIN_CLUSTER_BITS || h.clusterBits > MAX_CLUSTER_BITS) throw new Qcow2Error(`cluster_bits ${h.clusterBits} is outside ${MIN_CLUSTER_BITS}-${MAX_CLUSTER_BITS}`);
    if (version === 3) {
      const incompatible = v.getBigUint64(72, false);
      for (let bit = 0n; bit < 64n; bit++) {
        if ((incompatible >> bit) & 1n) {
          throw new Qcow2Error(`incompatible feature bit ${bit} (${INCOMPATIBLE_NAMES[Number(bit)] ?? "unknown"}) is set; tsvm cannot use this image`);
        }
      }
      if (h.refcountOrder > 6) throw new Qcow2Error(`refcount_order ${h.refcountOrder} is invalid`);
    }
    const cluster = 2 ** h.clusterBits;
    const l2Entries = cluster / 8;
    if (h.l1Size * 8 > MAX_L1_BYTES) throw new Qcow2Error(`the L1 table (${h.l1Size} entries) is larger than ${MAX_L1_BYTES} bytes`);
    if (h.refcountTableClusters * cluster > MAX_REFCOUNT_TABLE_BYTES) throw new Qcow2Error("the refcount table is larger than 8 MiB");
    if (h.size === 0) throw new Qcow2Error("the virtual size is 0");
    const snapshots = v.getUint32(60, false);
    if (snapshots !== 0 && !file.readOnly) throw new Qcow2Error(`the image has ${snapshots} internal snapshots; tsvm opens such images read-only only`);
    const needL1 = Math.ceil(h.size / (cluster * l2Entries));
    if (h.l1Size < needL1) throw new Qcow2Error(`the L1 table (${h.l1Size} entries) is too small for ${h.size} bytes`);
    for (const [name, offset, bytes] of [["L1 table", h.l1Offset, h.l1Size * 8], ["refcount table", h.refcountTableOffset, h.refcountTableClusters * cluster]] as const) {
      if (offset % cluster !== 0 || offset === 0) throw new Qcow2Error(`the ${name} offset ${offset} is not cluster aligned`);
      // Written to, a table past the end of the file would be overwritten by the next cluster allocated.
      if (!file.readOnly && offset + bytes > file.size) throw new Qcow2Error(`the ${name} lies beyond the end of the file (a truncated or corrupt image)`);
    }
    let backing: DiskImage | null = null;
    if (h.backingOffset !== 0) {
      if (h.backingSize === 0 || h.backingSize > BACKING_PATH_MAX) throw new Qcow2Error("the backing file name is empty or too long");
      const name = new Uint8Array(h.backingSize);
      if (!file.preadExact(name, h.backingOffset)) throw new Qcow2Error("cannot read the backing file name");
      if (openBacking === null) throw new Qcow2Error("the image has a backing file, which cannot be opened here");
      backing = openBacking(new TextDecoder().decode(name), backingFormat(file, h, cluster));
    }
    return new Qcow2Image(file, h, backing);
  }

  get size(): number {
    return this.#h.size;
  }

  get fd(): number {
    return this.#file.fd;
  }

  get chainFds(): readonly number[] {
    return [this.#file.fd, ...(this.#backing?.chainFds ?? [])];
  }

  get poolTarget(): PoolTarget {
    return this.#file.poolTarget;
  }

  /**
   * Maps a request through the cluster tables for the I/O pool: allocated clusters go to their
   * host offsets (contiguous ones merged), zero and unallocated clusters read as zeros or from the
   * backing chain. A write must find every cluster allocated and ours alone (COPIED): anything
   * else allocates or copies on write, and is served at once, so metadata never changes while
   * requests are in flight; clusters are never reused, so a write in flight cannot land in a
   * cluster given to another offset meanwhile.
   */
  extents(offset: number, length: number, write: boolean): readonly DiskExtent[] | null {
    if (offset + length > this.#h.size) return null;
    const out: DiskExtent[] = [];
    const add = (e: DiskExtent): void => {
      const last = out[out.length - 1];
      const joins = last !== undefined && last.target?.fd === e.target?.fd && (e.target === null || last.hostOffset + last.length === e.hostOffset);
      if (joins) out[out.length - 1] = { ...last, length: last.length + e.length };
      else out.push(e);
    };
    const file = this.poolTarget;
    for (let done = 0; done < length;) {
      const at = offset + done;
      const [, , inCluster] = this.#indices(at);
      const n = Math.min(length - done, this.#clusterSize - inCluster);
      const entry = this.#l2Entry(at);
      if (entry === null || (entry & OFLAG_COMPRESSED) !== 0n) return null;
      const host = Number(entry & L1E_OFFSET_MASK);
      const zeroed = this.#h.version === 3 && (entry & OFLAG_ZERO) !== 0n;
      if (write) {
        if (host === 0 || (entry & OFLAG_COPIED) === 0n || zeroed || !this.#inFile(host)) return null;
        add({ target: file, hostOffset: host + inCluster, length: n });
      } else if (host !== 0 && !zeroed) {
        add({ target: file, hostOffset: host + inCluster, length: n });
      } else if ((entry & OFLAG_ZERO) !== 0n || this.#backing === null || at >= this.#backing.size) {
        add({ target: null, hostOffset: 0, length: n });
      } else {
        const fromBacking = Math.min(n, this.#backing.size - at);
        const below = this.#backing.extents(at, fromBacking, false);
        if (below === null) return null;
        for (const e of below) add(e);
        if (fromBacking < n) add({ target: null, hostOffset: 0, length: n - fromBacking });
      }
      if (out.length > MAX_POOL_EXTENTS) return null;
      done += n;
    }
    return out;
  }

  readInto(views: readonly Uint8Array[], offset: number): boolean {
    let at = offset;
    for (const view of views) {
      if (!this.#readRange(view, at)) return false;
      at += view.byteLength;
    }
    return true;
  }

  writable(views: readonly Uint8Array[]): readonly Uint8Array[] | null {
    return this.readOnly ? null : views;
  }

  writeFrom(views: readonly Uint8Array[], offset: number): boolean {
    if (this.readOnly) return false;
    let at = offset;
    for (const view of views) {
      if (!this.#writeRange(view, at)) return false;
      at += view.byteLength;
    }
    return true;
  }

  flush(): boolean {
    return this.#file.flush();
  }

  /** Discard may leave data in place; qcow2 images here keep their clusters. */
  discard(_offset: number, _length: number): boolean {
    return !this.readOnly;
  }

  writeZeroes(offset: number, length: number, _unmap: boolean): boolean {
    return writeZeroBytes(this, offset, length, this.#clusterSize);
  }

  resize(_bytes: number): string | null {
    return "resizing qcow2 images is not supported yet (use qemu-img resize while the VM is stopped)";
  }

  close(): void {
    this.#backing?.close();
    this.#file.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  // --- lookup ---

  /** Splits a guest offset into (L1 index, L2 index, offset in cluster). */
  #indices(offset: number): [number, number, number] {
    const cluster = Math.floor(offset / this.#clusterSize);
    return [Math.floor(cluster / this.#l2Entries), cluster % this.#l2Entries, offset % this.#clusterSize];
  }

  #readTable(offset: number, entries: number): BigUint64Array {
    const bytes = new Uint8Array(entries * 8);
    if (!this.#file.preadExact(bytes, offset)) throw new Qcow2Error(`cannot read a table at ${offset}`);
    const v = new DataView(bytes.buffer);
    const table = new BigUint64Array(entries);
    for (let i = 0; i < entries; i++) table[i] = v.getBigUint64(i * 8, false);
    return table;
  }

  #l2Table(l2Offset: number): DataView | null {
    if (l2Offset % this.#clusterSize !== 0 || !this.#inFile(l2Offset)) return null; // a corrupt image
    let t = this.#l2Cache.get(l2Offset);
    if (!t) {
      const bytes = new Uint8Array(this.#clusterSize);
      if (!this.#file.preadExact(bytes, l2Offset)) return null;
      t = new DataView(bytes.buffer);
      this.#l2Cache.set(l2Offset, t);
    }
    return t;
  }

  /** The L2 entry for `offset`, 0n when its L2 table does not exist, or null on an I/O error. */
  #l2Entry(offset: number): bigint | null {
    const [l1i, l2i] = this.#indices(offset);
    const l1e = this.#l1[l1i] ?? 0n;
    const l2Offset = Number(l1e & L1E_OFFSET_MASK);
    if (l2Offset === 0) return 0n;
    const table = this.#l2Table(l2Offset);
    return table === null ? null : table.getBigUint64(l2i * 8, false);
  }

  // --- reading ---

  #readRange(dst: Uint8Array, offset: number): boolean {
    let done = 0;
    while (done < dst.byteLength) {
      const at = offset + done;
      const [, , inCluster] = this.#indices(at);
      const n = Math.min(dst.byteLength - done, this.#clusterSize - inCluster);
      if (!this.#readInCluster(dst.subarray(done, done + n), at)) return false;
      done += n;
    }
    return true;
  }

  #readInCluster(dst: Uint8Array, offset: number): boolean {
    if (offset + dst.byteLength > this.#h.size) return false;
    const entry = this.#l2Entry(offset);
    if (entry === null) return false;
    const [, , inCluster] = this.#indices(offset);
    if (entry & OFLAG_COMPRESSED) return this.#readCompressed(entry, dst, inCluster);
    const host = Number(entry & L1E_OFFSET_MASK);
    if (host !== 0 && !(this.#h.version === 3 && entry & OFLAG_ZERO)) return this.#file.preadExact(dst, host + inCluster);
    if (entry & OFLAG_ZERO || !this.#backing || offset >= this.#backing.size) {
      dst.fill(0);
      return true;
    }
    // Unallocated: the backing file's bytes (zeros past its end).
    const fromBacking = Math.min(dst.byteLength, this.#backing.size - offset);
    dst.fill(0, fromBacking);
    return this.#backing.readInto([dst.subarray(0, fromBacking)], offset);
  }

  #readCompressed(entry: bigint, dst: Uint8Array, inCluster: number): boolean {
    // Bits 0..x-1 host offset, x..61 additional 512-byte sectors, x = 62 - (cluster_bits - 8).
    const x = BigInt(62 - (this.#h.clusterBits - 8));
    const host = Number(entry & ((1n << x) - 1n));
    const sectors = Number((entry >> x) & ((1n << (62n - x)) - 1n)) + 1;
    const length = sectors * 512 - (host % 512);
    const compressed = new Uint8Array(Math.max(0, length));
    if (!this.#file.preadExact(compressed, host)) return false;
    try {
      // At most one cluster comes out: a compressed cluster that inflates to more is corrupt (or a bomb).
      const cluster = inflateRaw!(compressed, { finishFlush: 2 /* Z_SYNC_FLUSH: the tail may be padding */, maxOutputLength: this.#clusterSize });
      if (cluster.byteLength < inCluster + dst.byteLength) return false;
      dst.set(cluster.subarray(inCluster, inCluster + dst.byteLength));
      return true;
    } catch {
      return false;
    }
  }

  // --- writing ---

  #writeRange(src: Uint8Array, offset: number): boolean {
    let done = 0;
    while (done < src.byteLength) {
      const at = offset + done;
      const [, , inCluster] = this.#indices(at);
      const n = Math.min(src.byteLength - done, this.#clusterSize - inCluster);
      if (!this.#writeInCluster(src.subarray(done, done + n), at)) return false;
      done += n;
    }
    return true;
  }

  #writeInCluster(src: Uint8Array, offset: number): boolean {
    if (offset + src.byteLength > this.#h.size) return false;
    const entry = this.#l2Entry(offset);
    if (entry === null) return false;
    const [l1i, l2i, inCluster] = this.#indices(offset);
    const host = Number(entry & L1E_OFFSET_MASK);
    const writable = host !== 0 && (entry & OFLAG_COPIED) !== 0n && !(entry & OFLAG_COMPRESSED) && !(this.#h.version === 3 && entry & OFLAG_ZERO) &&
      this.#inFile(host);
    if (writable) return this.#file.pwriteExact(src, host + inCluster);
    // Copy-on-write into a new cluster: the old contents (zeros, backing, shared or compressed data)
    // around the write are kept.
    const cluster = new Uint8Array(this.#clusterSize);
    const clusterStart = offset - inCluster;
    if (src.byteLength < this.#clusterSize) {
      const valid = Math.min(this.#clusterSize, this.#h.size - clusterStart);
      if (!this.#readInCluster(cluster.subarray(0, valid), clusterStart)) return false;
    }
    cluster.set(src, inCluster);
    const l2Offset = this.#ensureL2(l1i);
    if (l2Offset === null) return false;
    const newCluster = this.#allocate();
    if (!this.#file.pwriteExact(cluster, newCluster)) return false; // (1) data
    if (!this.#setRefcount(newCluster, 1)) return false; // (2) refcount
    const table = this.#l2Table(l2Offset)!; // (3) the L2 entry
    const newEntry = BigInt(newCluster) | OFLAG_COPIED;
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, newEntry, false);
    if (!this.#file.pwriteExact(bytes, l2Offset + l2i * 8)) return false;
    table.setBigUint64(l2i * 8, newEntry, false);
    // The old cluster, if it was ours alone, is now referenced by nobody; leaving it is a leak, not corruption.
    return true;
  }

  /** Returns the L2 table for L1 slot `l1i`, creating a zeroed one (table, refcount, then L1 entry). */
  #ensureL2(l1i: number): number | null {
    const l1e = this.#l1[l1i]!;
    const existing = Number(l1e & L1E_OFFSET_MASK);
    if (existing !== 0 && l1e & OFLAG_COPIED) return this.#inFile(existing) ? existing : null;
    const table = new Uint8Array(this.#clusterSize);
    if (existing !== 0) {
      // A shared L2 table (after a snapshot): copy it before changing it.
      if (!this.#file.preadExact(table, existing)) return null;
    }
    const offset = this.#allocate();
    if (!this.#file.pwriteExact(table, offset)) return null;
    if (!this.#setRefcount(offset, 1)) return null;
    const entry = BigInt(offset) | OFLAG_COPIED;
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, entry, false);
    if (!this.#file.pwriteExact(bytes, this.#h.l1Offset + l1i * 8)) return null;
    this.#l1[l1i] = entry;
    this.#l2Cache.set(offset, new DataView(table.buffer));
    return offset;
  }

  /** Reserves the next cluster at the end of the file. */
  #allocate(): number {
    const offset = this.#endOfFile;
    this.#endOfFile += this.#clusterSize;
    return offset;
  }

  /** Sets the refcount of the cluster at `hostOffset`, creating its refcount block when needed. */
  #setRefcount(hostOffset: number, value: number, depth = 0): boolean {
    if (depth > 2) return false;
    const perBlock = (this.#clusterSize * 8) / this.#refcountBits;
    const clusterIndex = hostOffset / this.#clusterSize;
    const tableIndex = Math.floor(clusterIndex / perBlock);
    if (tableIndex >= this.#refcountTable.length) return false; // the refcount table would have to grow
    let blockOffset = Number(this.#refcountTable[tableIndex]! & L1E_OFFSET_MASK);
    if (blockOffset !== 0 && !this.#inFile(blockOffset)) return false;
    if (blockOffset === 0) {
      // A new refcount block: written zeroed, counted (in itself if it covers itself), then linked.
      blockOffset = this.#allocate();
      const block = new Uint8Array(this.#clusterSize);
      if (!this.#file.pwriteExact(block, blockOffset)) return false;
      this.#refcountCache.set(blockOffset, new DataView(block.buffer));
      const selfIndex = Math.floor(blockOffset / this.#clusterSize / perBlock);
      if (selfIndex === tableIndex) {
        this.#storeRefcount(new DataView(block.buffer), (blockOffset / this.#clusterSize) % perBlock, 1);
        if (!this.#file.pwriteExact(block, blockOffset)) return false;
      }
      const entry = new Uint8Array(8);
      new DataView(entry.buffer).setBigUint64(0, BigInt(blockOffset), false);
      if (!this.#file.pwriteExact(entry, this.#h.refcountTableOffset + tableIndex * 8)) return false;
      this.#refcountTable[tableIndex] = BigInt(blockOffset);
      if (selfIndex !== tableIndex && !this.#setRefcount(blockOffset, 1, depth + 1)) return false;
    }
    let block = this.#refcountCache.get(blockOffset);
    if (!block) {
      const bytes = new Uint8Array(this.#clusterSize);
      if (!this.#file.preadExact(bytes, blockOffset)) return false;
      block = new DataView(bytes.buffer);
      this.#refcountCache.set(blockOffset, block);
    }
    const index = clusterIndex % perBlock;
    this.#storeRefcount(block, index, value);
    // Write back the whole bytes that hold the entry.
    const firstByte = Math.floor((index * this.#refcountBits) / 8);
    const byteCount = Math.max(1, this.#refcountBits / 8);
    return this.#file.pwriteExact(new Uint8Array(block.buffer, firstByte, byteCount), blockOffset + firstByte);
  }

  #storeRefcount(block: DataView, index: number, value: number): void {
    const bits = this.#refcountBits;
    if (bits >= 8) {
      const at = (index * bits) / 8;
      if (bits === 8) block.setUint8(at, value);
      else if (bits === 16) block.setUint16(at, value, false);
      else if (bits === 32) block.setUint32(at, value, false);
      else block.setBigUint64(at, BigInt(value), false);
      return;
    }
    const bit = index * bits;
    const byte = Math.floor(bit / 8);
    const shift = 8 - bits - (bit % 8);
    const mask = ((1 << bits) - 1) << shift;
    block.setUint8(byte, (block.getUint8(byte) & ~mask) | ((value << shift) & mask));
  }
}

/**
 * The backing file's format from the header extension that names it (qemu-img create -F), or null
 * when there is none (the backing file's magic then decides, as QEMU does).
 */
function backingFormat(file: DiskFile, h: Header, cluster: number): "raw" | "qcow2" | null {
  const end = Math.min(cluster, h.backingOffset > h.headerLength ? h.backingOffset : cluster);
  if (h.headerLength >= end) return null;
  const area = new Uint8Array(end - h.headerLength);
  if (!file.preadExact(area, h.headerLength)) throw new Qcow2Error("cannot read the header extensions");
  const v = new DataView(area.buffer);
  for (let at = 0; at + 8 <= area.byteLength;) {
    const type = v.getUint32(at, false);
    const length = v.getUint32(at + 4, false);
    if (type === EXT_END) return null;
    if (at + 8 + length > area.byteLength) throw new Qcow2Error("a header extension runs past the header cluster");
    if (type === EXT_BACKING_FORMAT) {
      const name = new TextDecoder().decode(area.subarray(at + 8, at + 8 + length));
      if (name === "raw" || name === "qcow2") return name;
      throw new Qcow2Error(`the backing file's format is ${JSON.stringify(name.slice(0, 32))}; tsvm reads raw and qcow2`);
    }
    at += 8 + Math.ceil(length / 8) * 8;
  }
  return null;
}

/**
 * Opens a disk image of `format` (null: recognised by its magic), locked for this VM; `direct`
 * opens it and its backing chain with O_DIRECT. A qcow2 image's backing file is resolved against
 * the image's own directory, must be a regular file allowed by `backingFiles` (BackingFiles), is
 * read as the format the image records for it (else by its magic), and is opened read-only, to a
 * depth of MAX_BACKING_DEPTH.
 */
export function openDiskImage(path: string, readOnly: boolean, format: "raw" | "qcow2" | null, options: OpenOptions = {}): DiskImage {
  // The directory of the name the user gave (as QEMU resolves backing names), its links resolved;
  // worked out when the first backing file is met.
  let root: string | null = null;
  return openChain(path, readOnly, format, options, 0, () => (root ??= realPath(nodePath().dirname(path))));
}

function openChain(path: string, readOnly: boolean, format: "raw" | "qcow2" | null, options: OpenOptions, depth: number, rootOf: () => string): DiskImage {
  const file = DiskFile.open(path, readOnly, options.direct ?? false, depth > 0);
  try {
    return imageOf(file, format, (name, backingFormat) => {
      if (depth + 1 > MAX_BACKING_DEPTH) throw new Qcow2Error(`the backing chain is deeper than ${MAX_BACKING_DEPTH}`);
      const policy = options.backingFiles ?? "dir";
      const quoted = JSON.stringify(name.slice(0, 200));
      if (policy === "off") throw new Qcow2Error(`it names a backing file (${quoted}) and backing_files=off`);
      const { dirname, resolve, sep } = nodePath();
      const root = rootOf();
      let target = resolve(dirname(path), name);
      if (policy === "dir") {
        target = realPath(target);
        if (!target.startsWith(root === sep ? sep : `${root}${sep}`)) {
          throw new Qcow2Error(`its backing file ${quoted} is ${target}, outside the image's directory ${root}; ` +
            "tsvm follows backing files there only, unless --block ...,backing_files=any allows any file");
        }
      }
      return openChain(target, true, backingFormat, options, depth + 1, rootOf);
    });
  } catch (e) {
    file.close();
    throw e instanceof Qcow2Error ? new Qcow2Error(`${path}: ${e.message}`) : e;
  }
}

/** `path` with every symbolic link resolved (as it is, when it does not exist: opening it says so). */
function realPath(path: string): string {
  try {
    return nodeFs().realpathSync(path);
  } catch {
    return path;
  }
}

/** Builds the image in `file`: qcow2 when `format` says so or, with no format, when its magic does. */
export function imageOf(file: DiskFile, format: "raw" | "qcow2" | null, openBacking: BackingOpener | null): DiskImage {
  const magic = new Uint8Array(4);
  const qcow2 = format === "qcow2" || (format === null && file.size >= 4 && file.preadExact(magic, 0) && isQcow2(magic));
  if (qcow2) return Qcow2Image.open(file, openBacking);
  file.guardProbedMagic = format === null;
  return file;
}

/** Creates an empty qcow2 v3 image of `size` bytes with 64 KiB clusters (tsvm create_qcow2). */
export function createQcow2(path: string, size: number): void {
  const clusterBits = 16;
  const cluster = 2 ** clusterBits;
  const l2Entries = cluster / 8;
  const l1Size = Math.max(1, Math.ceil(size / (cluster * l2Entries)));
  const l1Clusters = Math.ceil((l1Size * 8) / cluster);
  // cluster 0 header, 1 refcount table, 2 refcount block, 3.. L1 table
  const clusters = 3 + l1Clusters;
  const image = new Uint8Array(clusters * cluster);
  const v = new DataView(image.buffer);
  v.setUint32(0, QCOW2_MAGIC, false);
  v.setUint32(4, 3, false);
  v.setUint32(20, clusterBits, false);
  v.setBigUint64(24, BigInt(size), false);
  v.setUint32(36, l1Size, false);
  v.setBigUint64(40, BigInt(3 * cluster), false);
  v.setBigUint64(48, BigInt(cluster), false);
  v.setUint32(56, 1, false);
  v.setUint32(96, 4, false); // refcount_order: 16-bit refcounts
  v.setUint32(100, HEADER_V3_SIZE, false);
  v.setBigUint64(cluster, BigInt(2 * cluster), false); // refcount table[0] -> block at cluster 2
  for (let i = 0; i < clusters; i++) v.setUint16(2 * cluster + i * 2, 1, false);
  nodeFs().writeFileSync(path, image, { flag: "wx" });
}

/** A map that keeps at most `capacity` entries, dropping the least recently used. */
class LruCache<K, V> {
  readonly #map = new Map<K, V>();
  constructor(readonly capacity: number) {}

  get(key: K): V | undefined {
    const value = this.#map.get(key);
    if (value !== undefined) {
      this.#map.delete(key);
      this.#map.set(key, value);
    }
    return value;
  }

  set(key: K, value: V): void {
    this.#map.delete(key);
    this.#map.set(key, value);
    if (this.#map.size > this.capacity) this.#map.delete(this.#map.keys().next().value!);
  }

  get size(): number {
    return this.#map.size;
  }
}
