// disk_file.ts - the DiskImage interface, and raw images: opened once, locked against other VMs, read
// and written with preadv/pwritev (through the page cache, or O_DIRECT with o_direct=true).
import { aio, sys } from "../../ffi/mod.ts";
import { errnoName, SysError } from "../base/errno.ts";
import { OwnedFd } from "../base/owned_fd.ts";

const O_RDONLY = 0;
const O_RDWR = 2;
const O_NONBLOCK = 0o4000;
const O_DIRECT = 0o40000;
const O_PATH = 0o10000000;
const F_GETFL = 3;
const EINVAL = 22;
/** The bytes a probed magic occupies at the start of an image. */
const MAGIC_SIZE = 4;
const LOCK_SH = 1;
const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;

/** A file as the I/O pool sees it: its fd and the O_DIRECT alignment it needs (1 when buffered). */
export type PoolTarget = { readonly fd: number; readonly align: number };
/** A run of a request's bytes at `hostOffset` in `target` (null: zeros, for reads). */
export type DiskExtent = { readonly target: PoolTarget | null; readonly hostOffset: number; readonly length: number };

/** A disk as the block device sees it: a virtual size and byte-addressed I/O that never throws. */
export interface DiskImage {
  readonly readOnly: boolean;
  /** Virtual size in bytes. */
  readonly size: number;
  readonly format: "raw" | "qcow2";
  /** The image file. */
  readonly fd: number;
  /** The image file, then its backing chain's (for handing to a device process, in order). */
  readonly chainFds: readonly number[];
  /** The image's own file as the I/O pool sees it (a FLUSH syncs it). */
  readonly poolTarget: PoolTarget;
  /**
   * Where the bytes [offset, offset + length) live now, for a request on the I/O pool: host extents
   * in order (a null target reads as zeros), or null when the request must be served at once with
   * nothing in flight beside it (it would allocate or copy a cluster, inflate a compressed one, or
   * a table could not be read). A mapping holds until the next write served at once.
   */
  extents(offset: number, length: number, write: boolean): readonly DiskExtent[] | null;
  /**
   * What to write for a guest's `views` at `offset`: null when the write is refused (a read-only
   * image, a probed raw image's magic), else the views to write, which may hold private copies of
   * bytes the image checked (the guest can change its buffers after the check, so what is checked
   * must be what is written).
   */
  writable(views: readonly Uint8Array[], offset: number): readonly Uint8Array[] | null;
  readInto(views: readonly Uint8Array[], offset: number): boolean;
  writeFrom(views: readonly Uint8Array[], offset: number): boolean;
  flush(): boolean;
  discard(offset: number, length: number): boolean;
  writeZeroes(offset: number, length: number, unmap: boolean): boolean;
  /** Changes the virtual size; returns why it cannot, or null. */
  resize(bytes: number): string | null;
  close(): void;
}

/** The first bytes of the image formats tsvm recognises by probing (QEMU's rule, below). */
const PROBED_MAGICS = [Uint8Array.of(0x51, 0x46, 0x49, 0xfb)]; // qcow2 "QFI\xfb"

/** A host file holding a raw disk image. I/O methods return false on failure; they never throw. */
export class DiskFile extends OwnedFd implements DiskImage {
  readonly format = "raw";
  readonly readOnly: boolean;
  /**
   * Set for an image whose format was only probed: the guest may not write a known image magic
   * into its first bytes, or the next start would probe it as that format (with a backing file of
   * the guest's choosing). QEMU refuses the same writes to probed raw images.
   */
  guardProbedMagic = false;
  /**
   * 1 for a file read through the page cache; for an O_DIRECT file, the alignment of offsets,
   * lengths and buffers it needs (requests that break it go through an aligned bounce buffer).
   */
  readonly align: number;
  /** The fd and alignment the I/O pool uses, made once (every request at depth names it). */
  readonly poolTarget: PoolTarget;
  #size: number;

