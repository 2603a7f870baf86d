// console.ts - virtio-console (virtio 1.2 §5.3), one port: output to stdout or a file, input from the host.
//
// Output is written only as fast as its reader takes it: while the output is full, the guest's
// transmit buffers stay with the device (not returned to the used ring), so the guest's driver
// waits, and the device's loop watches the output for room instead of blocking on it.
import { ChainReader, ChainWriter } from "./descriptor_chain.ts";
import { type ControllableDevice, type DeviceCommand, type DeviceReply, unsupported } from "./device_control.ts";
import { CHAINS_PER_WAKEUP, drainQueue } from "./drain.ts";
import { EPOLLOUT } from "../../base/wait_context.ts";
import type { StreamOutput } from "../../base/stream_output.ts";
import type { DescriptorChain } from "./descriptor_chain.ts";
import { type ActivateContext, TSVM_RING_FEATURES, VIRTIO_ID, type VirtioDevice, type VirtioWorker } from "./virtio_device.ts";

const QUEUE_SIZE = 64;
const RECEIVEQ = 0;
const TRANSMITQ = 1;
/** struct virtio_console_config: le16 cols, le16 rows, le32 max_nr_ports, le32 emerg_wr. */
const CONFIG_SIZE = 12;
const EMERG_WR = 8;
/** VIRTIO_CONSOLE_F_EMERG_WRITE: the driver may write single characters to emerg_wr before queues exist. */
const VIRTIO_CONSOLE_F_EMERG_WRITE = 2n;
/** bounds host input waiting for the guest */
const MAX_PENDING_INPUT = 64 * 1024;

/** A console port: the guest's transmit queue goes to `output`; `queueInput` feeds its receive queue. */
export class Console implements VirtioDevice, ControllableDevice {
  readonly debugLabel = "console";
  readonly deviceType = VIRTIO_ID.CONSOLE;
  readonly queueMaxSizes = [QUEUE_SIZE, QUEUE_SIZE];
  readonly features = TSVM_RING_FEATURES | (1n << VIRTIO_CONSOLE_F_EMERG_WRITE);
  readonly configSize = CONFIG_SIZE;
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;
  #deliver: (() => void) | null = null;

  constructor(readonly output: Pick<StreamOutput, "fd" | "write"> | null) {}

  readConfig(offset: number, data: Uint8Array): void {
    const config = new DataView(new ArrayBuffer(CONFIG_SIZE));
    config.setUint32(4, 1, true); // max_nr_ports (meaningful only with MULTIPORT)
    for (let i = 0; i < data.byteLength; i++) data[i] = config.getUint8(offset + i);
  }

  writeConfig(offset: number, data: Uint8Array): void {
    if (offset === EMERG_WR) this.output?.write(data.subarray(0, 1)); // best effort: dropped while the output is full
  }

