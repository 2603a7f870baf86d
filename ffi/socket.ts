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
