import { expect, test } from "bun:test";
import { socket, sys } from "../../ffi/mod.ts";
import { EventFd } from "../../src/base/event_fd.ts";

test("a seqpacket pair carries one datagram and an fd that refers to the same eventfd", () => {
  const [a, b] = socket.seqpacketPair();
  using event = new EventFd();
  const message = Uint8Array.of(1, 2, 3);
  expect(socket.sendWithFds(a, message, message.byteLength, Int32Array.of(event.fd))).toBe(3);
  const buf = new Uint8Array(16);
  const fds = new Int32Array(4);
  const count = new Int32Array(1);
  expect(socket.recvWithFds(b, buf, fds, count)).toBe(3);
  expect([...buf.subarray(0, 3), count[0]]).toEqual([1, 2, 3, 1]);
  const received = new EventFd(fds[0]!);
  received.signal(7);
  expect(event.read()).toBe(7);
  for (const fd of [a, b, fds[0]!]) sys.close(fd);
});