  /** Queues host bytes for the guest; returns how many were accepted. */
  queueInput(bytes: Uint8Array): number {
    const accepted = Math.min(bytes.byteLength, MAX_PENDING_INPUT - this.#pendingBytes);
    if (accepted > 0) {
      this.#pending.push(bytes.slice(0, accepted));
      this.#pendingBytes += accepted;
    }
    this.#deliver?.();
    return accepted;
  }

  control(command: DeviceCommand): DeviceReply {
    if (command.kind !== "console_input") return unsupported("console", command);
    return { kind: "console_accepted", count: this.queueInput(command.bytes) };
  }

  activate(ctx: ActivateContext): VirtioWorker {
    const rx = ctx.queues[RECEIVEQ];
    const tx = ctx.queues[TRANSMITQ];
    const rxKick = ctx.kicks[RECEIVEQ]!;
    const txKick = ctx.kicks[TRANSMITQ]!;
    const deliver = (): void => {
      if (!rx || this.#pendingBytes === 0) return;
      let delivered = false;
      // At most a ring's worth of buffers per call: a driver that keeps posting buffers with no room
      // in them (from another vCPU) would otherwise keep this loop going; the rest comes next kick.
      let budget = CHAINS_PER_WAKEUP;
      for (;;) {
        while (this.#pendingBytes > 0 && rx.hasAvailable() && budget-- > 0) {
          const r = rx.pop();
          if (r === null) break;
          if (r.kind === "fatal") return ctx.needsReset(r.reason);
          if (r.kind === "bad_chain") {
            rx.addUsed(r.head, 0);
            continue;
          }
          const writer = new ChainWriter(r.chain);
          while (this.#pendingBytes > 0 && writer.remaining > 0) {
            const chunk = this.#pending[0]!;
            const n = Math.min(chunk.byteLength, writer.remaining);
            writer.write(chunk.subarray(0, n));
            this.#pendingBytes -= n;
            if (n === chunk.byteLength) this.#pending.shift();
            else this.#pending[0] = chunk.subarray(n);
          }
          rx.addUsed(r.chain.head, writer.written);
          delivered = true;
        }
        rx.enableNotification();
        if (budget <= 0) {
          rxKick.signal(); // more to do after the loop's other fds
          break;
        }
        // A buffer added before notifications were re-armed brings no kick: look again.
        if (this.#pendingBytes === 0 || !rx.hasAvailable()) break;
      }
      if (delivered && rx.shouldNotify()) ctx.interrupt.signalUsedQueue(RECEIVEQ);
    };
    // Transmit buffers the output has not taken all of yet, oldest first, with what is left of each.
    const held: { readonly head: number; readonly views: Uint8Array[] }[] = [];
    const output = this.output;
    /** Writes what the held buffers still have, returning each one that is done; true when none is left. */
    const flushHeld = (): boolean => {
      while (held.length > 0) {
        const { head, views } = held[0]!;
        while (views.length > 0) {
          const n = output!.write(views[0]!);
          if (n === "broken") {
            views.length = 0; // the reader is gone: what is left is dropped, as an unplugged line would
          } else if (n < views[0]!.byteLength) {
            views[0] = views[0]!.subarray(n);
            return false;
          } else {
            views.shift();
          }
        }
        held.shift();
        tx!.addUsed(head, 0); // the device writes nothing into transmit buffers
      }
      return true;
    };
    const onRoom = (): void => {
      if (!flushHeld()) {
        if (tx!.shouldNotify()) ctx.interrupt.signalUsedQueue(TRANSMITQ);
        return;
      }
      ctx.loop.unwatch(output!.fd);
      drainTransmit(); // re-arms notifications and interrupts the driver for what was returned
    };
    const transmitChain = (chain: DescriptorChain): number | null => {
      const reader = new ChainReader(chain);
      const views = reader.take(reader.remaining) ?? [];
      if (output === null) return 0;
      const waiting = held.length > 0;
      held.push({ head: chain.head, views: [...views] });
      if (waiting) return null;
      if (flushHeld()) return null; // returned by flushHeld
      ctx.loop.watch(output.fd, onRoom, EPOLLOUT);
      return null;
    };
    const drainTransmit = (): void => {
      if (tx && held.length === 0) drainQueue(tx, txKick, ctx.interrupt, ctx.needsReset, transmitChain, () => held.length > 0);
    };
    const transmit = (): void => {
      txKick.read();
      drainTransmit(); // while buffers are held, notifications are off and onRoom drains the queue
    };
    const receive = (): void => {
      rxKick.read();
      deliver();
    };
    ctx.loop.watch(rxKick.fd, receive);
    ctx.loop.watch(txKick.fd, transmit);
    this.#deliver = deliver;
    drainTransmit();
    deliver();
    return {
      stop: () => {
        ctx.loop.unwatch(rxKick.fd);
        ctx.loop.unwatch(txKick.fd);
        if (held.length > 0) ctx.loop.unwatch(output!.fd);
        held.length = 0;
        this.#deliver = null;
      },
    };
  }
}
