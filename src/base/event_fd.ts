// event_fd.ts - an eventfd: a counter that wakes epoll when written.
import { event, sys } from "../../ffi/mod.ts";
import { ERRNO } from "./errno.ts";
import { OwnedFd } from "./owned_fd.ts";

const EFD_NONBLOCK = 0o4000;
const O_NONBLOCK = 0o4000;

/**
 * An eventfd owned by this object. Reads and writes never throw or block: an eventfd can come from a
 * peer (a vhost-user front-end's kick and call fds), which may hand over anything.
 */
export class EventFd extends OwnedFd {
  readonly #value = new BigUint64Array(1);

  /** Creates a non-blocking eventfd, or wraps `fd` (one made elsewhere in this process, say by the control loop). */
  constructor(fd?: number) {
    super(fd ?? event.eventfd(0, EFD_NONBLOCK));
  }

  /** Wraps an fd a peer sent, making it non-blocking so neither a read nor a write can hang. */
  static fromPeer(fd: number): EventFd {
    sys.addFileFlags(fd, O_NONBLOCK);
    return new EventFd(fd);
  }

  /** Adds `value` (default 1) to the counter; returns false when the write failed. */
  signal(value = 1): boolean {
    for (;;) {
      const r = event.eventfdWrite(this.fd, value);
      if (r !== -ERRNO.EINTR) return r >= 0;
    }
  }

  /** Returns the counter and resets it to zero (0 when nothing was signalled, or the read failed). */
  read(): number {
    for (;;) {
      const r = event.eventfdRead(this.fd, this.#value);
      if (r === -ERRNO.EINTR) continue;
      return r < 0 ? 0 : Number(this.#value[0]);
    }
  }
}
