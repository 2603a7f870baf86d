// rng.ts - virtio-rng (virtio 1.2 §5.4): fills the driver's buffers from the host kernel's getrandom.
import { ChainWriter, type DescriptorChain } from "./descriptor_chain.ts";
import { drainQueue } from "./drain.ts";
import { type ActivateContext, TSVM_RING_FEATURES, VIRTIO_ID, type VirtioDevice, type VirtioWorker } from "./virtio_device.ts";

const QUEUE_SIZE = 256;
/** bounds one request so a huge buffer cannot stall the device; the driver asks again for more */
const MAX_BYTES_PER_REQUEST = 64 * 1024;

/** Where random bytes come from: fills a buffer, returns the count or a negative errno. */
export type EntropySource = (buffer: Uint8Array) => number;

/** The entropy device: one request queue, no configuration, no feature bits of its own. */
export class Rng implements VirtioDevice {
  readonly debugLabel = "rng";
  readonly deviceType = VIRTIO_ID.RNG;
  readonly queueMaxSizes = [QUEUE_SIZE];
  readonly features = TSVM_RING_FEATURES;
  readonly configSize = 0;

  constructor(readonly entropy: EntropySource) {}

  readConfig(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }
  writeConfig(): void {}

  activate(ctx: ActivateContext): VirtioWorker {
    const queue = ctx.queues[0];
    const kick = ctx.kicks[0]!;
    const serve = (chain: DescriptorChain): number => {
      const writer = new ChainWriter(chain);
      for (const view of writer.take(Math.min(writer.remaining, MAX_BYTES_PER_REQUEST)) ?? []) {
        for (let done = 0; done < view.byteLength;) {
          const n = this.entropy(view.subarray(done));
          if (n <= 0) return 0; // the host failed: report nothing written
          done += n;
        }
      }
      return writer.written;
    };
    // Made once: a notify that finds nothing new allocates nothing.
    const fill = (): void => {
      kick.read();
      if (queue) drainQueue(queue, kick, ctx.interrupt, ctx.needsReset, serve);
    };
    ctx.loop.watch(kick.fd, fill);
    fill(); // buffers made available before DRIVER_OK
    return { stop: () => ctx.loop.unwatch(kick.fd) };
  }
}