  private constructor(fd: number, readOnly: boolean) {
    super(fd);
    this.readOnly = readOnly;
    this.#size = sys.fileSize(fd);
    const flags = sys.fcntlIntRaw(fd, F_GETFL, 0);
    this.align = flags >= 0 && (flags & O_DIRECT) !== 0 ? aio.directAlignment(fd) : 1;
    this.poolTarget = { fd, align: this.align };
  }

  /** Wraps an fd opened (and locked) by another process, as a jailed device process receives it (O_DIRECT kept). */
  static fromFd(fd: number, readOnly: boolean): DiskFile {
    return new DiskFile(fd, readOnly);
  }

  /**
   * Opens `path` (read-only or read-write; with `direct`, O_DIRECT: the host's page cache is
   * bypassed) and takes a shared or exclusive lock on it. It must be a regular file or (unless
   * `regularOnly`: a backing file named inside an image) a block device. Its kind is checked on an
   * O_PATH descriptor before anything opens it for I/O, so naming a device such as a watchdog or a
   * tape, whose open has effects, opens nothing; the file is then reopened through that descriptor
   * (the same file, whatever happens to the path meanwhile), non-blocking.
   */
  static open(path: string, readOnly: boolean, direct = false, regularOnly = false): DiskFile {
    const pathFd = sys.open(path, O_PATH);
    const stat = sys.fstat(pathFd);
    const kind = typeof stat === "number" ? -1 : stat.mode & sys.S_IFMT;
    if (kind !== sys.S_IFREG && (regularOnly || kind !== sys.S_IFBLK)) {
      sys.close(pathFd);
      throw new Error(`failed to open disk image ${path}: not a regular file${regularOnly ? "" : " or block device"}`);
    }
    let fd: number;
    try {
      fd = sys.open(`/proc/self/fd/${pathFd}`, (readOnly ? O_RDONLY : O_RDWR) | O_NONBLOCK | (direct ? O_DIRECT : 0));
    } catch (e) {
      // open(2) says EINVAL for O_DIRECT on a file system without direct I/O (tmpfs before Linux 6.6).
      if (direct && e instanceof SysError && e.errno === EINVAL) {
        throw new Error(`failed to open disk image ${path} with o_direct=true: its file system does not support O_DIRECT`);
      }
      throw e instanceof SysError ? new Error(`failed to open disk image ${path}: ${errnoName(e.errno)}`) : e;
    } finally {
      sys.close(pathFd);
    }
    const lock = sys.flock(fd, (readOnly ? LOCK_SH : LOCK_EX) | LOCK_NB);
    if (lock < 0) {
      sys.close(fd);
      throw new Error(lock === -EWOULDBLOCK
        ? `failed to lock disk image ${path}: another VM has it open${readOnly ? " read-write" : ""}`
        : `failed to lock disk image ${path}: errno ${-lock}`);
    }
    return new DiskFile(fd, readOnly);
  }

  get chainFds(): readonly number[] {
    return [this.fd];
  }

  /** A raw file maps one to one (reads past its end give zeros). */
  extents(offset: number, length: number): readonly DiskExtent[] {
    return [{ target: this.poolTarget, hostOffset: offset, length }];
  }

  writable(views: readonly Uint8Array[], offset: number): readonly Uint8Array[] | null {
    if (this.readOnly) return null;
    if (!this.guardProbedMagic || offset >= MAGIC_SIZE) return views;
    // The bytes that land below MAGIC_SIZE are copied, checked, and written from the copy.
    const copied = new Uint8Array(MAGIC_SIZE - offset);
    const rest: Uint8Array[] = [];
    let filled = 0;
    for (const view of views) {
      const n = Math.min(view.byteLength, copied.byteLength - filled);
      copied.set(view.subarray(0, n), filled);
      filled += n;
      if (n < view.byteLength) rest.push(view.subarray(n));
    }
    const head = copied.subarray(0, filled);
    return this.#wouldWriteMagic(head, offset) ? null : [head, ...rest];
  }

