// event_fd.ts - an eventfd: a counter that wakes epoll when written.
import { event } from "../../ffi/mod.ts";
import { checked } from "./errno.ts";
import { OwnedFd } from "./owned_fd.ts";

const EFD_NONBLOCK = 0o4000;
const EAGAIN = 11;

/** An eventfd owned by this object. */
export class EventFd extends OwnedFd {
  readonly #value = new BigUint64Array(1);

  /** Creates a non-blocking eventfd, or wraps `fd` (one made elsewhere in this process, say by the control loop). */
  constructor(fd?: number) {
    super(fd ?? event.eventfd(0, EFD_NONBLOCK));
  }

  /** Adds `value` (default 1) to the counter. */
  signal(value = 1): void {
    checked(event.eventfdWrite(this.fd, value), "write eventfd");
  }

  /** Returns the counter and resets it to zero (0 when nothing was signalled). */
  read(): number {
    const r = event.eventfdRead(this.fd, this.#value);
    if (r === -EAGAIN) return 0;
    checked(r, "read eventfd");
    return Number(this.#value[0]);
  }
}
