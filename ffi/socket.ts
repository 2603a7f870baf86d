// socket.ts - bindings for c/socket.c: seqpacket pairs and SCM_RIGHTS.
import { checked } from "../src/base/errno.ts";
import { native } from "./lib.ts";

/** The most fds one message carries (TSVM_MAX_FDS in c/socket.c). */
export const MAX_FDS_PER_MESSAGE = 32;

/** Creates a connected SOCK_SEQPACKET pair (close-on-exec). */
export function seqpacketPair(): [number, number] {
  const fds = new Int32Array(2);
  checked(native.tsvm_seqpacket_pair(fds), "create seqpacket pair");
  return [fds[0]!, fds[1]!];
}

/** Sends one datagram of `len` bytes with `fds` attached; returns the bytes sent or -errno. */
export function sendWithFds(fd: number, buf: Uint8Array, len: number, fds: Int32Array): number {
  return Number(native.tsvm_send_with_fds(fd, buf, len, fds.length > 0 ? fds : null, fds.length));
}

/** Receives one datagram; fds land in `fdsOut`, their count in `countOut[0]`; returns bytes or -errno. */
export function recvWithFds(fd: number, buf: Uint8Array, fdsOut: Int32Array, countOut: Int32Array): number {
  return Number(native.tsvm_recv_with_fds(fd, buf, buf.byteLength, fdsOut, fdsOut.length, countOut));
}

/** Listens on a new AF_UNIX seqpacket socket at `path` (mode 0600); returns the fd or -errno. */
export function unixListen(path: string): number {
  return native.tsvm_unix_listen(Buffer.from(`${path}\0`));
}

/** Connects to the AF_UNIX seqpacket socket at `path`; returns the fd or -errno. */
export function unixConnect(path: string): number {
  return native.tsvm_unix_connect(Buffer.from(`${path}\0`));
}

/** Accepts a connection (non-blocking, close-on-exec); returns the fd or -errno. */
export function accept(fd: number): number {
  return native.tsvm_accept(fd);
}

/** Waits up to `timeoutMs` for `fd` to be readable: 1 readable, 0 timed out, or -errno. */
export function waitReadable(fd: number, timeoutMs: number): number {
  return native.tsvm_wait_readable(fd, timeoutMs);
}
