// connection.ts - vhost-user messages over a non-blocking AF_UNIX stream socket, with their fds.
//
// Reading is incremental: `readMessage` makes what progress the socket allows and returns a whole
// message only when its header and payload have arrived, so a peer that sends half a message cannot
// block the loop that reads it. Each read asks for exactly the bytes the current message still
// needs, so the fds that arrive during its reads are its own. Writing waits for room up to a
// deadline. Nothing here throws on what the peer sends.
import { socket, sys } from "../../../ffi/mod.ts";
import { ERRNO, errnoName } from "../../base/errno.ts";
import { OwnedFd } from "../../base/owned_fd.ts";
import { err, ok, type Result } from "../../base/result.ts";
import {
  encodeMessage, VHOST_USER_HEADER_SIZE, VHOST_USER_MAX_FDS, VHOST_USER_MAX_PAYLOAD, VHOST_USER_VERSION, type VhostUserMessage,
} from "./protocol.ts";

const O_NONBLOCK = 0o4000;
const NO_FDS = new Int32Array(0);

/** Why a connection cannot go on. */
export type ConnectionError =
  | { readonly kind: "closed" }
  | { readonly kind: "io"; readonly errno: number }
  | { readonly kind: "malformed"; readonly reason: string }
  | { readonly kind: "timeout" };

/** Describes a ConnectionError in a log line's words. */
export function describeConnectionError(e: ConnectionError): string {
  switch (e.kind) {
    case "closed": return "the peer closed the connection";
    case "io": return `socket error ${errnoName(e.errno)}`;
    case "malformed": return `malformed message: ${e.reason}`;
    case "timeout": return "the peer did not answer in time";
  }
}

/** One end of a vhost-user connection (or of its back-end channel). */
export class VhostUserConnection extends OwnedFd {
  readonly #header = new Uint8Array(VHOST_USER_HEADER_SIZE);
  readonly #headerView = new DataView(this.#header.buffer);
  readonly #fdsIn = new Int32Array(socket.MAX_FDS_PER_MESSAGE);
  readonly #fdCount = new Int32Array(1);
  #headerDone = 0;
  #payload: Uint8Array | null = null;
  #payloadDone = 0;
  #pendingFds: number[] = [];

  /** Takes `fd` (a connected stream socket) and makes it non-blocking. */
  constructor(fd: number) {
    super(fd);
    sys.addFileFlags(fd, O_NONBLOCK);
  }

  /**
   * Reads what the socket holds toward the next message; returns it once complete, null while more
   * bytes are needed, or why the connection is over (the peer closed it, or sent something malformed).
   */
  readMessage(): Result<VhostUserMessage | null, ConnectionError> {
    for (;;) {
      const inHeader = this.#payload === null;
      const target = inHeader ? this.#header : this.#payload!;
      const done = inHeader ? this.#headerDone : this.#payloadDone;
      if (done < target.byteLength) {
        const n = socket.recvWithFds(this.fd, target.subarray(done), this.#fdsIn, this.#fdCount, socket.MSG_DONTWAIT);
        this.#takeFds();
        if (n === -ERRNO.EINTR) continue;
        if (n === -ERRNO.EAGAIN) return ok(null);
        if (n === 0 || n === -ERRNO.ECONNRESET) return this.#fail({ kind: "closed" });
        if (n < 0) return this.#fail({ kind: "io", errno: -n });
        if (this.#pendingFds.length > VHOST_USER_MAX_FDS) return this.#fail({ kind: "malformed", reason: `more than ${VHOST_USER_MAX_FDS} fds with one message` });
        if (inHeader) this.#headerDone += n;
        else this.#payloadDone += n;
        continue;
      }
      if (inHeader) {
        const size = this.#headerView.getUint32(8, true);
        const flags = this.#headerView.getUint32(4, true);
        if ((flags & 3) !== VHOST_USER_VERSION) return this.#fail({ kind: "malformed", reason: `protocol version ${flags & 3}` });
        if (size > VHOST_USER_MAX_PAYLOAD) return this.#fail({ kind: "malformed", reason: `a payload of ${size} bytes (at most ${VHOST_USER_MAX_PAYLOAD})` });
        this.#payload = new Uint8Array(size);
        this.#payloadDone = 0;
        continue;
      }
      const message: VhostUserMessage = {
        request: this.#headerView.getUint32(0, true),
        flags: this.#headerView.getUint32(4, true),
        payload: this.#payload!,
        fds: this.#pendingFds,
      };
      this.#headerDone = 0;
      this.#payload = null;
      this.#pendingFds = [];
      return ok(message);
    }
  }

  /** Waits up to `timeoutMs` for a whole message (for replies a front-end expects). */
  receive(timeoutMs: number): Result<VhostUserMessage, ConnectionError> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const r = this.readMessage();
      if (!r.ok) return r;
      if (r.value !== null) return ok(r.value);
      const left = Math.ceil(deadline - performance.now());
      if (left <= 0) return err({ kind: "timeout" });
      const polled = socket.poll(this.fd, socket.POLLIN, left);
      if (polled < 0 && polled !== -ERRNO.EINTR) return err({ kind: "io", errno: -polled });
    }
  }

  /** Sends one message with `fds`, waiting up to `timeoutMs` for room in the socket. */
  send(request: number, flags: number, payload: Uint8Array, fds: readonly number[] = [], timeoutMs = 5000): Result<null, ConnectionError> {
    const bytes = encodeMessage(request, flags, payload);
    const deadline = performance.now() + timeoutMs;
    let sent = 0;
    let attached = fds.length === 0 ? NO_FDS : Int32Array.from(fds);
    while (sent < bytes.byteLength) {
      const n = socket.sendWithFds(this.fd, bytes.subarray(sent), bytes.byteLength - sent, attached, socket.MSG_DONTWAIT);
      if (n === -ERRNO.EINTR) continue;
      if (n === -ERRNO.EAGAIN) {
        const left = Math.ceil(deadline - performance.now());
        if (left <= 0) return err({ kind: "timeout" });
        socket.poll(this.fd, socket.POLLOUT, left);
        continue;
      }
      if (n === -ERRNO.EPIPE || n === -ERRNO.ECONNRESET) return err({ kind: "closed" });
      if (n < 0) return err({ kind: "io", errno: -n });
      sent += n;
      attached = NO_FDS; // the fds went with the first bytes
    }
    return ok(null);
  }

  override close(): void {
    for (const fd of this.#pendingFds) sys.close(fd);
    this.#pendingFds = [];
    super.close();
  }

  #takeFds(): void {
    const count = this.#fdCount[0]!;
    for (let i = 0; i < count; i++) this.#pendingFds.push(this.#fdsIn[i]!);
    this.#fdCount[0] = 0;
  }

  #fail(e: ConnectionError): Result<never, ConnectionError> {
    for (const fd of this.#pendingFds) sys.close(fd);
    this.#pendingFds = [];
    return err(e);
  }
}

/** Closes every fd of a message (once its handler is done with the ones it did not keep). */
export function closeFds(fds: readonly number[]): void {
  for (const fd of fds) sys.close(fd);
}
