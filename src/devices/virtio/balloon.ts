// balloon.ts - virtio-balloon (virtio 1.2 §5.5): the guest gives pages back to the host, and reports memory stats.
import type { EventFd } from "../../base/event_fd.ts";
import { type GuestMemory, guestAddress } from "../../memory/mod.ts";
import { ChainReader } from "./descriptor_chain.ts";
import { type ControllableDevice, type DeviceCommand, type DeviceReply, unsupported } from "./device_control.ts";
import { drainQueue } from "./drain.ts";
import type { Queue } from "./queue.ts";
import { type ActivateContext, hasFeature, TSVM_RING_FEATURES, VIRTIO_ID, type VirtioDevice, type VirtioWorker } from "./virtio_device.ts";

const QUEUE_SIZE = 128;
const INFLATEQ = 0;
const DEFLATEQ = 1;
const STATSQ = 2;
/** Feature bits (§5.5.3). */
export const VIRTIO_BALLOON_F = { MUST_TELL_HOST: 0n, STATS_VQ: 1n, DEFLATE_ON_OOM: 2n } as const;
/** The balloon works in 4 KiB pages whatever the guest's page size. */
export const VIRTIO_BALLOON_PFN_SHIFT = 12;
const PAGE_SIZE = 1 << VIRTIO_BALLOON_PFN_SHIFT;
/** struct virtio_balloon_config: le32 num_pages, le32 actual. */
const CONFIG_SIZE = 8;
const CONFIG_ACTUAL = 4;
/** struct virtio_balloon_stat: le16 tag, le64 val (packed, 10 bytes). */
const STAT_SIZE = 10;
export const VIRTIO_BALLOON_S_NAMES = [
  "swap_in", "swap_out", "major_faults", "minor_faults", "free_memory", "total_memory", "available_memory",
  "disk_caches", "hugetlb_allocations", "hugetlb_failures",
] as const;

/** Gives a guest page's backing back to the host; returns false for addresses that are not RAM. */
export type PageReleaser = (guestAddress: number, length: number) => boolean;

/** Returns a releaser that punches holes in the files behind guest memory (the pages read as zeros afterwards). */
export function memfdReleaser(memory: GuestMemory, punchHole: (fd: number, offset: number, length: number) => boolean): PageReleaser {
  return (address, length) => {
    if (!Number.isSafeInteger(address) || address < 0 || address >= 2 ** 52) return false;
    const at = guestAddress(address);
    const region = memory.regionOf(at);
    if (region === null || region.fd < 0 || !memory.isValidRange(at, length)) return false;
    return punchHole(region.fd, region.fdOffset + (at - region.guestBase), length);
  };
}

/** The balloon; `setTarget` and `requestStats` are the VMM's side (the control socket drives them). */
export class Balloon implements VirtioDevice, ControllableDevice {
  readonly debugLabel = "balloon";
  readonly deviceType = VIRTIO_ID.BALLOON;
  readonly queueMaxSizes = [QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE];
  /**
   * A buffer of page numbers holds at most 1024 of them (Linux sends 256; Windows' driver 512): each
   * is a system call, and one chain of indirect descriptors naming the same page of numbers again
   * and again could otherwise ask for millions. A longer chain is returned unused.
   */
  readonly maxChainBytes = 1024 * 4;
  readonly features = TSVM_RING_FEATURES | (1n << VIRTIO_BALLOON_F.STATS_VQ) | (1n << VIRTIO_BALLOON_F.DEFLATE_ON_OOM);
  readonly configSize = CONFIG_SIZE;
  #targetPages = 0;
  #actualPages = 0;
  #inflatedPages = 0;
  #stats: Record<string, number> | null = null;
  #statsChain: { queue: Queue; head: number } | null = null;
  #configListener: (() => void) | null = null;
  #returnStatsBuffer: (() => void) | null = null;

  /** `punchHole(fd, offset, length)` gives back the pages of a range of the file behind guest memory. */
  constructor(readonly punchHole: (fd: number, offset: number, length: number) => boolean) {}

  /** The pages the host asked the guest to give up. */
  get targetPages(): number {
    return this.#targetPages;
  }

  /** The pages the guest says it has given up (its `actual` field). */
  get actualPages(): number {
    return this.#actualPages;
  }

  /** Pages released through the inflate queue since start (may exceed actual when the guest deflated). */
  get inflatedPages(): number {
    return this.#inflatedPages;
  }

  /** The last statistics the guest reported, by name, or null before the first report. */
  get stats(): Readonly<Record<string, number>> | null {
    return this.#stats;
  }

