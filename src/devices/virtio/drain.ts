// drain.ts - the loop every queue handler runs after a notification: pop, handle, return, interrupt.
import type { DescriptorChain } from "./descriptor_chain.ts";
import type { VirtioInterrupt } from "./interrupt.ts";
import type { Queue } from "./queue.ts";

/**
 * Handles every available chain with `handle` (which returns the bytes it wrote), returns invalid
 * chains with length 0, re-arms notifications, and interrupts the driver if it asked for it.
 * A fatal ring error calls `needsReset` and stops.
 */
export function drainQueue(
  queue: Queue,
  interrupt: VirtioInterrupt,
  needsReset: (reason: string) => void,
  handle: (chain: DescriptorChain) => number,
): void {
  for (;;) {
    for (let r = queue.pop(); r !== null; r = queue.pop()) {
      if (r.kind === "fatal") {
        needsReset(r.reason);
        return;
      }
      queue.addUsed(r.kind === "chain" ? r.chain.head : r.head, r.kind === "chain" ? handle(r.chain) : 0);
    }
    queue.enableNotification();
    // A buffer added between the last pop and enableNotification would get no kick: look again.
    if (!queue.hasAvailable()) break;
  }
  if (queue.shouldNotify()) interrupt.signalUsedQueue(queue.config.vector);
}
