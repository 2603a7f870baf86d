// socket.ts - bindings for c/socket.c: AF_UNIX sockets (seqpacket and stream) and SCM_RIGHTS.
import { checked } from "../src/base/errno.ts";
import { native } from "./lib.ts";

/** The most fds one message carries (TSVM_MAX_FDS in c/socket.c). */
export const MAX_FDS_PER_MESSAGE = 32;
export const SOCK_STREAM = 1;
export const SOCK_SEQPACKET = 5;
/** recvmsg/sendmsg flag: do not block. */
export const MSG_DONTWAIT = 0x40;
/** recvmsg flag: look at the data without taking it. */
export const MSG_PEEK = 0x02;
/** sendmsg flag: a peer that is gone gives EPIPE, not SIGPIPE. */
export const MSG_NOSIGNAL = 0x4000;
/** socket type flag: non-blocking from the start. */
export const SOCK_NONBLOCK = 0o4000;
export const SHUT_WR = 1;
export const POLLIN = 0x001;
export const POLLOUT = 0x004;
export const POLLERR = 0x008;
export const POLLHUP = 0x010;

/** Creates a connected AF_UNIX pair of `type` (close-on-exec). */
export function socketPair(type: number): [number, number] {
  const fds = new Int32Array(2);
  checked(native.tsvm_socketpair(type, fds), "create a socket pair");
  return [fds[0]!, fds[1]!];
}

/** Creates a connected SOCK_SEQPACKET pair (close-on-exec). */
export function seqpacketPair(): [number, number] {
  return socketPair(SOCK_SEQPACKET);
}

/** Sends `len` bytes of `buf` with `fds` attached; returns the bytes sent (fewer on a stream) or -errno. */
export function sendWithFds(fd: number, buf: Uint8Array, len: number, fds: Int32Array, flags = 0): number {
  return Number(native.tsvm_send_with_fds(fd, buf, len, fds.length > 0 ? fds : null, fds.length, flags));
}

/**
 * Receives one datagram, or up to `len` bytes of a stream, into `buf`; fds land in `fdsOut` and their
 * count in `countOut[0]` (the caller's to close, even when the result is an error). Returns bytes or -errno.
 */
export function recvWithFds(fd: number, buf: Uint8Array, fdsOut: Int32Array, countOut: Int32Array, flags = 0, len = buf.byteLength): number {
  return Number(native.tsvm_recv_with_fds(fd, buf, len, fdsOut, fdsOut.length, countOut, flags));
}

/** Listens on a new AF_UNIX socket of `type` at `path` (mode 0600); returns the fd or -errno. */
export function unixListen(path: string, type = SOCK_SEQPACKET): number {
  return native.tsvm_unix_listen(Buffer.from(`${path}\0`), type);
}

/** Connects to the AF_UNIX socket of `type` at `path`; returns the fd or -errno. */
export function unixConnect(path: string, type = SOCK_SEQPACKET): number {
  return native.tsvm_unix_connect(Buffer.from(`${path}\0`), type);
}

/** Accepts a connection (non-blocking, close-on-exec); returns the fd or -errno. */
export function accept(fd: number): number {
  return native.tsvm_accept(fd);
}

/** Sets the send buffer of socket `fd` to `bytes` (forced past net.core.wmem_max where allowed); 0 or -errno. */
export function setSendBuffer(fd: number, bytes: number): number {
  return native.tsvm_set_send_buffer(fd, bytes);
}

/** Waits up to `timeoutMs` for `fd` to be readable: 1 readable, 0 timed out, or -errno. */
export function waitReadable(fd: number, timeoutMs: number): number {
  return native.tsvm_wait_readable(fd, timeoutMs);
}

/** Waits up to `timeoutMs` for `events` on `fd`: the events seen (POLLHUP/POLLERR too), 0 on timeout, or -errno. */
export function poll(fd: number, events: number, timeoutMs: number): number {
  return native.tsvm_poll(fd, events, timeoutMs);
}

/** Shuts down `how` (SHUT_WR...) of a connected socket; returns 0 or -errno. */
export function shutdown(fd: number, how: number): number {
  return native.tsvm_shutdown(fd, how);
}
