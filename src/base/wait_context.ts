// wait_context.ts - epoll over file descriptors, each registered with a typed token.
import { event } from "../../ffi/mod.ts";
import { checked } from "./errno.ts";
import { OwnedFd } from "./owned_fd.ts";

const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;
export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;
export const EPOLLET = 0x80000000;
/** struct epoll_event is packed on x86-64: __u32 events; __u64 data. */
const EPOLL_EVENT_SIZE = 12;
const MAX_EVENTS = 32;
const EINTR = 4;

/**
 * How long (ns, at most) the VMM's loop and each device's loop poll for the next event after events
 * that came close together, before sleeping: a burst of notifies, or a driver that sends its next
 * request as soon as it sees the last one done, is then served without waking a sleeping thread for
 * each event (an inter-processor interrupt for the vCPU that notifies, and on these hosts tens of
 * microseconds before the thread runs). 64 µs covers a request round trip of a driver polling from
 * guest ring 3 on the hosts we measured; QEMU's IOThreads poll up to 32 µs. TSVM_LOOP_POLL_NS sets
 * it (0 turns polling off).
 */
export const LOOP_POLL_NS = pollSetting(process.env.TSVM_LOOP_POLL_NS, 64_000);

/**
 * The scheduler slice (ns) a device process asks for, for its loop and its I/O threads: the
 * shortest Linux grants (0.1 ms; since 6.12 `sched_setattr` takes `sched_runtime` as the slice of an
 * ordinary thread). A vCPU whose guest polls never sleeps; a device woken on the vCPU's CPU waited
 * for the vCPU's slice to end (ms) before it ran, while a thread asking for a shorter slice gets the
 * earlier deadline and preempts it on waking. Its share of the CPU does not change. 1 MiB from the
 * guest to a host socket over vsock took 2.8-3.0 ms (medians of 5 rounds) against 3.3-3.7 without.
 * TSVM_DEVICE_SLICE_NS sets it (0: the kernel's default slice).
 */
export const DEVICE_SLICE_NS = pollSetting(process.env.TSVM_DEVICE_SLICE_NS, 100_000);

/** A polling ceiling from the environment: whole ns up to 1 s, or `fallback` (malformed or unset). */
export function pollSetting(value: string | undefined, fallback: number): number {
  if (value === undefined || !/^\d{1,10}$/.test(value)) return fallback;
  return Math.min(Number(value), 1_000_000_000);
}

/** One readiness report: the token registered for the fd, what it is ready for, and whether it hung up. */
export type TriggeredEvent<T> = { readonly token: T; readonly readable: boolean; readonly writable: boolean; readonly hungUp: boolean };
type EventRecord<T> = { token: T; readable: boolean; writable: boolean; hungUp: boolean };

/** How a WaitContext waits. */
export type WaitOptions = {
  /**
   * The longest it polls (ns) before sleeping, after events that came close together (0: never).
   * The window adapts: see epollWaitPolled. A device loop polls, so that the next request of a burst
   * costs its driver no wake-up of a sleeping thread on another CPU.
   */
  readonly pollNs?: number;
};

/**
 * An epoll instance whose events come back as the tokens they were registered with. Waiting
 * allocates nothing: the array `wait` returns, and its records, are reused by the next wait.
 */
export class WaitContext<T> extends OwnedFd {
  readonly #tokens = new Map<number, T>();
  readonly #fdsBySlot = new Map<number, number>();
  readonly #buffer = new Uint8Array(MAX_EVENTS * EPOLL_EVENT_SIZE);
  readonly #view = new DataView(this.#buffer.buffer);
  readonly #records: EventRecord<T>[] = [];
  readonly #ready: EventRecord<T>[] = [];
  /** [the polling window now, its ceiling] in ns, kept by the C side between waits. */
  readonly #poll: BigInt64Array;
  readonly #polls: boolean;
  #nextSlot = 1;

  constructor(options: WaitOptions = {}) {
    super(event.epollCreate());
    const ceiling = Math.max(0, Math.floor(options.pollNs ?? 0));
    this.#poll = new BigInt64Array([0n, BigInt(ceiling)]);
    this.#polls = ceiling > 0;
  }

  /** Watches `fd` for `events` (input unless told otherwise: EPOLLOUT, EPOLLET...); its events report `token`. */
  add(fd: number, token: T, events = EPOLLIN): void {
    const slot = this.#nextSlot++;
    checked(event.epollCtl(this.fd, EPOLL_CTL_ADD, fd, events, slot), `watch fd ${fd}`);
    this.#tokens.set(slot, token);
    this.#fdsBySlot.set(slot, fd);
  }

  /** Changes the events `fd` is watched for. */
  modify(fd: number, events: number): void {
    for (const [slot, f] of this.#fdsBySlot) {
      if (f === fd) checked(event.epollCtl(this.fd, EPOLL_CTL_MOD, fd, events, slot), `watch fd ${fd}`);
    }
  }

  /** The polling window the next wait starts with (ns; it adapts between 0 and the ceiling). */
  get pollWindowNs(): number {
    return Number(this.#poll[0]);
  }

  /** How many fds are watched. */
  get size(): number {
    return this.#fdsBySlot.size;
  }

  /** Stops watching `fd`. */
  delete(fd: number): void {
    for (const [slot, f] of this.#fdsBySlot) {
      if (f !== fd) continue;
      event.epollCtl(this.fd, EPOLL_CTL_DEL, fd, 0, 0);
      this.#fdsBySlot.delete(slot);
      this.#tokens.delete(slot);
    }
  }

  /**
   * Waits up to `timeoutMs` (-1: forever) and returns what became ready (empty on timeout or EINTR).
   * The array and its records are valid until the next call.
   */
  wait(timeoutMs: number): readonly TriggeredEvent<T>[] {
    const n = this.#polls
      ? event.epollWaitPolled(this.fd, this.#buffer, MAX_EVENTS, timeoutMs, this.#poll)
      : event.epollWait(this.fd, this.#buffer, MAX_EVENTS, timeoutMs);
    const ready = this.#ready;
    ready.length = 0;
    if (n === -EINTR) return ready;
    checked(n, "wait for events");
    for (let i = 0; i < n; i++) {
      const at = i * EPOLL_EVENT_SIZE;
      const events = this.#view.getUint32(at, true);
      const slot = this.#view.getUint32(at + 4, true) + this.#view.getUint32(at + 8, true) * 2 ** 32; // no BigInt
      const token = this.#tokens.get(slot);
      if (token === undefined) continue; // deleted while the event was in flight
      const record = this.#records[ready.length] ??= { token, readable: false, writable: false, hungUp: false };
      record.token = token;
      record.readable = (events & EPOLLIN) !== 0;
      record.writable = (events & EPOLLOUT) !== 0;
      record.hungUp = (events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) !== 0;
      ready.push(record);
    }
    return ready;
  }
}
