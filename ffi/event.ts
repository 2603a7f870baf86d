// event.ts - bindings for c/event.c: eventfd, epoll and signal notification.
import { checked } from "../src/base/errno.ts";
import { native } from "./lib.ts";

/** Creates an eventfd (close-on-exec added). */
export function eventfd(initval: number, flags: number): number {
  return checked(native.tsvm_eventfd(initval, flags), "create eventfd");
}

/** Adds `value` to an eventfd's counter; returns 0 or -errno. */
export function eventfdWrite(fd: number, value: number): number {
  return native.tsvm_eventfd_write(fd, value);
}

/** Reads and resets an eventfd's counter into `out[0]`; returns 0 or -errno. */
export function eventfdRead(fd: number, out: BigUint64Array): number {
  return native.tsvm_eventfd_read(fd, out);
}

/** Whether `fd` is an eventfd (1 or 0; -errno when it is no usable fd). Adds 0 to its counter. */
export function eventfdCheck(fd: number): number {
  return native.tsvm_eventfd_check(fd);
}

/** Creates an epoll instance (close-on-exec). */
export function epollCreate(): number {
  return checked(native.tsvm_epoll_create(), "create epoll");
}

/** Runs epoll_ctl with a 64-bit token; returns 0 or -errno. */
export function epollCtl(epfd: number, op: number, fd: number, events: number, token: number): number {
  return native.tsvm_epoll_ctl(epfd, op, fd, events, token);
}

/** Waits for events into `events` (12-byte packed epoll_event records); returns the count or -errno. */
export function epollWait(epfd: number, events: Uint8Array, maxEvents: number, timeoutMs: number): number {
  return native.tsvm_epoll_wait(epfd, events, maxEvents, timeoutMs);
}

/**
 * epollWait that first polls for up to `state[0]` ns and adapts that window (ceiling `state[1]`,
 * 0: never poll) to how soon events come; see tsvm_epoll_wait_polled in c/event.c.
 */
export function epollWaitPolled(epfd: number, events: Uint8Array, maxEvents: number, timeoutMs: number, state: BigInt64Array): number {
  return native.tsvm_epoll_wait_polled(epfd, events, maxEvents, timeoutMs, state);
}

/** Makes delivery of `signum` to the process add 1 to eventfd `fd`. */
export function notifySignal(signum: number, fd: number): void {
  checked(native.tsvm_signal_notify(signum, fd), `route signal ${signum} to an eventfd`);
}

/** Restores the default action of `signum`. */
export function defaultSignal(signum: number): void {
  native.tsvm_signal_default(signum);
}

/** Creates a non-blocking monotonic timerfd; returns the fd or -errno. */
export function timerfdCreate(): number {
  return native.tsvm_timerfd_create();
}

/** Arms `fd` to become readable once, `delayMs` from now (0 disarms it); returns 0 or -errno. */
export function timerfdSet(fd: number, delayMs: number): number {
  return native.tsvm_timerfd_set(fd, delayMs);
}
