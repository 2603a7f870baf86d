// net.ts - virtio-net (virtio 1.2 §5.1) on a TAP device: one RX and one TX queue, mergeable RX buffers,
// checksum and TSO offloads passed through to the tap.
import { ChainReader, ChainWriter, type DescriptorChain } from "../descriptor_chain.ts";
import { drainQueue } from "../drain.ts";
import { type FrameDevice, TUN_F } from "../../../base/tap.ts";
import { type ActivateContext, hasFeature, TSVM_RING_FEATURES, VIRTIO_ID, type VirtioDevice, type VirtioWorker } from "../virtio_device.ts";

const QUEUE_SIZE = 256;
const RXQ = 0;
const TXQ = 1;
/** Feature bits (§5.1.3). */
export const VIRTIO_NET_F = {
  CSUM: 0n, GUEST_CSUM: 1n, MAC: 5n, GUEST_TSO4: 7n, GUEST_TSO6: 8n, GUEST_ECN: 9n, GUEST_UFO: 10n,
  HOST_TSO4: 11n, HOST_TSO6: 12n, HOST_ECN: 13n, HOST_UFO: 14n, MRG_RXBUF: 15n, STATUS: 16n,
} as const;
/** struct virtio_net_hdr_v1 (12 bytes with num_buffers, which virtio 1.x always has). */
export const VNET_HDR_SIZE = 12;
const NUM_BUFFERS_OFFSET = 10;
/** struct virtio_net_config: mac[6], le16 status. */
const CONFIG_SIZE = 8;
const VIRTIO_NET_S_LINK_UP = 1;
/** A frame with TSO can be 64 KiB plus headers. */
const MAX_FRAME = 65536 + VNET_HDR_SIZE + 14;

/** Parses "52:54:00:12:34:56"; returns null when malformed. */
export function parseMac(text: string): Uint8Array | null {
  const parts = text.split(":");
  if (parts.length !== 6 || !parts.every((p) => /^[0-9a-fA-F]{2}$/.test(p))) return null;
  return Uint8Array.from(parts.map((p) => parseInt(p, 16)));
}

/** A random locally administered unicast MAC. */
export function randomMac(): Uint8Array {
  const mac = crypto.getRandomValues(new Uint8Array(6));
  mac[0] = (mac[0]! & 0xfe) | 0x02;
  return mac;
}

/** The network device. */
export class Net implements VirtioDevice {
  readonly debugLabel = "net";
  readonly deviceType = VIRTIO_ID.NET;
  readonly queueMaxSizes = [QUEUE_SIZE, QUEUE_SIZE];
  readonly features: bigint;
  readonly configSize = CONFIG_SIZE;
  readonly #config = new Uint8Array(CONFIG_SIZE);

