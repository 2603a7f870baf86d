import { afterEach, describe, expect, test } from "bun:test";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { socket, sys } from "../../ffi/mod.ts";
import type { StreamSocket } from "../../src/base/stream_socket.ts";
import { listenUnix } from "../../src/base/unix_listener.ts";
import { MAX_HANDSHAKES, VsockBroker } from "../../src/devices/vsock_broker.ts";
import { CONNECTION_BUFFER } from "../../src/devices/virtio/vsock/connection.ts";
import { tempDir } from "../support/tsvm.ts";
import { TestLoop } from "../support/vhost_user_driver.ts";

const cleanup: (() => void)[] = [];
afterEach(() => {
  while (cleanup.length > 0) cleanup.pop()!();
});

function start(timeoutMs?: number) {
  const path = join(tempDir(), "v.sock");
  const broker = VsockBroker.listen(path, timeoutMs);
  if (!broker.ok) throw new Error(broker.error);
  cleanup.push(() => broker.value.close());
  const loop = new TestLoop();
  const delivered: { socket: StreamSocket; port: number }[] = [];
  broker.value.start(loop, (s, port) => delivered.push({ socket: s, port }));
  cleanup.push(() => {
    for (const d of delivered) d.socket.close();
  });
  const pump = (ms = 50): void => {
    const end = performance.now() + ms;
    do {
      socket.waitReadable(loop.wait.fd, 5);
      loop.pump();
    } while (performance.now() < end);
  };
  const client = (line?: string): number => {
    const fd = socket.unixConnect(path, socket.SOCK_STREAM);
    expect(fd).toBeGreaterThanOrEqual(0);
    cleanup.push(() => sys.close(fd));
    if (line !== undefined) sys.writeRaw(fd, new TextEncoder().encode(line));
    return fd;
  };
  /** Whether the broker closed the client's connection (it reads end of stream). */
  // (a reset, when the broker left bytes unread, counts as closed too)
  const dropped = (fd: number): boolean => socket.poll(fd, socket.POLLIN, 0) > 0 && sys.readRaw(fd, new Uint8Array(1)) <= 0;
  return { path, broker: broker.value, delivered, pump, client, dropped };
}

describe("VsockBroker", () => {
  test("a CONNECT line hands the socket and port over; the bytes after it stay in the socket", () => {
    const b = start();
    b.client("CONNECT 1234\nhello");
    b.pump();
    expect(b.delivered.map((d) => d.port)).toEqual([1234]);
    const rest = new Uint8Array(16);
    expect(b.delivered[0]!.socket.read(rest)).toBe(5);
    expect(new TextDecoder().decode(rest.subarray(0, 5))).toBe("hello");
  });

  test("the device's end of a host connection takes the guest's whole credit before a program that does not read yet blocks it, both ways of connecting", () => {
    const b = start();
    const listening = listenUnix(`${b.path}_77`, socket.SOCK_STREAM, "the test host program");
    if (!listening.ok) throw new Error(listening.error);
    cleanup.push(() => sys.close(listening.value));
    b.client("CONNECT 5\n");
    b.pump();
    const outgoing = b.broker.connect(77);
    if (!outgoing.ok) throw new Error(outgoing.error);
    cleanup.push(() => outgoing.value.close());
    const chunk = new Uint8Array(64 * 1024);
    for (const s of [b.delivered[0]!.socket, outgoing.value]) {
      let taken = 0;
      for (;;) {
        const n = s.send(chunk);
        if (n === "broken") throw new Error("the socket broke");
        taken += n;
        if (n < chunk.byteLength) break;
      }
      // The kernel's default (208 KiB here, net.core.wmem_default) takes less than one window.
      if (process.getuid?.() === 0) expect(taken).toBeGreaterThanOrEqual(CONNECTION_BUFFER);
      else expect(taken).toBeGreaterThan(0);
    }
  });

  test("a line that arrives in pieces is read whole", () => {
    const b = start();
    const fd = b.client("CONN");
    b.pump();
    sys.writeRaw(fd, new TextEncoder().encode("ECT 7\n"));
    b.pump();
    expect(b.delivered.map((d) => d.port)).toEqual([7]);
  });

  test("anything but CONNECT <port> is dropped: other words, a port out of range, an endless line, an early close", () => {
    const b = start();
    const bad = ["connect 5\n", "CONNECT\n", "CONNECT 4294967295\n", "CONNECT 99999999999\n", "CONNECT 5 6\n", `CONNECT ${"1".repeat(40)}`];
    const fds = bad.map((line) => b.client(line));
    const early = b.client("CONNECT 5");
    sys.close(early);
    cleanup.pop();
    b.pump(100);
    expect(b.delivered).toEqual([]);
    for (const fd of fds) expect(b.dropped(fd)).toBe(true);
  });

  test("a program that never finishes its line is dropped at the deadline", () => {
    const b = start(200);
    const fd = b.client("CONNECT 1");
    b.pump(50);
    expect(b.dropped(fd)).toBe(false);
    b.pump(300);
    expect(b.dropped(fd)).toBe(true);
  });

  test(`at most ${MAX_HANDSHAKES} programs wait at once; the next are turned away`, () => {
    const b = start();
    const waiting = Array.from({ length: MAX_HANDSHAKES }, () => {
      const fd = b.client("CONNECT");
      b.pump(5);
      return fd;
    });
    const extra = b.client();
    b.pump();
    expect(b.dropped(extra)).toBe(true);
    expect(waiting.some((fd) => b.dropped(fd))).toBe(false);
  });

  test("connect reaches <uds>_<port> without blocking, and says why when nobody listens", () => {
    const b = start();
    expect(b.broker.connect(5000).ok).toBe(false);
    const listening = listenUnix(`${b.path}_5000`, socket.SOCK_STREAM, "test");
    if (!listening.ok) throw new Error(listening.error);
    cleanup.push(() => sys.close(listening.value));
    const s = b.broker.connect(5000);
    expect(s.ok).toBe(true);
    if (s.ok) s.value.close();
    const refused = b.broker.connect(5001);
    expect(refused.ok ? "" : refused.error).toMatch(/failed to connect to .*v\.sock_5001: ENOENT/);
  });

  test("close removes its own socket but not a file that replaced it; a path that is not a socket is refused", () => {
    const b = start();
    b.broker.close();
    expect(existsSync(b.path)).toBe(false);
    const other = join(tempDir(), "plain");
    writeFileSync(other, "not a socket");
    const refused = VsockBroker.listen(other);
    expect(refused.ok ? "" : refused.error).toMatch(/exists and is not a socket/);
    expect(existsSync(other)).toBe(true);
  });
});
