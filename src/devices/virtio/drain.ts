// drain.ts - the loop every queue handler runs after a notification: pop, handle, return, interrupt.
import type { EventFd } from "../../base/event_fd.ts";
import type { DescriptorChain } from "./descriptor_chain.ts";
import type { VirtioInterrupt } from "./interrupt.ts";
import type { Queue } from "./queue.ts";

/** The default `busy` of drainQueue: a device that completes every chain as it handles it. */
const neverBusy = (): boolean => false;

/** bounds the chains one wake-up serves, so one busy queue cannot starve the rest of its loop */
export const CHAINS_PER_WAKEUP = 256;

/**
 * Handles available chains with `handle` (which returns the bytes it wrote, or null when the chain
 * is in flight and the handler will return it to the used ring itself), returns invalid chains
 * with length 0, re-arms notifications, and interrupts the driver if it asked for it. After
 * CHAINS_PER_WAKEUP chains it stops and signals `kick` itself, so its loop comes back to the queue
 * after serving everything else. A fatal ring error calls `needsReset` and stops.
 * While the queue is being drained the driver is told not to notify; `busy`, when it says so at the
 * end, keeps it that way: the device has requests in flight and promises to drain the queue again
 * when they finish (which re-arms notifications once it is idle).
 */
export function drainQueue(
  queue: Queue,
  kick: EventFd,
  interrupt: VirtioInterrupt,
  needsReset: (reason: string) => void,
  handle: (chain: DescriptorChain) => number | null,
  busy: () => boolean = neverBusy,
): void {
  let served = 0;
  queue.disableNotification();
  outer: for (;;) {
    for (let r = queue.pop(); r !== null; r = queue.pop()) {
      if (r.kind === "fatal") {
        needsReset(r.reason);
        return;
      }
      if (r.kind === "bad_chain") queue.addUsed(r.head, 0);
      else {
        const written = handle(r.chain);
        if (written !== null) queue.addUsed(r.chain.head, written);
      }
      if (++served >= CHAINS_PER_WAKEUP) {
        kick.signal(); // more may be waiting: come back after the other fds of the loop
        break outer;
      }
    }
    if (busy()) break; // notifications stay off: the device comes back when what is in flight is done
    queue.enableNotification();
    // A buffer added between the last pop and enableNotification would get no kick: look again.
    if (!queue.hasAvailable()) break;
    queue.disableNotification();
  }
  if (queue.shouldNotify()) interrupt.signalUsedQueue(queue.index);
}