  constructor(readonly tap: FrameDevice, readonly mac: Uint8Array) {
    const f = VIRTIO_NET_F;
    this.features = [f.CSUM, f.GUEST_CSUM, f.MAC, f.GUEST_TSO4, f.GUEST_TSO6, f.GUEST_ECN, f.GUEST_UFO, f.HOST_TSO4, f.HOST_TSO6, f.HOST_ECN, f.HOST_UFO, f.MRG_RXBUF, f.STATUS]
      .reduce<bigint>((acc, bit) => acc | (1n << bit), TSVM_RING_FEATURES);
    this.#config.set(mac);
    new DataView(this.#config.buffer).setUint16(6, VIRTIO_NET_S_LINK_UP, true);
    tap.setVnetHeaderSize(VNET_HDR_SIZE);
  }

  readConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.byteLength; i++) data[i] = this.#config[offset + i] ?? 0;
  }

  writeConfig(): void {} // the MAC is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR

  activate(ctx: ActivateContext): VirtioWorker {
    const f = ctx.features;
    const offload = (hasFeature(f, VIRTIO_NET_F.GUEST_CSUM) ? TUN_F.CSUM : 0) |
      (hasFeature(f, VIRTIO_NET_F.GUEST_TSO4) ? TUN_F.TSO4 : 0) | (hasFeature(f, VIRTIO_NET_F.GUEST_TSO6) ? TUN_F.TSO6 : 0) |
      (hasFeature(f, VIRTIO_NET_F.GUEST_ECN) ? TUN_F.TSO_ECN : 0) | (hasFeature(f, VIRTIO_NET_F.GUEST_UFO) ? TUN_F.UFO : 0);
    this.tap.setOffload(offload);
    const mergeable = hasFeature(f, VIRTIO_NET_F.MRG_RXBUF);
    const rx = ctx.queues[RXQ];
    const tx = ctx.queues[TXQ];
    const rxKick = ctx.kicks[RXQ]!;
    const txKick = ctx.kicks[TXQ]!;
    const frame = new Uint8Array(MAX_FRAME);
    const txFrame = new Uint8Array(MAX_FRAME);
    let pending = 0; // bytes of a frame read from the tap that is waiting for RX buffers
    let tapWatched = false;

    /** Copies `pending` bytes of `frame` into one or more RX chains; false when buffers ran out. */
    const deliver = (): boolean => {
      if (!rx) return false;
      const chains: { head: number; writer: ChainWriter }[] = [];
      let offset = 0;
      while (offset < pending) {
        const r = rx.pop();
        if (r === null) {
          // Not enough buffers yet: put back what was taken and wait for the driver to add more.
          rx.undoPop(chains.length);
          return false;
        }
        if (r.kind === "fatal") {
          ctx.needsReset(r.reason);
          return false;
        }
        if (r.kind === "bad_chain") {
          // A malformed buffer: return it and the ones taken for this frame empty, and drop the frame.
          for (const c of chains) rx.addUsed(c.head, 0);
          rx.addUsed(r.head, 0);
          pending = 0;
          return true;
        }
        const writer = new ChainWriter(r.chain);
        const n = Math.min(writer.remaining, pending - offset);
        if (!mergeable && n < pending) {
          rx.addUsed(r.chain.head, 0); // a single buffer too small for the frame: drop the frame
          pending = 0;
          return true;
        }
        writer.write(frame.subarray(offset, offset + n));
        chains.push({ head: r.chain.head, writer });
        offset += n;
        if (n === 0) break;
      }
      // num_buffers in the first chain's header says how many chains the frame spans.
      const first = chains[0]?.writer.chain.writable[0];
      if (first && first.byteLength >= VNET_HDR_SIZE) new DataView(first.buffer, first.byteOffset).setUint16(NUM_BUFFERS_OFFSET, chains.length, true);
      for (const c of chains) rx.addUsed(c.head, c.writer.written);
      pending = 0;
      return true;
    };

    const receive = (): void => {
      let delivered = false;
      // Two passes at most: the second only when buffers were added before notifications were
      // re-armed (a frame that needs more buffers than there are must not spin here).
      for (let pass = 0; pass < 2; pass++) {
        for (;;) {
          if (pending === 0) {
            const n = this.tap.read(frame);
            if (n <= 0) break;
            pending = n;
          }
          if (!deliver()) break;
          delivered = true;
        }
        if (!rx) break;
        rx.enableNotification();
        if (pending === 0 || !rx.hasAvailable()) break;
      }
      // With a frame waiting and no buffers, stop watching the tap until the driver adds some.
      const shouldWatch = pending === 0;
      if (shouldWatch !== tapWatched) {
        if (shouldWatch) ctx.loop.watch(this.tap.fd, receive);
        else ctx.loop.unwatch(this.tap.fd);
        tapWatched = shouldWatch;
      }
      if (rx && delivered && rx.shouldNotify()) ctx.interrupt.signalUsedQueue(RXQ);
    };

    const sendFrame = (chain: DescriptorChain): number => {
      const reader = new ChainReader(chain);
      const length = Math.min(reader.remaining, MAX_FRAME);
      if (length < VNET_HDR_SIZE) return 0;
      reader.read(txFrame.subarray(0, length));
      this.tap.write(txFrame.subarray(0, length)); // a frame the kernel refuses is dropped, as on a wire
      return 0;
    };
    const transmit = (): void => {
      txKick.read();
      if (!tx) return;
      drainQueue(tx, txKick, ctx.interrupt, ctx.needsReset, sendFrame);
    };

    ctx.loop.watch(rxKick.fd, () => {
      rxKick.read();
      receive();
    });
    ctx.loop.watch(txKick.fd, transmit);
    receive();
    transmit();
    return {
      stop: () => {
        ctx.loop.unwatch(rxKick.fd);
        ctx.loop.unwatch(txKick.fd);
        if (tapWatched) ctx.loop.unwatch(this.tap.fd);
        tapWatched = false;
      },
    };
  }
}
