// tube.ts - typed messages over a SOCK_SEQPACKET socket: one datagram per message, bounded size.
import { socket, sys } from "../../ffi/mod.ts";
import { ERRNO, SysError } from "./errno.ts";
import { OwnedFd } from "./owned_fd.ts";

/** Largest message a Tube sends or accepts. */
export const MAX_MESSAGE_SIZE = 4096;
/** poll(2): the peer shut down its side of the connection. */
const POLLRDHUP = 0x2000;

/** What can go wrong receiving: the peer closed, or nothing came in time. */
export type TubeReceiveResult =
  | { readonly kind: "message"; readonly bytes: Uint8Array; readonly fds: readonly number[] }
  | { readonly kind: "closed" }
  | { readonly kind: "timeout" };

/** One end of a seqpacket connection carrying encoded messages. */
export class Tube extends OwnedFd {
  readonly #buffer = new Uint8Array(MAX_MESSAGE_SIZE);
  readonly #noFds = new Int32Array(0);
  readonly #fds = new Int32Array(socket.MAX_FDS_PER_MESSAGE);
  readonly #fdCount = new Int32Array(1);

  /** Sends one message (with `fds` attached); throws when it is too big or the peer is gone. */
  send(bytes: Uint8Array, fds: readonly number[] = []): void {
    if (bytes.byteLength > MAX_MESSAGE_SIZE) throw new Error(`failed to send a message of ${bytes.byteLength} bytes: the limit is ${MAX_MESSAGE_SIZE}`);
    const attached = fds.length === 0 ? this.#noFds : Int32Array.from(fds);
    for (;;) {
      const n = socket.sendWithFds(this.fd, bytes, bytes.byteLength, attached);
      if (n === -ERRNO.EINTR) continue;
      if (n < 0) throw new SysError("send a message", -n);
      return;
    }
  }

  /** Receives one message, waiting up to `timeoutMs` (-1: forever). Received fds belong to the caller. */
  receive(timeoutMs: number): TubeReceiveResult {
    const ready = socket.waitReadable(this.fd, timeoutMs);
    if (ready === 0) return { kind: "timeout" };
    if (ready < 0 && ready !== -ERRNO.EINTR) throw new SysError("wait for a message", -ready);
    for (;;) {
      const n = socket.recvWithFds(this.fd, this.#buffer, this.#fds, this.#fdCount);
      const fds = Array.from(this.#fds.subarray(0, this.#fdCount[0]!));
      this.#fdCount[0] = 0;
      if (n < 0) {
        for (const fd of fds) sys.close(fd);
        if (n === -ERRNO.EINTR) continue;
        if (n === -ERRNO.EAGAIN) return { kind: "timeout" };
        throw new SysError("receive a message", -n);
      }
      // recvmsg returns 0 both for an empty datagram (which may carry fds: they are the caller's, as
      // with any message) and for a peer that hung up: ask which.
      if (n === 0 && fds.length === 0 && (socket.poll(this.fd, POLLRDHUP, 0) & (socket.POLLHUP | POLLRDHUP)) !== 0) return { kind: "closed" };
      return { kind: "message", bytes: this.#buffer.slice(0, n), fds };
    }
  }
}
