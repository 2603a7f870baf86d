// block.ts - virtio-blk (virtio 1.2 §5.2) over a raw image: read, write, flush, get-id, discard, write-zeroes.
import { BufferCursor, ChainReader, ChainWriter, type DescriptorChain } from "../descriptor_chain.ts";
import { type ControllableDevice, type DeviceCommand, type DeviceReply, unsupported } from "../device_control.ts";
import { drainQueue } from "../drain.ts";
import type { Queue } from "../queue.ts";
import { AIO_MAX_SEGMENTS, AIO_OP, AIO_SYNC, AioPool, diskTransfer, diskTry } from "../../../../ffi/aio.ts";
import { sys } from "../../../../ffi/mod.ts";
import { ERRNO } from "../../../base/errno.ts";
import { EventFd } from "../../../base/event_fd.ts";
import { log } from "../../../base/log.ts";
import { type ActivateContext, hasFeature, TSVM_RING_FEATURES, VIRTIO_ID, type VirtioDevice, type VirtioWorker } from "../virtio_device.ts";
import type { DiskImage, PoolTarget } from "../../../disk/disk_file.ts";
import { BLOCK_MAX_QUEUES } from "../../vhost_user/device_types.ts";
import { GUEST_HUGE_PAGES } from "../../../memory/guest_memory.ts";

export const SECTOR_SIZE = 512;
const SECTOR_SHIFT = 9;
const QUEUE_SIZE = 256;
/**
 * At most this many I/O threads per device, whatever its queue count (started as requests need them,
 * and they stay): MAX_IO_THREADS while the kernel's asynchronous I/O takes small O_DIRECT requests
 * (the threads then see large ones, flushes and page-cache images), ALONE_MAX_IO_THREADS, as many as
 * QEMU's pool, once the threads serve every request (TSVM_AIO_THREADS=1, or the kernel refused the
 * image, as under nested KVM on virtio-fs), so a queue's depth of small requests can all be on the
 * disk at once.
 */
const MAX_IO_THREADS = 16;
const ALONE_MAX_IO_THREADS = 64;
/** The largest pool request that merging parts of sequential requests makes (8 requests of 64 KiB). */
const MERGE_MAX_BYTES = 512 * 1024;
/**
 * The same for O_DIRECT where guest memory under O_DIRECT transfers becomes huge pages
 * (GUEST_HUGE_PAGES): a batch of 32 requests of 64 KiB is then one request to the host's disk, of
 * one segment when the buffers follow one another. Reads of 64 KiB at depth 32 took 101-106k TSC
 * cycles a request against 144-257k in 512 KiB requests (QEMU, which merges a batch whole, 87-101k).
 * In 4 KiB pages a 2 MiB request is 512 segments, which the host's disk splits, and merging that far
 * was slower than 512 KiB (186-257k against 181-198k).
 */
const MERGE_MAX_DIRECT_BYTES = GUEST_HUGE_PAGES ? 2 * 1024 * 1024 : MERGE_MAX_BYTES;
/**
 * Whether a batch of O_DIRECT requests for the kernel's asynchronous I/O is started by a pool thread
 * (its io_submit off the loop) rather than by the loop (c/aio.c says when each is faster):
 * TSVM_AIO_OFFLOAD=1; off by default. A jailed device gets its VMM's setting.
 */
export const AIO_OFFLOAD: boolean = process.env.TSVM_AIO_OFFLOAD === "1";
/**
 * Whether every request goes to the pool's threads, the kernel's asynchronous I/O taking none, as
 * QEMU's aio=threads (TSVM_AIO_THREADS=1; off by default): bench sections 8 and 10 compare the two
 * on a host. The pool may then grow to ALONE_MAX_IO_THREADS. A jailed device gets its VMM's setting.
 */
export const AIO_THREADS_ONLY: boolean = process.env.TSVM_AIO_THREADS === "1";
/** A buffered write on the loop that takes longer sends writes to the pool for POOL_WRITES_MS. */
const SLOW_WRITE_MS = 5;
const POOL_WRITES_MS = 1000;
/** Feature bits (§5.2.3). */
export const VIRTIO_BLK_F = {
  SIZE_MAX: 1n, SEG_MAX: 2n, RO: 5n, BLK_SIZE: 6n, FLUSH: 9n, MQ: 12n, DISCARD: 13n, WRITE_ZEROES: 14n,
} as const;
/** Request types and status values (§5.2.6). */
export const VIRTIO_BLK_T = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13 } as const;
export const VIRTIO_BLK_S = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;
/** struct virtio_blk_req header: le32 type, le32 reserved, le64 sector. */
const HEADER_SIZE = 16;
/** struct virtio_blk_discard_write_zeroes: le64 sector, le32 num_sectors, le32 flags. */
const SEGMENT_SIZE = 16;
const WRITE_ZEROES_FLAG_UNMAP = 1;
export const VIRTIO_BLK_ID_BYTES = 20;
/** Limits advertised to the driver. */
const SIZE_MAX = 1 << 20; // largest single segment
const SEG_MAX = QUEUE_SIZE - 2; // data segments beside the header and status descriptors
const MAX_DISCARD_SECTORS = (1 << 30) >> SECTOR_SHIFT;
const MAX_DISCARD_SEG = 32;
/**
 * Write-zeroes on a qcow2 image writes zeros cluster by cluster on the device's loop (no fallocate
 * there), so a request may ask for at most 16 MiB in one segment: 32 segments of 1 GiB would keep
 * the loop for minutes and the device would miss its command deadlines.
 */
