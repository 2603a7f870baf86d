// timer.ts - a one-shot timer as a file descriptor (timerfd), for loops that only wait on fds.
import { event, sys } from "../../ffi/mod.ts";
import { checked } from "./errno.ts";
import { OwnedFd } from "./owned_fd.ts";

/** A monotonic one-shot timer: readable once the time it was armed for has passed. */
export class Timer extends OwnedFd {
  readonly #buffer = new Uint8Array(8);

  constructor() {
    super(checked(event.timerfdCreate(), "create a timer"));
  }

  /** Fires once in `delayMs` (at least 1 ms); replaces any earlier arming. */
  arm(delayMs: number): void {
    event.timerfdSet(this.fd, Math.max(1, Math.ceil(delayMs)));
  }

  disarm(): void {
    event.timerfdSet(this.fd, 0);
  }

  /** Takes the expiry off the fd (so it stops being readable). */
  clear(): void {
    sys.readRaw(this.fd, this.#buffer);
  }
}
