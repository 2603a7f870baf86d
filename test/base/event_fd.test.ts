import { expect, test } from "bun:test";
import { event, sys } from "../../ffi/mod.ts";
import { EventFd } from "../../src/base/event_fd.ts";

const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;

test("a peer's eventfd: reads and writes never block, even after the peer clears O_NONBLOCK on the file they share", () => {
  const raw = event.eventfd(0, 0); // blocking, as a peer might send it
  const e = EventFd.fromPeer(raw)!;
  expect(sys.fcntlIntRaw(raw, F_GETFL, 0) & O_NONBLOCK).toBe(O_NONBLOCK);
  // The peer, holding the same open file, makes it blocking again and fills the counter.
  sys.fcntlIntRaw(raw, F_SETFL, sys.fcntlIntRaw(raw, F_GETFL, 0) & ~O_NONBLOCK);
  expect(e.read()).toBe(0); // empty: a plain read would block here
  // 2^64 - 2, the most the counter holds (in two writes: 2^64 - 4096 is the nearest double below it).
  expect([event.eventfdWrite(raw, 2 ** 64 - 4096), event.eventfdWrite(raw, 4094)]).toEqual([0, 0]);
  expect(e.signal()).toBe(false); // full: a plain write would block here
  expect(e.read()).toBe(2 ** 64); // 2^64 - 2 as the nearest double
  expect(e.signal()).toBe(true);
  expect(e.read()).toBe(1);
  e.close();
});

test("an fd only written to (a call fd) is not probed: another anonymous inode there is taken, and its writes fail without blocking", () => {
  const epoll = event.epollCreate();
  const e = EventFd.fromPeer(epoll, false)!;
  expect(e).not.toBeNull();
  expect(e.signal()).toBe(false);
  e.close();
});

test("fromPeer takes eventfds only; anything else stays the caller's", () => {
  const [r, w] = sys.pipe();
  const epoll = event.epollCreate();
  for (const fd of [r, w, epoll]) {
    expect(EventFd.fromPeer(fd)).toBeNull();
    expect(sys.fcntlIntRaw(fd, F_GETFL, 0)).toBeGreaterThanOrEqual(0); // still open
    sys.close(fd);
  }
});