const QCOW2_MAX_WRITE_ZEROES_SECTORS = (16 << 20) >> SECTOR_SHIFT;
/** struct virtio_blk_config fields we fill (§5.2.4). */
const CONFIG = {
  capacity: 0, size_max: 8, seg_max: 12, blk_size: 20, num_queues: 34, max_discard_sectors: 36, max_discard_seg: 40,
  discard_sector_alignment: 44, max_write_zeroes_sectors: 48, max_write_zeroes_seg: 52, write_zeroes_may_unmap: 56,
} as const;
const CONFIG_SIZE = 60;

/** A request whose header has been read: the chain, positioned after the header. */
export type BlockRequest = {
  readonly chain: DescriptorChain;
  readonly reader: ChainReader;
  readonly writer: ChainWriter;
  readonly type: number;
  readonly sector: number;
};

/** The block device: one or more request queues (VIRTIO_BLK_F_MQ) over one disk image. */
export class Block implements VirtioDevice, ControllableDevice {
  readonly debugLabel: string;
  readonly deviceType = VIRTIO_ID.BLOCK;
  readonly queueMaxSizes: readonly number[];
  readonly features: bigint;
  readonly configSize = CONFIG_SIZE;
  readonly #config = new DataView(new ArrayBuffer(CONFIG_SIZE));
  readonly #id: Uint8Array;
  /** The most a write-zeroes request may cover (advertised in the configuration and enforced). */
  readonly #writeZeroesLimits: { readonly sectors: number; readonly segments: number };
  /** Told when a resize changed the capacity. */
  #configListener: (() => void) | null = null;
  /**
   * Whether a completed write must already be on stable storage: so unless the driver accepted
   * VIRTIO_BLK_F_FLUSH (without it the driver has no way to ask for durability, and virtio 1.2
   * §5.2.6.2 makes the device write-through). Until a driver says, assume the safe case.
   */
  #writeThrough = true;
  /** The requests in flight on the active queues (null for qcow2 or before activation). */
  #inFlight: InFlight | null = null;

  /** `queues`: request queues, 1 to BLOCK_MAX_QUEUES; more than one offers VIRTIO_BLK_F_MQ. */
  constructor(readonly disk: DiskImage, id: string, label = "block", queues = 1) {
    if (!Number.isInteger(queues) || queues < 1 || queues > BLOCK_MAX_QUEUES) {
      throw new RangeError(`${label}: ${queues} request queues; expected 1 to ${BLOCK_MAX_QUEUES}`);
    }
    this.debugLabel = label;
    this.queueMaxSizes = new Array<number>(queues).fill(QUEUE_SIZE);
    const bit = (b: bigint): bigint => 1n << b;
    this.features = TSVM_RING_FEATURES | bit(VIRTIO_BLK_F.SIZE_MAX) | bit(VIRTIO_BLK_F.SEG_MAX) | bit(VIRTIO_BLK_F.BLK_SIZE) | bit(VIRTIO_BLK_F.FLUSH) |
      (queues > 1 ? bit(VIRTIO_BLK_F.MQ) : 0n) |
      (disk.readOnly ? bit(VIRTIO_BLK_F.RO) : bit(VIRTIO_BLK_F.DISCARD) | bit(VIRTIO_BLK_F.WRITE_ZEROES));
    this.#id = new Uint8Array(VIRTIO_BLK_ID_BYTES);
    this.#id.set(new TextEncoder().encode(id).subarray(0, VIRTIO_BLK_ID_BYTES));
    const c = this.#config;
    c.setUint32(CONFIG.size_max, SIZE_MAX, true);
    c.setUint32(CONFIG.seg_max, SEG_MAX, true);
    c.setUint32(CONFIG.blk_size, SECTOR_SIZE, true);
    c.setUint16(CONFIG.num_queues, queues, true);
    c.setUint32(CONFIG.max_discard_sectors, MAX_DISCARD_SECTORS, true);
    c.setUint32(CONFIG.max_discard_seg, MAX_DISCARD_SEG, true);
    c.setUint32(CONFIG.discard_sector_alignment, 1, true);
    const qcow2 = disk.format === "qcow2";
    this.#writeZeroesLimits = qcow2 ? { sectors: QCOW2_MAX_WRITE_ZEROES_SECTORS, segments: 1 } : { sectors: MAX_DISCARD_SECTORS, segments: MAX_DISCARD_SEG };
    c.setUint32(CONFIG.max_write_zeroes_sectors, this.#writeZeroesLimits.sectors, true);
    c.setUint32(CONFIG.max_write_zeroes_seg, this.#writeZeroesLimits.segments, true);
    c.setUint8(CONFIG.write_zeroes_may_unmap, 1);
    this.refreshCapacity();
  }

  /** Capacity in 512-byte sectors (a partial last sector is not exposed). */
  get capacity(): number {
    return Math.floor(this.disk.size / SECTOR_SIZE);
  }

  /** Re-reads the image size into the capacity field (after a resize). */
  refreshCapacity(): void {
    this.#config.setBigUint64(CONFIG.capacity, BigInt(this.capacity), true);
  }

  readConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.byteLength; i++) data[i] = this.#config.getUint8(offset + i);
  }

  writeConfig(): void {} // writeback (CONFIG_WCE) is not offered: the cache mode is fixed

