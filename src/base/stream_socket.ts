// stream_socket.ts - a connected, non-blocking stream socket whose reads and writes never block,
// throw or raise SIGPIPE: each says what happened instead.
import { socket, sys } from "../../ffi/mod.ts";
import { ERRNO, errnoName } from "./errno.ts";
import { OwnedFd } from "./owned_fd.ts";
import { err, ok, type Result } from "./result.ts";

const NO_FDS = new Int32Array(0);
const O_NONBLOCK = 0o4000;

/** What a read came to: bytes read, nothing there yet, the peer's end of stream, or a broken socket. */
export type SocketRead = number | "again" | "eof" | "broken";

export class StreamSocket extends OwnedFd {
  /** Wraps `fd` (a connected stream socket), making it non-blocking. */
  static adopt(fd: number): StreamSocket {
    sys.addFileFlags(fd, O_NONBLOCK);
    return new StreamSocket(fd);
  }

  /** Sends what the socket takes now: the byte count (0 when it is full), or "broken" (the peer is gone). */
  send(bytes: Uint8Array): number | "broken" {
    if (bytes.byteLength === 0) return 0;
    for (;;) {
      const n = socket.sendWithFds(this.fd, bytes, bytes.byteLength, NO_FDS, socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT);
      if (n >= 0) return n;
      if (n === -ERRNO.EINTR) continue;
      return n === -ERRNO.EAGAIN ? 0 : "broken";
    }
  }

  /** Reads into `into` (fds a peer attached are discarded by the kernel, never received). */
  read(into: Uint8Array): SocketRead {
    if (into.byteLength === 0) return 0;
    for (;;) {
      const n = sys.readRaw(this.fd, into);
      if (n > 0) return n;
      if (n === 0) return "eof";
      if (n === -ERRNO.EINTR) continue;
      return n === -ERRNO.EAGAIN ? "again" : "broken";
    }
  }

  /** Tells the peer no more bytes will come (SHUT_WR); reading goes on. */
  shutdownWrite(): void {
    socket.shutdown(this.fd, socket.SHUT_WR);
  }
}

/** Connects to the Unix stream socket at `path` without blocking (a full backlog is an error, not a wait). */
export function connectStream(path: string): Result<StreamSocket> {
  const fd = socket.unixConnect(path, socket.SOCK_STREAM | socket.SOCK_NONBLOCK);
  return fd < 0 ? err(`failed to connect to ${path}: ${errnoName(-fd)}`) : ok(new StreamSocket(fd));
}

/** Accepts the next connection waiting on the listening socket `listening`, or null when none waits. */
export function acceptStream(listening: OwnedFd): StreamSocket | null {
  const fd = socket.accept(listening.fd);
  return fd < 0 ? null : new StreamSocket(fd);
}
