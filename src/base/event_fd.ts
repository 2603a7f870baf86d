// event_fd.ts - an eventfd: a counter that wakes epoll when written.
import { event, socket, sys } from "../../ffi/mod.ts";
import { ERRNO } from "./errno.ts";
import { OwnedFd } from "./owned_fd.ts";

const EFD_NONBLOCK = 0o4000;
const O_NONBLOCK = 0o4000;
const F_GETFL = 3;
const F_SETFL = 4;

/**
 * An eventfd owned by this object. Reads and writes never throw or block: an eventfd can come from a
 * peer (a vhost-user front-end's kick and call fds), which may hand over anything.
 */
export class EventFd extends OwnedFd {
  readonly #value = new BigUint64Array(1);
  /** The same 8 bytes as two halves: reading them makes no BigInt (a kick is read on every notify). */
  readonly #halves = new Uint32Array(this.#value.buffer);

  /** Creates a non-blocking eventfd, or wraps `fd` (one made elsewhere in this process, say by the control loop). */
  constructor(fd?: number) {
    super(fd ?? event.eventfd(0, EFD_NONBLOCK));
  }

  /** Whether a peer shares this eventfd (it may clear O_NONBLOCK on the open file they share). */
  #peer = false;

  /**
   * Takes an fd a peer sent if it is an eventfd (null otherwise: the fd stays the caller's), made
   * non-blocking. A peer shares the open file and can clear O_NONBLOCK again, so reads use RWF_NOWAIT
   * (c/event.c) and a write first checks that the counter has room: then only a peer that fills the
   * counter between that check and the write, with O_NONBLOCK cleared, can hold the write up.
   * `readable`: the fd will be read and watched (a kick), so it must truly be an eventfd, which is
   * checked by adding 0 to it; that wakes its pollers, and KVM injects an interrupt through an irqfd
   * on any wake-up, so an fd only written to (a call fd, often an irqfd) is not checked that way:
   * another kind of fd there only fails its writes.
   */
  static fromPeer(fd: number, readable = true): EventFd | null {
    const stat = sys.fstat(fd);
    if (typeof stat === "number" || (stat.mode & sys.S_IFMT) !== 0 || (readable && event.eventfdCheck(fd) !== 1)) return null;
    if (sys.fcntlIntRaw(fd, F_SETFL, sys.fcntlIntRaw(fd, F_GETFL, 0) | O_NONBLOCK) < 0) return null;
    const e = new EventFd(fd);
    e.#peer = true;
    return e;
  }

  /** Adds `value` (default 1) to the counter; returns false when the write failed (or would block). */
  signal(value = 1): boolean {
    if (this.#peer) {
      const ready = socket.poll(this.fd, socket.POLLOUT, 0);
      if (ready <= 0 || (ready & socket.POLLOUT) === 0) return false;
    }
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
      return r < 0 ? 0 : this.#halves[0]! + this.#halves[1]! * 2 ** 32;
    }
  }
}
