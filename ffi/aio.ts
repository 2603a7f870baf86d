// aio.ts - bindings for c/aio.c: disk requests in flight on a pool of C threads (small O_DIRECT
// requests on the kernel's asynchronous I/O), and the same transfer (O_DIRECT alignment included) for
// synchronous callers.
import type { Pointer } from "bun:ffi";
import { native } from "./lib.ts";
import { fillIovecs, iovecs, MAX_IOV } from "./sys.ts";

/** What a request does. */
export const AIO_OP = { READ: 0, WRITE: 1, FLUSH: 2 } as const;
/** Added to WRITE: fdatasync before the request completes (a write-through device). */
export const AIO_SYNC = 0x100;
/** The most segments one request may have. */
export const AIO_MAX_SEGMENTS = MAX_IOV;

/** One finished request: the caller's tag and 0 or -errno. */
export type AioCompletion = { tag: number; result: number };

/**
 * A pool of C threads running one fd's requests; each completion makes `notifyFd` (an eventfd)
 * readable. Aligned O_DIRECT reads and writes of up to 64 KiB go to the kernel's asynchronous I/O
 * instead (c/aio.c says why), with the same completions. The buffers a request names must stay
 * mapped until it is reaped (guest memory).
 */
export class AioPool {
  #handle: Pointer | null;
  readonly #reaped: Int32Array;

  /**
   * Makes a pool of at most `maxThreads` threads, or `maxThreadsAlone` (not fewer) once the threads
   * serve every request: threads only, or the kernel's asynchronous I/O unavailable or refused for
   * the fd (c/aio.c's thread_limit). Throws if the pool cannot be made (bad sizes, no memory).
   */
  constructor(maxThreads: number, readonly capacity: number, notifyFd: number, maxThreadsAlone: number = maxThreads) {
    this.#handle = native.tsvm_aio_create(maxThreads, maxThreadsAlone, capacity, notifyFd) as Pointer | null;
    if (this.#handle === null) throw new Error(`failed to create an I/O pool of ${maxThreads} (alone ${maxThreadsAlone}) threads for ${capacity} requests`);
    this.#reaped = new Int32Array(capacity * 2);
  }

  /** Queues a read or write of `views` (in order) at `offset`; returns 0 or -errno (-EAGAIN: full). */
  submit(op: number, fd: number, views: readonly Uint8Array[], offset: number, tag: number, align: number): number {
    if (views.length > MAX_IOV) return -22; // EINVAL
    return native.tsvm_aio_submit(this.#live(), op, fd, iovecs, fillIovecs(views), offset, tag, align);
  }

  /** Queues an fdatasync of `fd`. */
  submitFlush(fd: number, tag: number): number {
    return native.tsvm_aio_submit(this.#live(), AIO_OP.FLUSH, fd, iovecs, 0, 0, tag, 1);
  }

  /** The completions so far (in the order they finished). */
  reap(): AioCompletion[] {
    const n = native.tsvm_aio_reap(this.#live(), this.#reaped, this.capacity);
    const out: AioCompletion[] = [];
    for (let i = 0; i < n; i++) out.push({ tag: this.#reaped[i * 2]! >>> 0, result: this.#reaped[i * 2 + 1]! });
    return out;
  }

  /** Blocks until nothing is queued or running; returns how many completions wait to be reaped. */
  waitIdle(): number {
    return native.tsvm_aio_wait_idle(this.#live());
  }

  /** How many requests went to the kernel's asynchronous I/O instead of a thread (for tests). */
  get kernelRequests(): number {
    return native.tsvm_aio_kernel_requests(this.#live());
  }

  /** How many io_submit calls started those (for tests: a batch's requests start in one). */
  get kernelCalls(): number {
    return native.tsvm_aio_kernel_calls(this.#live());
  }

  /** How many of those calls a pool thread made (batches offloaded: see `offload`). */
  get kernelOffloadedCalls(): number {
    return native.tsvm_aio_kernel_offloaded_calls(this.#live());
  }

  /** How many threads the pool has started (they stay until it closes). */
  get threads(): number {
    return native.tsvm_aio_threads(this.#live());
  }

  /**
   * Where a batch's io_submit runs from the next batch on: on a pool thread (true), so the caller's
   * loop goes on while the kernel starts the requests, or on the caller's thread (false, the default).
   */
  offload(on: boolean): void {
    native.tsvm_aio_offload(this.#live(), on ? 1 : 0);
  }

  /**
   * Whether requests from now on all go to the threads (true: QEMU's aio=threads, for comparing the
   * two on a host), the kernel's asynchronous I/O taking none; false, the default, gives it small
   * aligned O_DIRECT reads and writes.
   */
  threadsOnly(on: boolean): void {
    native.tsvm_aio_threads_only(this.#live(), on ? 1 : 0);
  }

  /**
   * Submits `submitAll`'s requests as one batch: those for the kernel's asynchronous I/O start
   * together when it returns (one io_submit, one plugged batch for the disk); thread requests start
   * at once as always.
   */
  batch(submitAll: () => void): void {
    const handle = this.#live();
    native.tsvm_aio_batch(handle, 1);
    try {
      submitAll();
    } finally {
      native.tsvm_aio_batch(handle, 0);
    }
  }

  /** Waits for what is in flight, then stops the threads. */
  close(): void {
    if (this.#handle === null) return;
    native.tsvm_aio_destroy(this.#handle);
    this.#handle = null;
  }

  #live(): Pointer {
    if (this.#handle === null) throw new Error("the I/O pool is closed");
    return this.#handle;
  }
}

/**
 * Moves `views` (in order, at most AIO_MAX_SEGMENTS) to or from `fd` at `offset` until done; reads
 * past the end of the file give zeros. `align` > 1: the fd is O_DIRECT with that alignment, and an
 * unaligned request goes through a bounce buffer. Returns 0 or -errno.
 */
export function diskTransfer(fd: number, views: readonly Uint8Array[], offset: number, align: number, write: boolean): number {
  if (views.length > MAX_IOV) return -22;
  return native.tsvm_disk_transfer(fd, iovecs, fillIovecs(views), offset, align, write ? 1 : 0);
}

/**
 * Moves what of `views` can be moved now without blocking (RWF_NOWAIT, a file read through the page
 * cache): the bytes moved, or -errno when none were (-EAGAIN: the rest would block; -EOPNOTSUPP:
 * the file system cannot tell).
 */
export function diskTry(fd: number, views: readonly Uint8Array[], offset: number, write: boolean): number {
  if (views.length > MAX_IOV) return -22;
  return native.tsvm_disk_try(fd, iovecs, fillIovecs(views), offset, write ? 1 : 0);
}

/** The alignment an O_DIRECT `fd` needs (512..4096 bytes, found by trying reads at offset 0). */
export function directAlignment(fd: number): number {
  const align = native.tsvm_dio_probe_align(fd);
  return align > 0 ? align : 4096;
}
