// control_loop.ts - the VMM's main-thread loop: epoll over every fd the VMM serves, each with its
// handler, until something ends the VM.
//
// Handlers come from the vCPUs (one that stopped), devices, device processes, stdin, signals and the
// control socket. The vCPUs share the thread (vmm/vcpus.ts runs them between turns). None of them may take the VMM down: an exception in one is logged and, for a device,
// turned into that device needing a reset (see DeviceLoop); the loop itself only ends through `end`.
import { log } from "../base/log.ts";
import { describeError } from "../base/result.ts";
import { LOOP_POLL_NS, WaitContext } from "../base/wait_context.ts";
import type { DeviceEventLoop } from "../devices/virtio/virtio_device.ts";

/** The loop returns to Bun's event loop this often so its timers and promises run. */
export const EVENT_LOOP_SLICE_MS = 100;

/** Why the VM ends: the process exit code and a line to print (null: none). */
export type Ending = { readonly code: number; readonly message: string | null };

export const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** The VMM's WaitContext and what runs on it. */
export class ControlLoop implements DeviceEventLoop {
  readonly #wait = new WaitContext<() => void>({ pollNs: LOOP_POLL_NS });
  readonly #ticks: (() => void)[] = [];
  /** Tokens of the events each nested turn is running (a handler may turn the loop: park does). */
  readonly #running: (() => void)[][] = [];
  #depth = 0;
  #ending: Ending | null = null;

  /** Runs `handler` whenever `fd` is readable (or whatever `events` says: EPOLLOUT for room to write). */
  watch(fd: number, handler: () => void, events?: number): void {
    this.#wait.add(fd, handler, events);
  }

  unwatch(fd: number): void {
    this.#wait.delete(fd);
  }

  /** The loop's epoll fd: readable while any watched fd has an event (the vCPU waker watches it). */
  get epollFd(): number {
    return this.#wait.fd;
  }

  /** How many fds the loop watches (a client or device that leaves must not leave its watch behind). */
  get watchedFds(): number {
    return this.#wait.size;
  }

  /** Runs `task` once every time round the loop (deadline checks, polling a file). */
  everyTick(task: () => void): void {
    this.#ticks.push(task);
  }

  /** Ends the loop with `ending`; the first call wins. */
  end(ending: Ending): void {
    this.#ending ??= ending;
  }

  /** How the loop ended (or will, once it sees it), or null while it runs. */
  get ending(): Ending | null {
    return this.#ending;
  }

  /** Waits up to `timeoutMs` and runs what became ready (used while suspending and stopping too). */
  turn(timeoutMs: number): number {
    // The wait context reuses its event array: copy the tokens out, since a handler may turn again.
    const tokens = (this.#running[this.#depth] ??= []);
    tokens.length = 0;
    for (const { token } of this.#wait.wait(timeoutMs)) tokens.push(token);
    this.#depth++;
    try {
      for (const token of tokens) {
        try {
          token();
        } catch (e) {
          log.error(`internal error in the control loop: ${describeError(e)}`);
        }
        if (this.#ending) break;
      }
      for (const task of this.#ticks) task();
    } finally {
      this.#depth--;
    }
    return tokens.length;
  }

  /** Serves until something ends the VM; yields to Bun's event loop now and then. */
  async run(): Promise<Ending> {
    let sliceStart = performance.now();
    for (;;) {
      const n = this.turn(EVENT_LOOP_SLICE_MS);
      if (this.#ending) return this.#ending;
      if (n === 0 || performance.now() - sliceStart >= EVENT_LOOP_SLICE_MS) {
        await yieldToEventLoop();
        sliceStart = performance.now();
        if (this.#ending) return this.#ending;
      }
    }
  }

  close(): void {
    this.#wait.close();
  }
}

/**
 * The loop a device in the VMM runs on (--disable-sandbox): the control loop, with the device's fds
 * set aside while the VM is suspended and each handler's exception turned into `onError` (the device
 * then needs a reset) instead of reaching the control loop.
 */
export class DeviceLoop implements DeviceEventLoop {
  readonly #handlers = new Map<number, { readonly handler: () => void; readonly events: number | undefined }>();
  #paused = false;
  onError: (message: string) => void = (message) => log.error(message);

  constructor(readonly loop: ControlLoop, readonly label: string) {}

  watch(fd: number, handler: () => void, events?: number): void {
    const guarded = (): void => {
      try {
        handler();
      } catch (e) {
        this.onError(`internal error in ${this.label}: ${describeError(e)}`);
      }
    };
    this.#handlers.set(fd, { handler: guarded, events });
    if (!this.#paused) this.loop.watch(fd, guarded, events);
  }

  unwatch(fd: number): void {
    if (this.#handlers.delete(fd) && !this.#paused) this.loop.unwatch(fd);
  }

  /** Stops serving the device's fds (tsvm suspend); their events wait in the kernel. */
  pause(): void {
    if (this.#paused) return;
    this.#paused = true;
    for (const fd of this.#handlers.keys()) this.loop.unwatch(fd);
  }

  /** Serves them again and runs each once: notifications that came while paused are still counted. */
  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    for (const [fd, { handler, events }] of this.#handlers) this.loop.watch(fd, handler, events);
    for (const { handler } of [...this.#handlers.values()]) handler();
  }
}
