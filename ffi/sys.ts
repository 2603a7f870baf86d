// sys.ts - bindings for c/sys.c: fds, ioctls, memfd and mappings.
import { ptr, toArrayBuffer } from "bun:ffi";
import { checked } from "../src/base/errno.ts";
import { native } from "./lib.ts";

/** A buffer the C side may read or write for the duration of one call. */
export type NativeBuffer = Uint8Array | Int32Array | BigUint64Array | BigInt64Array;

const cString = (s: string): Buffer => Buffer.from(`${s}\0`);

/** Opens `path` (always O_CLOEXEC); throws on failure. */
export function open(path: string, flags: number, mode = 0): number {
  return checked(native.tsvm_open(cString(path), flags, mode), `open ${path}`);
}

/** Opens `path` (always O_CLOEXEC); returns the fd or -errno. */
export function openRaw(path: string, flags: number, mode = 0): number {
  return native.tsvm_open(cString(path), flags, mode);
}

/** What lstat(2) says of `path` itself (a symlink not followed): its mode, and its identity as "dev:ino"; or -errno. */
export function lstat(path: string): { mode: number; identity: string } | number {
  const out = new BigUint64Array(3);
  const r = native.tsvm_lstat(cString(path), out);
  return r < 0 ? r : { mode: Number(out[0]), identity: `${out[1]}:${out[2]}` };
}

/** Removes the name `path`; returns 0 or -errno. */
export function unlink(path: string): number {
  return native.tsvm_unlink(cString(path));
}

/** Closes `fd`; errors are ignored because the fd is gone either way. */
export function close(fd: number): void {
  native.tsvm_close(fd);
}

/** Reads up to `buf.byteLength` bytes; returns the count or -errno. */
export function readRaw(fd: number, buf: Uint8Array, len = buf.byteLength): number {
  return Number(native.tsvm_read(fd, buf, len));
}

/** Writes `len` bytes of `buf`; returns the count or -errno. */
export function writeRaw(fd: number, buf: Uint8Array, len = buf.byteLength): number {
  return Number(native.tsvm_write(fd, buf, len));
}

/** Reads into `buf` at file offset `offset`; returns the count or -errno. */
export function preadRaw(fd: number, buf: Uint8Array, offset: number): number {
  return Number(native.tsvm_pread(fd, buf, buf.byteLength, offset));
}

/** Writes `buf` at file offset `offset`; returns the count or -errno. */
export function pwriteRaw(fd: number, buf: Uint8Array, offset: number): number {
  return Number(native.tsvm_pwrite(fd, buf, buf.byteLength, offset));
}

/** The most segments one preadv/pwritev takes (the kernel's UIO_MAXIOV). */
export const MAX_IOV = 1024;
/** struct iovec[MAX_IOV] as 32-bit words: base low, base high, length low, length high. */
export const iovecs = new Uint32Array(MAX_IOV * 4);

/** Fills `iovecs` for `views` (at most MAX_IOV); returns how many. */
export function fillIovecs(views: readonly Uint8Array[]): number {
  const count = Math.min(views.length, MAX_IOV);
  for (let i = 0; i < count; i++) {
    const view = views[i]!;
    const base = view.byteLength === 0 ? 0 : (ptr(view) as unknown as number);
    iovecs[i * 4] = base >>> 0;
    iovecs[i * 4 + 1] = Math.floor(base / 0x1_0000_0000);
    iovecs[i * 4 + 2] = view.byteLength;
    iovecs[i * 4 + 3] = 0;
  }
  return count;
}

/** Returns the size in bytes of the file behind `fd`. */
export function fileSize(fd: number): number {
  const out = new BigInt64Array(1);
  checked(native.tsvm_fstat_size(fd, out), "stat file");
  return Number(out[0]);
}

/** The kinds of file fstat reports (S_IFMT bits); anonymous inodes (eventfd, epoll) have none. */
export const S_IFMT = 0o170000;
export const S_IFREG = 0o100000;
export const S_IFSOCK = 0o140000;
export const S_IFIFO = 0o010000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;

/** Returns the mode and size of the file behind `fd`, or -errno. */
export function fstat(fd: number): { mode: number; size: number } | number {
  const out = new BigInt64Array(2);
  const r = native.tsvm_fstat(fd, out);
  return r < 0 ? r : { mode: Number(out[0]), size: Number(out[1]) };
}

/** Runs ioctl(fd, request, arg); `arg` must stay valid and big enough for the request's struct. */
export function ioctlPtr(fd: number, request: number, arg: NativeBuffer | null): number {
  return native.tsvm_ioctl_ptr(fd, request, arg);
}

/** Runs ioctl(fd, request, value) with an integer argument; returns the result or -errno. */
export function ioctlVal(fd: number, request: number, value: number): number {
  return native.tsvm_ioctl_val(fd, request, value);
}

/** Creates a memfd (MFD_CLOEXEC is added by the caller's flags). */
export function memfdCreate(name: string, flags: number): number {
  return checked(native.tsvm_memfd_create(cString(name), flags), `create memfd ${name}`);
}

