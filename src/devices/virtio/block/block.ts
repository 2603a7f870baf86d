// block.ts - virtio-blk (virtio 1.2 §5.2) over a raw image: read, write, flush, get-id, discard, write-zeroes.
import { ChainReader, ChainWriter, type DescriptorChain } from "../descriptor_chain.ts";
import { type ControllableDevice, type DeviceCommand, type DeviceReply, unsupported } from "../device_control.ts";
import { drainQueue } from "../drain.ts";
import { type ActivateContext, hasFeature, TSVM_RING_FEATURES, VIRTIO_ID, type VirtioDevice, type VirtioWorker } from "../virtio_device.ts";
import type { DiskImage } from "../../../disk/disk_file.ts";

export const SECTOR_SIZE = 512;
const SECTOR_SHIFT = 9;
const QUEUE_SIZE = 256;
/** Feature bits (§5.2.3). */
export const VIRTIO_BLK_F = {
  SIZE_MAX: 1n, SEG_MAX: 2n, RO: 5n, BLK_SIZE: 6n, FLUSH: 9n, DISCARD: 13n, WRITE_ZEROES: 14n,
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
/** struct virtio_blk_config fields we fill (§5.2.4). */
const CONFIG = {
  capacity: 0, size_max: 8, seg_max: 12, blk_size: 20, max_discard_sectors: 36, max_discard_seg: 40,
  discard_sector_alignment: 44, max_write_zeroes_sectors: 48, max_write_zeroes_seg: 52, write_zeroes_may_unmap: 56,
} as const;
const CONFIG_SIZE = 60;

/** The block device: one request queue over one disk file. */
export class Block implements VirtioDevice, ControllableDevice {
  readonly debugLabel: string;
  readonly deviceType = VIRTIO_ID.BLOCK;
  readonly queueMaxSizes = [QUEUE_SIZE];
  readonly features: bigint;
  readonly configSize = CONFIG_SIZE;
  readonly #config = new DataView(new ArrayBuffer(CONFIG_SIZE));
  readonly #id: Uint8Array;
  /** Told when a resize changed the capacity. */
  #configListener: (() => void) | null = null;
  /**
   * Whether a completed write must already be on stable storage: so unless the driver accepted
   * VIRTIO_BLK_F_FLUSH (without it the driver has no way to ask for durability, and virtio 1.2
   * §5.2.6.2 makes the device write-through). Until a driver says, assume the safe case.
   */
  #writeThrough = true;

  constructor(readonly disk: DiskImage, id: string, label = "block") {
    this.debugLabel = label;
    const bit = (b: bigint): bigint => 1n << b;
    this.features = TSVM_RING_FEATURES | bit(VIRTIO_BLK_F.SIZE_MAX) | bit(VIRTIO_BLK_F.SEG_MAX) | bit(VIRTIO_BLK_F.BLK_SIZE) | bit(VIRTIO_BLK_F.FLUSH) |
      (disk.readOnly ? bit(VIRTIO_BLK_F.RO) : bit(VIRTIO_BLK_F.DISCARD) | bit(VIRTIO_BLK_F.WRITE_ZEROES));
    this.#id = new Uint8Array(VIRTIO_BLK_ID_BYTES);
    this.#id.set(new TextEncoder().encode(id).subarray(0, VIRTIO_BLK_ID_BYTES));
    const c = this.#config;
    c.setUint32(CONFIG.size_max, SIZE_MAX, true);
    c.setUint32(CONFIG.seg_max, SEG_MAX, true);
    c.setUint32(CONFIG.blk_size, SECTOR_SIZE, true);
    c.setUint32(CONFIG.max_discard_sectors, MAX_DISCARD_SECTORS, true);
    c.setUint32(CONFIG.max_discard_seg, MAX_DISCARD_SEG, true);
    c.setUint32(CONFIG.discard_sector_alignment, 1, true);
    c.setUint32(CONFIG.max_write_zeroes_sectors, MAX_DISCARD_SECTORS, true);
    c.setUint32(CONFIG.max_write_zeroes_seg, MAX_DISCARD_SEG, true);
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

  activate(ctx: ActivateContext): VirtioWorker {
    const queue = ctx.queues[0];
    const kick = ctx.kicks[0]!;
    const serve = (): void => {
      kick.read();
      if (queue) drainQueue(queue, kick, ctx.interrupt, ctx.needsReset, (chain) => this.handle(chain));
    };
    this.#writeThrough = !hasFeature(ctx.features, VIRTIO_BLK_F.FLUSH);
    ctx.loop.watch(kick.fd, serve);
    serve();
    return { stop: () => ctx.loop.unwatch(kick.fd) };
  }

  onConfigChanged(listener: (() => void) | null): void {
    this.#configListener = listener;
  }

  control(command: DeviceCommand): DeviceReply {
    switch (command.kind) {
      case "flush":
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
    const reader = new ChainReader(chain);
    const header = new Uint8Array(HEADER_SIZE);
    // The status byte is the last writable byte; without one the request cannot even fail.
    if (chain.writableLength < 1) return 0;
    const writer = new ChainWriter(chain);
    if (!reader.read(header)) return this.#finish(writer, chain, VIRTIO_BLK_S.IOERR);
    const h = new DataView(header.buffer);
    const type = h.getUint32(0, true);
    const sector = Number(h.getBigUint64(8, true));
    const dataIn = chain.writableLength - 1;
    switch (type) {
      case VIRTIO_BLK_T.IN: {
        const views = writer.take(dataIn)!;
        const ok = this.#inRange(sector, dataIn) && this.disk.readInto(views, sector * SECTOR_SIZE);
        return this.#finish(writer, chain, ok ? VIRTIO_BLK_S.OK : VIRTIO_BLK_S.IOERR);
      }
      case VIRTIO_BLK_T.OUT: {
        const length = reader.remaining;
        const ok = !this.disk.readOnly && this.#inRange(sector, length) && this.disk.writeFrom(reader.take(length)!, sector * SECTOR_SIZE) &&
          this.#durable();
        return this.#finish(writer, chain, ok ? VIRTIO_BLK_S.OK : VIRTIO_BLK_S.IOERR);
      }
      case VIRTIO_BLK_T.FLUSH:
        return this.#finish(writer, chain, this.disk.flush() ? VIRTIO_BLK_S.OK : VIRTIO_BLK_S.IOERR);
      case VIRTIO_BLK_T.GET_ID: {
        const n = Math.min(dataIn, VIRTIO_BLK_ID_BYTES);
        writer.write(this.#id.subarray(0, n));
        return this.#finish(writer, chain, VIRTIO_BLK_S.OK);
      }
      case VIRTIO_BLK_T.DISCARD:
      case VIRTIO_BLK_T.WRITE_ZEROES:
        if (this.disk.readOnly) return this.#finish(writer, chain, VIRTIO_BLK_S.IOERR);
        return this.#finish(writer, chain, this.#ranges(reader, type) && this.#durable() ? VIRTIO_BLK_S.OK : VIRTIO_BLK_S.IOERR);
      default:
        return this.#finish(writer, chain, VIRTIO_BLK_S.UNSUPP);
    }
  }

  /** After a write: on stable storage before it completes when the device is write-through. */
  #durable(): boolean {
    return !this.#writeThrough || this.disk.flush();
  }

  /** Whether [sector, sector + length) is whole sectors inside the disk. */
  #inRange(sector: number, length: number): boolean {
    return length % SECTOR_SIZE === 0 && Number.isSafeInteger(sector) && sector + length / SECTOR_SIZE <= this.capacity;
  }

  #ranges(reader: ChainReader, type: number): boolean {
    const count = reader.remaining / SEGMENT_SIZE;
    if (!Number.isInteger(count) || count === 0 || count > MAX_DISCARD_SEG) return false;
    const segment = new Uint8Array(SEGMENT_SIZE);
    const v = new DataView(segment.buffer);
    for (let i = 0; i < count; i++) {
      reader.read(segment);
      const sector = Number(v.getBigUint64(0, true));
      const sectors = v.getUint32(8, true);
      const flags = v.getUint32(12, true);
      if (sectors > MAX_DISCARD_SECTORS || !this.#inRange(sector, sectors * SECTOR_SIZE)) return false;
      if (type === VIRTIO_BLK_T.DISCARD && flags !== 0) return false; // §5.2.6.2: unmap flag only for write-zeroes
      const ok = type === VIRTIO_BLK_T.DISCARD
        ? this.disk.discard(sector * SECTOR_SIZE, sectors * SECTOR_SIZE)
        : this.disk.writeZeroes(sector * SECTOR_SIZE, sectors * SECTOR_SIZE, (flags & WRITE_ZEROES_FLAG_UNMAP) !== 0);
      if (!ok) return false;
    }
    return true;
  }

  /** Writes the status into the last writable byte; returns the used length. */
  #finish(writer: ChainWriter, chain: DescriptorChain, status: number): number {
    const skip = chain.writableLength - 1 - writer.written;
    if (skip > 0) writer.take(skip);
    writer.write(Uint8Array.of(status));
    return status === VIRTIO_BLK_S.OK ? writer.written : 1;
  }
}
