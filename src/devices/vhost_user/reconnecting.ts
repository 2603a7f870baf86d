// reconnecting.ts - a vhost-user device that outlives its back-end (`--vhost-user ...,reconnect=true`).
//
// When the back-end fails (it exited, broke the protocol, or stopped answering), the device keeps its
// place on the PCI bus and in the driver's eyes: configuration reads answer from the last copy, the
// rings wait. Every `RETRY_MS` it connects again; a back-end that comes back offering every feature
// the first one offered takes over, and if the driver had the device running, its rings restart at
// their used indexes (see VhostUserFrontend.resume). A back-end that comes back with fewer features
// is a different device: that ends the VM through `onFailure`, as a failure without reconnect does.
import type { Result } from "../../base/result.ts";
import type { ActivateContext, VirtioDevice, VirtioWorker } from "../virtio/virtio_device.ts";
import type { VhostUserFrontend } from "./frontend.ts";

/** How long to wait between attempts to reach a back-end that went away. */
export const RETRY_MS = 250;

/** Connects to the back-end and negotiates; `onFailure` is told if that connection later fails. */
export type Connector = (onFailure: (reason: string) => void) => Result<VhostUserFrontend>;

export type ReconnectOptions = {
  /** Told when a back-end went away (once per outage) and when one took over again. */
  readonly onEvent: (message: string) => void;
  /** Ends the VM: a back-end came back as a device this one cannot be. */
  readonly onFailure: (reason: string) => void;
};

/** A device served by a vhost-user back-end that may go away and come back. */
export class ReconnectingFrontend implements VirtioDevice {
  readonly debugLabel: string;
  readonly deviceType: number;
  readonly queueMaxSizes: readonly number[];
  readonly features: bigint;
  readonly configSize: number;
  readonly #connect: Connector;
  readonly #options: ReconnectOptions;
  /** The back-end's front-end; after a failure, the failed one until another connects. */
  #current: VhostUserFrontend;
  #connected = true;
  #nextAttempt = 0;
  #ended = false;
  #running: { ctx: ActivateContext; worker: VirtioWorker | null } | null = null;
  #configListener: (() => void) | null = null;

  private constructor(first: VhostUserFrontend, connect: Connector, options: ReconnectOptions) {
    this.#current = first;
    this.#connect = connect;
    this.#options = options;
    this.debugLabel = first.debugLabel;
    this.deviceType = first.deviceType;
    this.queueMaxSizes = first.queueMaxSizes;
    this.features = first.features;
    this.configSize = first.configSize;
  }

  /** Connects the first time; a back-end that is not there now is an error, not something to wait for. */
  static connect(connect: Connector, options: ReconnectOptions): Result<ReconnectingFrontend> {
    let device: ReconnectingFrontend | null = null;
    const first = connect((reason) => {
      if (device !== null) device.#lost(reason);
    });
    if (!first.ok) return first;
    device = new ReconnectingFrontend(first.value, connect, options);
    return { ok: true, value: device };
  }

  /** Whether a back-end serves the device now. */
  get connected(): boolean {
    return this.#connected;
  }

  /** Sets the one listener told when the device's configuration may have changed. */
  onConfigChanged(listener: (() => void) | null): void {
    this.#configListener = listener;
    this.#current.onConfigChanged(listener);
  }

  readConfig(offset: number, data: Uint8Array): void {
    this.#current.readConfig(offset, data); // a failed front-end answers from its last copy
  }

  writeConfig(offset: number, data: Uint8Array): void {
    if (this.#connected) this.#current.writeConfig(offset, data);
  }

  activate(ctx: ActivateContext): VirtioWorker {
    const running = { ctx, worker: this.#connected ? this.#current.activate(ctx) : null };
    this.#running = running;
    return {
      stop: () => {
        running.worker?.stop();
        if (this.#running === running) this.#running = null;
      },
    };
  }

  /** Tries the back-end again once `RETRY_MS` has passed since the last try; call it often. */
  poll(now: number): void {
    if (this.#connected || this.#ended || now < this.#nextAttempt) return;
    this.#nextAttempt = now + RETRY_MS;
    let next: VhostUserFrontend | null = null;
    const attempt = this.#connect((reason) => {
      if (next !== null && this.#current === next) this.#lost(reason);
    });
    if (!attempt.ok) return;
    next = attempt.value;
    const missing = this.features & ~next.features;
    if (missing !== 0n) {
      next.close();
      this.#ended = true;
      this.#options.onFailure(`the back-end came back without features it offered before (0x${missing.toString(16)})`);
      return;
    }
    const running = this.#running;
    running?.worker?.stop(); // the old connection is gone: this only drops its fds from the loop
    this.#current.close();
    this.#current = next;
    this.#connected = true;
    next.onConfigChanged(this.#configListener);
    if (running) running.worker = next.resume(running.ctx);
    if (this.#connected) this.#options.onEvent("the back-end is back; the device carries on");
    this.#configListener?.();
  }

  close(): void {
    this.#ended = true;
    this.#current.close();
  }

  #lost(reason: string): void {
    if (!this.#connected) return;
    this.#connected = false;
    this.#nextAttempt = 0;
    this.#options.onEvent(`the back-end failed (${reason}); waiting for it to come back`);
  }
}
