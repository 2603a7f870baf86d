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

/** One readiness report: the token registered for the fd, what it is ready for, and whether it hung up. */
export type TriggeredEvent<T> = { readonly token: T; readonly readable: boolean; readonly writable: boolean; readonly hungUp: boolean };

/** An epoll instance whose events come back as the tokens they were registered with. */
export class WaitContext<T> extends OwnedFd {
  readonly #tokens = new Map<number, T>();
  readonly #fdsBySlot = new Map<number, number>();
  readonly #buffer = new Uint8Array(MAX_EVENTS * EPOLL_EVENT_SIZE);
  readonly #view = new DataView(this.#buffer.buffer);
  #nextSlot = 1;

  constructor() {
    super(event.epollCreate());
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

  /** Waits up to `timeoutMs` (-1: forever) and returns what became ready (empty on timeout or EINTR). */
  wait(timeoutMs: number): TriggeredEvent<T>[] {
    const n = event.epollWait(this.fd, this.#buffer, MAX_EVENTS, timeoutMs);
    if (n === -EINTR) return [];
    checked(n, "wait for events");
    const out: TriggeredEvent<T>[] = [];
    for (let i = 0; i < n; i++) {
      const at = i * EPOLL_EVENT_SIZE;
      const events = this.#view.getUint32(at, true);
      const slot = Number(this.#view.getBigUint64(at + 4, true));
      const token = this.#tokens.get(slot);
      if (token === undefined) continue; // deleted while the event was in flight
      out.push({ token, readable: (events & EPOLLIN) !== 0, writable: (events & EPOLLOUT) !== 0, hungUp: (events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) !== 0 });
    }
    return out;
  }
}