  /** Asks the guest to hold `pages` 4 KiB pages in the balloon (a configuration change). */
  setTarget(pages: number): void {
    this.#targetPages = Math.max(0, Math.min(0xffffffff, Math.floor(pages)));
    this.#configListener?.();
  }

  onConfigChanged(listener: (() => void) | null): void {
    this.#configListener = listener;
  }

  /** Asks the guest for fresh statistics by returning the buffer it left in the stats queue. */
  requestStats(): void {
    this.#returnStatsBuffer?.();
  }

  control(command: DeviceCommand): DeviceReply {
    switch (command.kind) {
      case "balloon_target":
        this.setTarget(command.pages);
        return { kind: "ok" };
      case "balloon_stats": {
        const stats = { target: this.#targetPages, actual: this.#actualPages, stats: this.#stats };
        this.requestStats(); // the next request sees fresher figures
        return { kind: "balloon_stats", stats };
      }
      default:
        return unsupported("balloon", command);
    }
  }

  readConfig(offset: number, data: Uint8Array): void {
    const config = new DataView(new ArrayBuffer(CONFIG_SIZE));
    config.setUint32(0, this.#targetPages, true);
    config.setUint32(CONFIG_ACTUAL, this.#actualPages, true);
    for (let i = 0; i < data.byteLength; i++) data[i] = config.getUint8(offset + i);
  }

  writeConfig(offset: number, data: Uint8Array): void {
    if (offset !== CONFIG_ACTUAL || data.byteLength !== 4) return; // only `actual` is the driver's
    this.#actualPages = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
  }

  activate(ctx: ActivateContext): VirtioWorker {
    const [inflate, deflate, statsQueue] = [ctx.queues[INFLATEQ], ctx.queues[DEFLATEQ], ctx.queues[STATSQ]];
    const release = memfdReleaser(ctx.memory, this.punchHole);
    const kicks = ctx.kicks;
    const pfns = (queue: Queue | null | undefined, kick: EventFd, onPage: (address: number) => void): void => {
      if (!queue) return;
      drainQueue(queue, kick, ctx.interrupt, ctx.needsReset, (chain) => {
        const reader = new ChainReader(chain);
        const entry = new Uint8Array(4);
        const v = new DataView(entry.buffer);
        let last = -1;
        while (reader.read(entry)) {
          const pfn = v.getUint32(0, true);
          if (pfn !== last) onPage(pfn * PAGE_SIZE); // a page named twice in a row is released once
          last = pfn;
        }
        return 0;
      });
    };
    const onInflate = (): void => {
      kicks[INFLATEQ]!.read();
      pfns(inflate, kicks[INFLATEQ]!, (address) => {
        if (release(address, PAGE_SIZE)) this.#inflatedPages++;
      });
    };
    const onDeflate = (): void => {
      kicks[DEFLATEQ]!.read();
      pfns(deflate, kicks[DEFLATEQ]!, () => {}); // pages come back on their own when the guest touches them
    };
    const onStats = (): void => {
      kicks[STATSQ]!.read();
      if (!statsQueue || this.#statsChain) return;
      const r = statsQueue.pop();
      if (r === null) return;
      if (r.kind === "fatal") return ctx.needsReset(r.reason);
      if (r.kind === "bad_chain") {
        statsQueue.addUsed(r.head, 0);
        return;
      }
      const reader = new ChainReader(r.chain);
      const stat = new Uint8Array(STAT_SIZE);
      const v = new DataView(stat.buffer);
      const stats: Record<string, number> = {};
      while (reader.read(stat)) {
        const name = VIRTIO_BALLOON_S_NAMES[v.getUint16(0, true)];
        if (name) stats[name] = Number(v.getBigUint64(2, true));
      }
      this.#stats = stats;
      this.#statsChain = { queue: statsQueue, head: r.chain.head }; // held until the host wants more
    };
    this.#returnStatsBuffer = () => {
      const held = this.#statsChain;
      if (!held) return;
      this.#statsChain = null;
      held.queue.addUsed(held.head, 0);
      if (held.queue.shouldNotify()) ctx.interrupt.signalUsedQueue(held.queue.index);
    };
    const watched: [number, () => void][] = [[kicks[INFLATEQ]!.fd, onInflate], [kicks[DEFLATEQ]!.fd, onDeflate]];
    if (hasFeature(ctx.features, VIRTIO_BALLOON_F.STATS_VQ)) watched.push([kicks[STATSQ]!.fd, onStats]);
    for (const [fd, handler] of watched) ctx.loop.watch(fd, handler);
    for (const [, handler] of watched) handler();
    return {
      stop: () => {
        for (const [fd] of watched) ctx.loop.unwatch(fd);
        this.#returnStatsBuffer = null;
        this.#statsChain = null;
      },
    };
  }
}