  /** Size in bytes, as of opening (or the last refresh). */
  get size(): number {
    return this.#size;
  }

  /** Re-reads the size (after the image was resized). */
  refreshSize(): number {
    this.#size = sys.fileSize(this.fd);
    return this.#size;
  }

  resize(bytes: number): string | null {
    if (this.readOnly) return "the disk is read-only";
    const r = sys.ftruncateRaw(this.fd, bytes);
    if (r < 0) return `ftruncate failed (errno ${-r})`;
    this.refreshSize();
    return null;
  }

  /** Reads exactly `buf.byteLength` bytes at `offset` (zeros past the end of the file). */
  preadExact(buf: Uint8Array, offset: number): boolean {
    return this.readInto([buf], offset);
  }

  /** Writes all of `buf` at `offset`, even on a read-only image (metadata of a fresh image). */
  pwriteExact(buf: Uint8Array, offset: number): boolean {
    return this.#transfer([buf], offset, true);
  }

  /** Fills each view in turn from `offset`; reads past the end of the file give zeros. */
  readInto(views: readonly Uint8Array[], offset: number): boolean {
    return this.#transfer(views, offset, false);
  }

  /** Writes each view in turn from `offset`. */
  writeFrom(views: readonly Uint8Array[], offset: number): boolean {
    const checked = this.writable(views, offset);
    return checked !== null && this.#transfer(checked, offset, true);
  }

  /**
   * Moves `views`, in order, to the file (`write`) or from it at `offset`: each AIO_MAX_SEGMENTS of
   * them in one call into the C library, which runs preadv/pwritev until all moved (reads past the
   * end of the file give zeros; an O_DIRECT file's unaligned requests go through a bounce buffer).
   */
  #transfer(views: readonly Uint8Array[], offset: number, write: boolean): boolean {
    let at = offset;
    for (let i = 0; i < views.length; i += aio.AIO_MAX_SEGMENTS) {
      const part = views.length <= aio.AIO_MAX_SEGMENTS ? views : views.slice(i, i + aio.AIO_MAX_SEGMENTS);
      if (aio.diskTransfer(this.fd, part, at, this.align, write) !== 0) return false;
      for (const view of part) at += view.byteLength;
    }
    return true;
  }

  flush(): boolean {
    return sys.fdatasync(this.fd) === 0;
  }

  /** Whether writing `bytes` (all below MAGIC_SIZE) at `offset` would leave a probed format's magic in the first bytes. */
  #wouldWriteMagic(bytes: Uint8Array, offset: number): boolean {
    const head = new Uint8Array(MAGIC_SIZE);
    this.readInto([head], 0);
    head.set(bytes, offset);
    return PROBED_MAGICS.some((magic) => magic.every((b, i) => head[i] === b));
  }

  /** Deallocates a range (reads return zeros afterwards). */
  discard(offset: number, length: number): boolean {
    return !this.readOnly && sys.fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) === 0;
  }

  /**
   * Zeroes a range, deallocating it when `unmap` allows. Where the file system has no ZERO_RANGE
   * (tmpfs), a hole reads as zeros too; zeros are written only where neither works, since a request
   * may cover gigabytes.
   */
  writeZeroes(offset: number, length: number, unmap: boolean): boolean {
    if (this.readOnly) return false;
    if (unmap && this.discard(offset, length)) return true;
    if (sys.fallocate(this.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length) === 0) return true;
    if (this.discard(offset, length)) return true;
    return writeZeroBytes(this, offset, length, 1 << 20);
  }
}

/** Zeroes [offset, offset + length) of `image` by writing zeros `chunk` bytes at a time. */
export function writeZeroBytes(image: Pick<DiskImage, "writeFrom">, offset: number, length: number, chunk: number): boolean {
  const zeros = new Uint8Array(Math.min(length, chunk));
  for (let at = 0; at < length; at += zeros.byteLength) {
    if (!image.writeFrom([zeros.subarray(0, Math.min(zeros.byteLength, length - at))], offset + at)) return false;
  }
  return true;
}