/** Sets the size of the file behind `fd`. */
export function ftruncate(fd: number, length: number): void {
  checked(native.tsvm_ftruncate(fd, length), "resize file");
}

/** Maps `length` bytes and returns the host address; unmap with munmap when every view is gone. */
export function mmap(length: number, prot: number, flags: number, fd: number, offset: number): number {
  const out = new BigUint64Array(1);
  checked(native.tsvm_mmap(out, length, prot, flags, fd, offset), "map memory");
  return Number(out[0]);
}

/** mmap at an address congruent with `offset` modulo `align` (a power of two; 2 MiB lets huge pages map the file's blocks whole). */
export function mmapAligned(length: number, prot: number, flags: number, fd: number, offset: number, align: number): number {
  const out = new BigUint64Array(1);
  checked(native.tsvm_mmap_aligned(out, length, prot, flags, fd, offset, align), "map memory");
  return Number(out[0]);
}

/**
 * Registers a mapping whose 2 MiB blocks O_DIRECT transfers collapse into huge pages (c/sys.c,
 * tsvm_prefer_huge); returns 0 or -errno (-ENOSPC: 16 ranges are registered already).
 */
export function hugeRangeAdd(address: number, length: number): number {
  return native.tsvm_huge_range_add(address, length);
}

/** Forgets a range given to hugeRangeAdd; called before it is unmapped. */
export function hugeRangeRemove(address: number, length: number): void {
  native.tsvm_huge_range_remove(address, length);
}

/** Unmaps a range returned by mmap. No view over it may be used afterwards. */
export function munmap(address: number, length: number): void {
  checked(native.tsvm_munmap(address, length), "unmap memory");
}

/** Gives the kernel `advice` about a mapped range; returns 0 or -errno. */
export function madvise(address: number, length: number, advice: number): number {
  return native.tsvm_madvise(address, length, advice);
}

/** Asks for a scheduler slice of `ns` for thread `tid` (0: the calling thread); returns 0 or -errno. */
export function schedSlice(tid: number, ns: number): number {
  return native.tsvm_sched_slice(tid, ns);
}

/** Adds `flags` (O_NONBLOCK, say) to the file status flags of `fd`. */
export function addFileFlags(fd: number, flags: number): void {
  checked(native.tsvm_fcntl_setfl(fd, flags), "set file flags");
}

/** Runs fcntl(fd, cmd, arg) with an int argument; throws `failed to <what>` on failure. */
export function fcntlInt(fd: number, cmd: number, arg: number, what: string): number {
  return checked(native.tsvm_fcntl_int(fd, cmd, arg), what);
}

/** Runs fcntl(fd, cmd, arg) with an int argument; returns the result or -errno. */
export function fcntlIntRaw(fd: number, cmd: number, arg: number): number {
  return native.tsvm_fcntl_int(fd, cmd, arg);
}

/** Duplicates `fd` (close-on-exec) to the lowest free number >= 3. */
export function dup(fd: number): number {
  return checked(native.tsvm_dup(fd), "duplicate fd");
}

/** Returns the process id. */
export function getpid(): number {
  return native.tsvm_getpid();
}

/** Returns the calling thread's id (for tgkill). */
export function gettid(): number {
  return native.tsvm_gettid();
}

/** Returns a zero-copy view of mapped memory; it must not outlive the mapping. */
export function viewOf(address: number, length: number): ArrayBuffer {
  return toArrayBuffer(address as never, 0, length);
}

/** Returns the host address of a buffer's first byte (only valid while the buffer lives). */
export function addressOf(buf: NativeBuffer): number {
  return ptr(buf) as unknown as number;
}

/** Fills `buf` with random bytes from the kernel; returns the count or -errno. */
export function getrandom(buf: Uint8Array): number {
  return Number(native.tsvm_getrandom(buf, buf.byteLength));
}

/** Flushes the file's data (and the metadata needed to read it) to stable storage; returns 0 or -errno. */
export function fdatasync(fd: number): number {
  return native.tsvm_fdatasync(fd);
}

/** fallocate(2): punch holes or zero ranges (mode FALLOC_FL_*); returns 0 or -errno. */
export function fallocate(fd: number, mode: number, offset: number, length: number): number {
  return native.tsvm_fallocate(fd, mode, offset, length);
}

/** flock(2) (LOCK_SH/LOCK_EX, | LOCK_NB); returns 0 or -errno. */
export function flock(fd: number, operation: number): number {
  return native.tsvm_flock(fd, operation);
}

/** Creates a socket (close-on-exec); throws on failure. */
export function socket(domain: number, type: number, protocol: number): number {
  return checked(native.tsvm_socket(domain, type, protocol), "create socket");
}

/** Creates a close-on-exec pipe: [read end, write end]. */
export function pipe(): [number, number] {
  const fds = new Int32Array(2);
  checked(native.tsvm_pipe(fds), "create a pipe");
  return [fds[0]!, fds[1]!];
}

/** Sets the size of the file behind `fd`; returns 0 or -errno. */
export function ftruncateRaw(fd: number, length: number): number {
  return native.tsvm_ftruncate(fd, length);
}