  /**
   * Serves the enabled queues, all on one loop. On a raw image, reads, writes and flushes from every
   * queue run in flight on one I/O pool and return to their queue's used ring as they finish; qcow2
   * (whose requests map through cluster tables) and the rare request types are served at once.
   */
  activate(ctx: ActivateContext): VirtioWorker {
    this.#writeThrough = !hasFeature(ctx.features, VIRTIO_BLK_F.FLUSH);
    const served = ctx.queues.flatMap((queue, i) => (queue === null ? [] : [{ queue, kick: ctx.kicks[i]! }]));
    // While a queue has requests in flight its driver need not notify: each batch of completions
    // drains the queue again (notification suppression while busy, as QEMU and vhost do).
    const drains = new Map<Queue, () => void>();
    const inFlight = served.length > 0 ? new InFlight(this, ctx, (queue) => drains.get(queue)?.()) : null;
    this.#inFlight = inFlight;
    for (const { queue, kick } of served) {
      const start = (chain: DescriptorChain): number | null => (inFlight ? inFlight.start(queue, chain) : this.handle(chain));
      const busy = (): boolean => inFlight?.busy(queue) ?? false;
      const drain = (): void => {
        drainQueue(queue, kick, ctx.interrupt, ctx.needsReset, start, busy);
        inFlight?.submitStaged(); // what this batch took goes to the pool together, merged where it can be
      };
      drains.set(queue, drain);
      ctx.loop.watch(kick.fd, () => {
        kick.read();
        drain();
      });
      drain();
    }
    return {
      stop: () => {
        for (const { kick } of served) ctx.loop.unwatch(kick.fd);
        inFlight?.close(); // waits for what is in flight: afterwards no thread touches guest memory
        if (this.#inFlight === inFlight) this.#inFlight = null;
      },
    };
  }

  /** Waits until no request is in flight (before a flush from the host, or a stop). */
  settle(): void {
    this.#inFlight?.settle();
  }

  /**
   * Whether requests at depth on files read through the page cache are first served on the loop as
   * far as the cache can serve them without blocking (InFlight.#readWhatIsCached and
   * #writeRunOnLoop). Tests of the pool on small cached files turn it off.
   */
  serveCachedOnLoop = true;
  /** Where batches of kernel requests are submitted (AIO_OFFLOAD; tests set it), from the next activation. */
  aioOffload: boolean = AIO_OFFLOAD;
  /** Whether every request goes to the pool's threads (AIO_THREADS_ONLY; tests set it), from the next activation. */
  aioThreadsOnly: boolean = AIO_THREADS_ONLY;
  /** A buffered write on the loop slower than this sends writes to the pool for a while (InFlight.#writeOnLoop). */
  slowWriteMs = SLOW_WRITE_MS;

  /** Pool requests made since activation, and the request parts they carried (merging makes fewer). */
  get poolRequests(): { readonly submitted: number; readonly parts: number } {
    return { submitted: this.#inFlight?.submissions ?? 0, parts: this.#inFlight?.partsSubmitted ?? 0 };
  }

  /** io_submit calls that started kernel requests since activation, and how many a pool thread made (aioOffload; for tests). */
  get kernelSubmissions(): { readonly calls: number; readonly offloaded: number } {
    return this.#inFlight?.kernelSubmissions ?? { calls: 0, offloaded: 0 };
  }

  /** Buffered writes made on the loop since activation (#writeRunOnLoop), and the request parts they carried. */
  get loopWrites(): { readonly calls: number; readonly parts: number } {
    return { calls: this.#inFlight?.loopWriteCalls ?? 0, parts: this.#inFlight?.loopWriteParts ?? 0 };
  }

  onConfigChanged(listener: (() => void) | null): void {
    this.#configListener = listener;
  }

  control(command: DeviceCommand): DeviceReply {
    switch (command.kind) {
      case "flush":
        this.settle();
        return this.disk.flush() ? { kind: "ok" } : { kind: "error", message: "fdatasync of the disk image failed" };
      case "disk_resize": {
        if (this.disk.readOnly) return { kind: "error", message: "the disk is read-only" };
        if (!Number.isSafeInteger(command.bytes) || command.bytes <= 0 || command.bytes % SECTOR_SIZE !== 0) {
          return { kind: "error", message: `size ${command.bytes} is not a positive multiple of ${SECTOR_SIZE} bytes` };
        }
        const problem = this.disk.resize(command.bytes);
        if (problem !== null) return { kind: "error", message: problem };
        this.refreshCapacity();
        this.#configListener?.();
        return { kind: "ok" };
      }
      default:
        return unsupported("block", command);
    }
  }

  /** Executes one request and returns the bytes written to the driver (data + status). */
  handle(chain: DescriptorChain): number {
    const request = this.parse(chain);
    return typeof request === "number" ? request : this.execute(request);
  }

  /** Each request's header is read into this one buffer and taken apart at once (parse is synchronous). */
  readonly #header = new Uint8Array(HEADER_SIZE);
  readonly #headerView = new DataView(this.#header.buffer);

  /** Reads a request's header; a number is the used length of a request already finished (malformed). */
  parse(chain: DescriptorChain): BlockRequest | number {
    const reader = new ChainReader(chain);
    // The status byte is the last writable byte; without one the request cannot even fail.
    if (chain.writableLength < 1) return 0;
    const writer = new ChainWriter(chain);
    if (!reader.read(this.#header)) return this.finish(chain, VIRTIO_BLK_S.IOERR);
    const h = this.#headerView;
    // le64 sector as two halves: no BigInt per request (a sector past 2^53 is out of range anyway).
    const sector = h.getUint32(8, true) + h.getUint32(12, true) * 2 ** 32;
    return { chain, reader, writer, type: h.getUint32(0, true), sector };
  }

  /** Serves a parsed request at once; returns the used length. */
  execute({ chain, reader, writer, type, sector }: BlockRequest): number {
    const dataIn = chain.writableLength - 1;
    switch (type) {
      case VIRTIO_BLK_T.IN: {
        const views = writer.take(dataIn)!;
        const ok = this.inRange(sector, dataIn) && this.disk.readInto(views, sector * SECTOR_SIZE);
        return this.finish(chain, ok ? VIRTIO_BLK_S.OK : VIRTIO_BLK_S.IOERR);
      }
      case VIRTIO_BLK_T.OUT: {
        const length = reader.remaining;
        const ok = !this.disk.readOnly && this.inRange(sector, length) && this.disk.writeFrom(reader.take(length)!, sector * SECTOR_SIZE) &&
          this.#durable();
        return this.finish(chain, ok ? VIRTIO_BLK_S.OK : VIRTIO_BLK_S.IOERR);
      }
      case VIRTIO_BLK_T.FLUSH:
        return this.finish(chain, this.disk.flush() ? VIRTIO_BLK_S.OK : VIRTIO_BLK_S.IOERR);
      case VIRTIO_BLK_T.GET_ID: {
        const n = Math.min(dataIn, VIRTIO_BLK_ID_BYTES);
        writer.write(this.#id.subarray(0, n));
        return this.finish(chain, VIRTIO_BLK_S.OK);
      }
      case VIRTIO_BLK_T.DISCARD:
      case VIRTIO_BLK_T.WRITE_ZEROES:
        if (this.disk.readOnly) return this.finish(chain, VIRTIO_BLK_S.IOERR);
        return this.finish(chain, this.#ranges(reader, type) && this.#durable() ? VIRTIO_BLK_S.OK : VIRTIO_BLK_S.IOERR);
      default:
        return this.finish(chain, VIRTIO_BLK_S.UNSUPP);
    }
  }

  /** Whether completed writes must be on stable storage (FLUSH not negotiated). */
  get writeThrough(): boolean {
    return this.#writeThrough;
  }

  /** After a write: on stable storage before it completes when the device is write-through. */
  #durable(): boolean {
    return !this.#writeThrough || this.disk.flush();
  }

  /** Whether [sector, sector + length) is whole sectors inside the disk. */
  inRange(sector: number, length: number): boolean {
    return length % SECTOR_SIZE === 0 && Number.isSafeInteger(sector) && sector + length / SECTOR_SIZE <= this.capacity;
  }

  #ranges(reader: ChainReader, type: number): boolean {
    const count = reader.remaining / SEGMENT_SIZE;
    const limits = type === VIRTIO_BLK_T.DISCARD ? { sectors: MAX_DISCARD_SECTORS, segments: MAX_DISCARD_SEG } : this.#writeZeroesLimits;
    if (!Number.isInteger(count) || count === 0 || count > limits.segments) return false;
    const segment = new Uint8Array(SEGMENT_SIZE);
    const v = new DataView(segment.buffer);
    for (let i = 0; i < count; i++) {
      reader.read(segment);
      const sector = Number(v.getBigUint64(0, true));
      const sectors = v.getUint32(8, true);
      const flags = v.getUint32(12, true);
      if (sectors > limits.sectors || !this.inRange(sector, sectors * SECTOR_SIZE)) return false;
      if (type === VIRTIO_BLK_T.DISCARD && flags !== 0) return false; // §5.2.6.2: unmap flag only for write-zeroes
      const ok = type === VIRTIO_BLK_T.DISCARD
        ? this.disk.discard(sector * SECTOR_SIZE, sectors * SECTOR_SIZE)
        : this.disk.writeZeroes(sector * SECTOR_SIZE, sectors * SECTOR_SIZE, (flags & WRITE_ZEROES_FLAG_UNMAP) !== 0);
      if (!ok) return false;
    }
    return true;
  }

  /**
   * Writes the status into the chain's last writable byte (parse made sure there is one); returns
   * the used length: the whole writable length once the data is in, only the status byte otherwise.
   */
  finish(chain: DescriptorChain, status: number): number {
    const writable = chain.writable;
    for (let i = writable.length - 1; i >= 0; i--) {
      const last = writable[i]!;
      if (last.byteLength === 0) continue;
      last[last.byteLength - 1] = status;
      break;
    }
    return status === VIRTIO_BLK_S.OK ? chain.writableLength : 1;
  }
}

/**
 * A request on the I/O pool: what completes it, the queue it came from, and how many of its parts
 * (one per host extent; a FLUSH is one) are still running.
 */
type Pending = {
  readonly request: BlockRequest;
  readonly queue: Queue;
  readonly kind: "read" | "write" | "flush";
  parts: number;
  failed: boolean;
  /**
   * The buffers the pool reads or writes, kept referenced until the last part is reaped: some are
   * private copies on the JavaScript heap (DiskImage.writable), which the pool's threads see only
   * as pointers, so nothing else would keep them from being collected meanwhile.
   */
  readonly buffers: readonly Uint8Array[] | null;
};
/** A FLUSH waiting for the writes in flight before it. */
type WaitingFlush = { readonly request: BlockRequest; readonly queue: Queue };
/** One pool request of a data request: some of its guest buffers (`bytes` in all), at a host offset of one file. */
type Part = { readonly target: PoolTarget; readonly views: readonly Uint8Array[]; readonly offset: number; readonly bytes: number };
/** A part taken from the rings in this batch, not yet moved (see `submitStaged` and `#loopRun`). */
type Staged = { readonly op: number; readonly part: Part; readonly tag: number };

/** Whether `next` continues `last`: the same file and operation, starting where `last` ends. */
function continues(last: Staged, next: Staged): boolean {
  return last.part.target.fd === next.part.target.fd && last.op === next.op && last.part.target.align === next.part.target.align &&
    last.part.offset + last.part.bytes === next.part.offset;
}

/** What is left of `part` after its first `moved` bytes (0 < moved < part.bytes) were moved. */
function restOf(part: Part, moved: number): Part {
  const cursor = new BufferCursor(part.views, part.bytes);
  cursor.take(moved);
  return { target: part.target, views: cursor.take(part.bytes - moved)!, offset: part.offset + moved, bytes: part.bytes - moved };
}

/**
 * A device's requests in flight, from all its queues, on one pool of C threads (c/aio.c): a read or
 * write is mapped to host extents (one for a raw image; the clusters of a qcow2 image), each
 * extent is a pool request, and the request returns to its queue's used ring when its last extent
 * finishes, in whatever order they do; a request alone is served at once on the loop, and so is
 * one the image cannot map without changing metadata (a qcow2 allocation), with nothing in flight.
 * The parts taken from the rings in one batch go to the pool together at its end, and parts that
 * continue one another in the same file (a sequential stream at depth) go as one request of up to
 * MERGE_MAX_BYTES: one thread wake-up and one preadv/pwritev instead of several, as QEMU merges.
 * A FLUSH covers every write completed before it (virtio 1.2 §5.2.6.2), so it starts only once the
 * writes in flight before it (on any queue) are done. Tags are a counter, not descriptor heads: a
 * hostile driver may post the same head twice, or on two queues.
 */
class InFlight {
  readonly #pool: AioPool;
  readonly #done = new EventFd();
  /** Parts served on the loop because the pool could not take them, reported with the pool's. */
  readonly #localCompletions: { tag: number; result: number }[] = [];
  /** By tag: each of a request's parts has its own tag, all naming the same Pending. */
  readonly #pending = new Map<number, Pending>();
  readonly #flushesWaiting: WaitingFlush[] = [];
  /** Parts of this batch, in the order they were taken, until `#submitStaged`. */
  readonly #staged: Staged[] = [];
  /** A merged pool request's tag -> the tags of the parts it carries (the first one is its own). */
  readonly #merged = new Map<number, number[]>();
  /**
   * Writes into the page cache that continue one another, taken in this batch and not written yet:
   * the loop writes them in one call (#writeRunOnLoop) when the next part does not continue them,
   * when the drain has emptied the ring (`busy`), before a read, FLUSH or other request is served, or
   * before anything waits.
   */
  readonly #loopRun: Staged[] = [];
  #loopRunBytes = 0;
  #loopRunSegments = 0;
  /** Until when buffered writes go to the pool after one was slow on the loop (#writeOnLoop). */
  #poolWritesUntil = 0;
  /** Files (fd × 2, + 1 for writes) whose file system cannot serve RWF_NOWAIT for that operation (asked once). */
  readonly #noWait = new Set<number>();
  /** Pool requests submitted, and parts they carried (how much merging saved; for tests). */
  submissions = 0;
  partsSubmitted = 0;
  /** Buffered write calls made on the loop, and parts they carried (for tests). */
  loopWriteCalls = 0;
  loopWriteParts = 0;
  /** Queues given used entries since their last interrupt decision. */
  readonly #used = new Set<Queue>();
  /** Requests in flight per queue. */
  readonly #perQueue = new Map<Queue, number>();
  #nextTag = 0;
  /** Requests (not parts) in flight, and writes among them. */
  #requests = 0;
  #writes = 0;
  /** Set once the device stops: finishing what is in flight takes nothing new from the rings. */
  #stopping = false;
  #closed = false;

  /** `drain(queue)` serves what the driver made available meanwhile, once a batch of `queue`'s requests finished. */
  constructor(readonly block: Block, readonly ctx: ActivateContext, readonly drain: (queue: Queue) => void) {
    this.#pool = new AioPool(MAX_IO_THREADS, QUEUE_SIZE * block.queueMaxSizes.length, this.#done.fd, ALONE_MAX_IO_THREADS);
    this.#pool.offload(block.aioOffload);
    this.#pool.threadsOnly(block.aioThreadsOnly);
    ctx.loop.watch(this.#done.fd, () => this.#completions());
  }

  /** The pool's io_submit calls, and those a pool thread made (for tests). */
  get kernelSubmissions(): { readonly calls: number; readonly offloaded: number } {
    return { calls: this.#pool.kernelCalls, offloaded: this.#pool.kernelOffloadedCalls };
  }

  /** Whether `queue` has requests in flight (and will be drained again when they finish). */
  busy(queue: Queue): boolean {
    this.#flushLoopRun(); // what finishes here returns to the ring before the drain decides
    return (this.#perQueue.get(queue) ?? 0) > 0;
  }

  #began(queue: Queue): void {
    this.#requests++;
    this.#perQueue.set(queue, (this.#perQueue.get(queue) ?? 0) + 1);
  }

  /** Starts `chain`'s request from `queue`: null while it is in flight, else the used length of one served at once. */
  start(queue: Queue, chain: DescriptorChain): number | null {
    const request = this.block.parse(chain);
    if (typeof request === "number") return request;
    // A request alone (nothing in flight, nothing more available: queue depth 1) is served here,
    // without the hop to a pool thread and back; only requests at depth gain from the pool.
    if (this.#requests === 0 && !queue.hasAvailable()) return this.block.execute(request);
    const { type, sector, reader, writer } = request;
    const disk = this.block.disk;
    switch (type) {
      case VIRTIO_BLK_T.IN: {
        const length = chain.writableLength - 1;
        if (!this.block.inRange(sector, length)) return this.block.finish(chain, VIRTIO_BLK_S.IOERR);
        return this.#transfer(queue, request, "read", writer.take(length)!, sector * SECTOR_SIZE, length);
      }
      case VIRTIO_BLK_T.OUT: {
        const length = reader.remaining;
        const views = this.block.inRange(sector, length) ? disk.writable(reader.take(length)!, sector * SECTOR_SIZE) : null;
        if (views === null) return this.block.finish(chain, VIRTIO_BLK_S.IOERR);
        return this.#transfer(queue, request, "write", views, sector * SECTOR_SIZE, length);
      }
      case VIRTIO_BLK_T.FLUSH:
        this.#flushLoopRun(); // the writes before it that the loop holds are written first
        if (this.#writes === 0) return this.#flush(queue, request);
        // A driver that keeps posting FLUSHes cannot grow the waiting list past its queues' worth:
        // past that, a FLUSH waits here for the writes before it.
        if (this.#flushesWaiting.length >= QUEUE_SIZE * this.block.queueMaxSizes.length) return this.#serveAlone(request);
        this.#flushesWaiting.push({ request, queue });
        return null;
      default:
        // get-id, discard, write-zeroes and unknown types: rare, served at once (after what the loop holds)
        this.#flushLoopRun();
        return this.block.execute(request);
    }
  }

  /** Puts a read or write on the pool, one part per host extent; or serves it at once when it cannot be. */
  #transfer(queue: Queue, request: BlockRequest, kind: "read" | "write", views: readonly Uint8Array[], offset: number, length: number): number | null {
    const extents = this.block.disk.extents(offset, length, kind === "write");
    if (extents === null) return this.#serveAlone(request);
    const parts: Part[] = [];
    const zeros: Uint8Array[] = [];
    const only = extents.length === 1 ? extents[0]! : null;
    if (only !== null && only.target !== null) {
      parts.push({ target: only.target, views, offset: only.hostOffset, bytes: length }); // a raw image: the buffers as they are
    } else {
      const cursor = new BufferCursor(views, length);
      for (const extent of extents) {
        const taken = cursor.take(extent.length) ?? []; // the extents add up to `length`
        if (extent.target === null) zeros.push(...taken);
        else parts.push({ target: extent.target, views: taken, offset: extent.hostOffset, bytes: extent.length });
      }
    }
    // O_DIRECT on a device whose blocks are larger than the request's alignment: a partial block is
    // read, modified and written back, which must not race with other requests on that block.
    const misaligned = parts.some(({ target: { align }, bytes, offset: at }) => align > 1 && (at % align !== 0 || bytes % align !== 0));
    // The pool holds a queue's worth of parts per queue: a request of more parts than there is room
    // for now (a scattered qcow2 read at depth) is served here.
    if (misaligned || this.#pending.size + parts.length > this.#pool.capacity) return this.#serveAlone(request);
    for (const z of zeros) z.fill(0);
    if (this.block.serveCachedOnLoop && kind === "read") {
      this.#flushLoopRun(); // writes taken before it are written first
      this.#readWhatIsCached(parts);
    }
    if (parts.length === 0) return this.block.finish(request.chain, VIRTIO_BLK_S.OK);
    const op = kind === "read" ? AIO_OP.READ : AIO_OP.WRITE | (this.block.writeThrough ? AIO_SYNC : 0);
    // Writes into the page cache, not write-through ones (a pool thread's fdatasync makes those durable).
    const onLoop = this.block.serveCachedOnLoop && kind === "write" && !this.block.writeThrough;
    this.#began(queue);
    if (kind === "write") this.#writes++;
    const pending: Pending = { request, queue, kind, parts: parts.length, failed: false, buffers: views };
    for (const part of parts) {
      const tag = this.#nextTag;
      this.#nextTag = (tag + 1) >>> 0;
      this.#pending.set(tag, pending);
      if (onLoop && part.target.align === 1) this.#addToLoopRun({ op, part, tag });
      else this.#staged.push({ op, part, tag });
    }
    return null;
  }

  /**
   * Reads, here on the loop, what of `parts` (of files read through the page cache) the cache can
   * serve without blocking (RWF_NOWAIT), and leaves in `parts` only what is left for the pool. A
   * cached 4 KiB read costs a few microseconds here, and a round trip through a pool thread costs two
   * thread wake-ups: on a host where waking a thread on another CPU is slow, several times the read.
   * Each read is moved as it is taken, so its data returns to the guest at once (a run of sequential
   * reads moved in one call measured no faster: the copy is the time).
   */
  #readWhatIsCached(parts: Part[]): void {
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i]!;
      const { fd, align } = part.target;
      if (align !== 1 || this.#noWait.has(fd * 2)) continue;
      const moved = diskTry(fd, part.views, part.offset, false);
      if (moved === -ERRNO.EOPNOTSUPP) this.#noWait.add(fd * 2);
      if (moved <= 0) continue;
      if (moved === part.bytes) {
        parts.splice(i--, 1);
        continue;
      }
      parts[i] = restOf(part, moved); // part of it was cached: the pool reads the rest
    }
  }

  /**
   * Writes, here on the loop, what of `run` (writes that continue one another, into the page cache)
   * the cache takes without blocking, in one call; the parts that call covered complete at once,
   * and what is left, from the first byte not written, goes to the pool. Buffered writes pay more per
   * call than reads (the file system's locks and block mapping): with one call for a run, 64 KiB
   * writes at depth 32 took 28.2-30.8k and 30.7-33.0k TSC cycles a request in two runs of bench 8's
   * mode, against 33.6-37.6k and 32.9-35.3k one by one (QEMU 26.4-28.0k and 30.9-36.8k in the same
   * alternating rounds); 4 KiB random writes, which never continue one another, wait one request
   * longer for theirs (17.3-19.0k against 15.0-16.9k; QEMU 29-43k). A file system that cannot say
   * whether a write would block (EOPNOTSUPP; ext4 says so for buffered writes) is not asked again
   * for that file: its writes are then written here unless a recent one was slow (#writeOnLoop).
   */
  #writeRunOnLoop(run: readonly Staged[]): readonly Staged[] {
    const first = run[0]!;
    const { fd } = first.part.target;
    const views = run.length === 1 ? first.part.views : run.flatMap((s) => s.part.views);
    let moved = this.#noWait.has(fd * 2 + 1) ? -ERRNO.EOPNOTSUPP : diskTry(fd, views, first.part.offset, true);
    if (moved === -ERRNO.EOPNOTSUPP) {
      this.#noWait.add(fd * 2 + 1);
      if (this.#writeOnLoop(fd, views, first.part.offset)) moved = run.reduce((n, s) => n + s.part.bytes, 0);
    }
    if (moved <= 0) return run;
    this.loopWriteCalls++;
    let i = 0;
    for (; i < run.length && moved >= run[i]!.part.bytes; i++) {
      moved -= run[i]!.part.bytes;
      this.loopWriteParts++;
      this.#partDone(run[i]!.tag, 0);
    }
    if (i === run.length || moved === 0) return run.slice(i);
    // The first part left was partly written: the pool writes the rest of it.
    const { op, part, tag } = run[i]!;
    return [{ op, part: restOf(part, moved), tag }, ...run.slice(i + 1)];
  }

  /** Adds `next` to the run the loop moves, moving the run first when `next` does not continue it. */
  #addToLoopRun(next: Staged): void {
    const last = this.#loopRun.at(-1);
    if (last !== undefined && !(continues(last, next) && this.#loopRunBytes + next.part.bytes <= MERGE_MAX_BYTES &&
      this.#loopRunSegments + next.part.views.length <= AIO_MAX_SEGMENTS)) this.#flushLoopRun();
    this.#loopRun.push(next);
    this.#loopRunBytes += next.part.bytes;
    this.#loopRunSegments += next.part.views.length;
  }

  /** Moves the loop's run (#writeRunOnLoop); what the cache did not take joins the batch for the pool. */
  #flushLoopRun(): void {
    if (this.#loopRun.length === 0) return;
    const run = this.#loopRun.splice(0);
    this.#loopRunBytes = 0;
    this.#loopRunSegments = 0;
    for (const left of this.#writeRunOnLoop(run)) this.#staged.push(left);
  }

  /**
   * A buffered write to a file system that cannot say whether it would block (ext4 answers
   * EOPNOTSUPP to RWF_NOWAIT writes): done here on the loop, as a write into the page cache usually
   * is quick, unless a recent one was not. A write the kernel throttles (too much dirty data) can take
   * hundreds of milliseconds; once one takes longer than SLOW_WRITE_MS, writes go to the pool for
   * POOL_WRITES_MS, so the loop stalls for at most one slow write, well inside the device's command
   * deadlines. Returns whether it was written (a failed one is left to the pool, which reports it).
   */
  #writeOnLoop(fd: number, views: readonly Uint8Array[], offset: number): boolean {
    const now = performance.now();
    if (now < this.#poolWritesUntil) return false;
    const done = diskTransfer(fd, views, offset, 1, true) === 0;
    if (performance.now() - now > this.block.slowWriteMs) this.#poolWritesUntil = performance.now() + POOL_WRITES_MS;
    return done;
  }

  /**
   * Puts the batch's parts on the pool (called once a drain has taken what its rings held, and
   * before anything waits for the pool), after the loop's run (#flushLoopRun), merging runs of parts
   * that continue one another within MERGE_MAX_BYTES and the pool's segment limit. A part whose pool
   * request cannot start (no thread) is served here, on the loop.
   */
  submitStaged(): void {
    if (this.#closed) return;
    this.#flushLoopRun();
    if (this.#staged.length === 0) return;
    const staged = this.#staged.splice(0);
    // Stable order by file, operation and offset; runs are then neighbours.
    const order = staged.map((_, i) => i).sort((a, b) => {
      const x = staged[a]!;
      const y = staged[b]!;
      return x.part.target.fd - y.part.target.fd || x.op - y.op || x.part.offset - y.part.offset || a - b;
    });
    let run: Staged[] = [];
    let segments = 0;
    let bytes = 0;
    const submitRun = (): void => {
      if (run.length > 0) this.#submit(run);
      run = [];
      segments = 0;
      bytes = 0;
    };
    // One batch: the requests the kernel's asynchronous I/O takes start with one system call.
    this.#pool.batch(() => {
      for (const i of order) {
        const next = staged[i]!;
        const last = run.at(-1);
        const fits = bytes + next.part.bytes <= (next.part.target.align > 1 ? MERGE_MAX_DIRECT_BYTES : MERGE_MAX_BYTES) &&
          segments + next.part.views.length <= AIO_MAX_SEGMENTS;
        if (last === undefined || !continues(last, next) || !fits) submitRun();
        run.push(next);
        segments += next.part.views.length;
        bytes += next.part.bytes;
      }
      submitRun();
    });
  }

  /** Submits `run` (parts that continue one another) as one pool request, or serves it here. */
  #submit(run: readonly Staged[]): void {
    const first = run[0]!;
    const views = run.length === 1 ? first.part.views : run.flatMap((s) => s.part.views);
    const result = this.#pool.submit(first.op, first.part.target.fd, views, first.part.offset, first.tag, first.part.target.align);
    if (result === 0) {
      if (run.length > 1) this.#merged.set(first.tag, run.map((s) => s.tag));
      this.submissions++;
      this.partsSubmitted += run.length;
      return;
    }
    // No pool thread could take it: move the data here and complete the parts as the pool would.
    for (const s of run) {
      const write = (s.op & 0xff) === AIO_OP.WRITE;
      let r = diskTransfer(s.part.target.fd, s.part.views, s.part.offset, s.part.target.align, write);
      if (r === 0 && write && (s.op & AIO_SYNC) !== 0) r = sys.fdatasync(s.part.target.fd);
      this.#localCompletions.push({ tag: s.tag, result: r });
    }
    this.#done.signal();
  }

  /** Puts a FLUSH (fdatasync of the image's file) on the pool, or serves it at once. */
  #flush(queue: Queue, request: BlockRequest): number | null {
    const tag = this.#nextTag;
    if (this.#pool.submitFlush(this.block.disk.poolTarget.fd, tag) !== 0) return this.#serveAlone(request);
    this.#nextTag = (tag + 1) >>> 0;
    this.#pending.set(tag, { request, queue, kind: "flush", parts: 1, failed: false, buffers: null });
    this.#began(queue);
    return null;
  }

  /** Serves a request at once, on this thread, with nothing in flight beside it. */
  #serveAlone(request: BlockRequest): number {
    this.submitStaged();
    this.#pool.waitIdle();
    // From the chain's start again: mapping it for the pool may have taken its data buffers.
    const fresh = this.block.parse(request.chain);
    return typeof fresh === "number" ? fresh : this.block.execute(fresh);
  }

  /** Returns finished requests to the used ring, starts FLUSHes that were waiting, interrupts once per queue. */
  #completions(): void {
    this.#done.read();
    const reaped = [...this.#pool.reap(), ...this.#localCompletions.splice(0)];
    for (const { tag: poolTag, result } of reaped) {
      const tags = this.#merged.get(poolTag) ?? [poolTag];
      this.#merged.delete(poolTag);
      for (const tag of tags) this.#partDone(tag, result);
    }
    this.#afterCompletions();
  }

  /** One part finished with `result` (0 or -errno): its request completes with its last part. */
  #partDone(tag: number, result: number): void {
    const pending = this.#pending.get(tag);
    if (pending === undefined) return;
    this.#pending.delete(tag);
    if (result !== 0) {
      log.debug(`${this.block.debugLabel}: ${pending.kind} failed: errno ${-result}`);
      pending.failed = true;
    }
    if (--pending.parts > 0) return;
    this.#requests--;
    this.#perQueue.set(pending.queue, this.#perQueue.get(pending.queue)! - 1);
    if (pending.kind === "write") this.#writes--;
    const { chain } = pending.request;
    pending.queue.addUsed(chain.head, this.block.finish(chain, pending.failed ? VIRTIO_BLK_S.IOERR : VIRTIO_BLK_S.OK));
    this.#used.add(pending.queue);
  }

  /** Starts FLUSHes that waited, interrupts once per queue, and drains the queues that got used entries. */
  #afterCompletions(): void {
    if (this.#writes === 0) {
      for (const { request, queue } of this.#flushesWaiting.splice(0)) {
        const used = this.#flush(queue, request);
        if (used === null) continue;
        queue.addUsed(request.chain.head, used);
        this.#used.add(queue);
      }
    }
    for (const queue of this.#used) if (queue.shouldNotify()) this.ctx.interrupt.signalUsedQueue(queue.index);
    const finished = [...this.#used];
    this.#used.clear();
    // Their drivers were told not to notify while these were in flight: look at their rings now. A
    // drain can stop the device (a ring the driver broke needs a reset): then no other ring is served.
    for (const queue of finished) {
      if (this.#stopping || this.#closed) return;
      this.drain(queue);
    }
  }

  /** Blocks until nothing is in flight, then returns what finished to the used ring. */
  settle(): void {
    if (this.#closed) return;
    this.submitStaged();
    this.#pool.waitIdle();
    this.#completions();
  }

  /**
   * Finishes what is in flight and stops the pool; nothing more reaches the used ring afterwards.
   * What was in flight is returned first (FLUSHes that waited for it run too): a queue stopped
   * while others go on (a vhost-user GET_VRING_BASE) must not leave requests on the others taken
   * and never returned, and a stopped ring's base then counts only requests that are done.
   */
  close(): void {
    if (this.#closed) return;
    this.#stopping = true;
    this.settle();
    this.settle(); // the FLUSHes the first settle started
    this.#closed = true;
    this.ctx.loop.unwatch(this.#done.fd);
    this.#pool.close();
    this.#done.close();
    this.#pending.clear();
    this.#merged.clear();
    this.#flushesWaiting.length = 0;
  }
}
