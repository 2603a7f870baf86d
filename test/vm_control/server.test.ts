// The control socket's server against clients that misbehave: too many, leaving before their answer,
// never reading their answers; and a socket file that is no longer ours.
import { afterEach, expect, test } from "bun:test";
import { existsSync, readdirSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { socket, sys } from "../../ffi/mod.ts";
import { Tube } from "../../src/base/tube.ts";
import { decodeResponse, encodeRequest } from "../../src/vm_control/messages.ts";
import { ControlServer, encodeFitting, MAX_CONTROL_CLIENTS, serveControl } from "../../src/vm_control/server.ts";
import { ControlLoop } from "../../src/vmm/control_loop.ts";
import { tempDir } from "../support/tsvm.ts";

const openFds = (): number => readdirSync("/proc/self/fd").length;
const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanup.splice(0)) c();
});

/** A server on a fresh path whose every request is answered "ok" at once, and its loop. */
function serve(): { path: string; loop: ControlLoop; server: ControlServer; pump: () => void } {
  const path = join(tempDir(), "vm.sock");
  const loop = new ControlLoop();
  const server = ControlServer.listen(path);
  serveControl(loop, server, (_request, respond) => respond({ kind: "ok" }));
  cleanup.push(() => {
    server.close();
    loop.close();
  });
  return { path, loop, server, pump: () => { while (loop.turn(0) > 0); } };
}

const hungUp = (fd: number): boolean => (socket.poll(fd, socket.POLLIN, 0) & socket.POLLHUP) !== 0;

test(`clients beyond ${MAX_CONTROL_CLIENTS} are closed at once; those in are answered`, () => {
  const { path, pump } = serve();
  const clients = Array.from({ length: MAX_CONTROL_CLIENTS + 4 }, () => socket.unixConnect(path));
  pump();
  expect(clients.map(hungUp)).toEqual([...new Array(MAX_CONTROL_CLIENTS).fill(false), true, true, true, true]);
  const tube = new Tube(clients[0]!);
  tube.send(encodeRequest({ kind: "balloon_stats" }));
  pump();
  const reply = tube.receive(1000);
  expect(reply.kind === "message" && decodeResponse(reply.bytes)).toEqual({ ok: true, value: { kind: "ok" } });
  for (const fd of clients) sys.close(fd);
});

test("a client that leaves before its answer, or never reads its answers, is dropped and leaves nothing behind", () => {
  const { path, loop, pump } = serve();
  pump();
  const before = openFds();
  const watched = loop.watchedFds;
  for (let i = 0; i < 50; i++) {
    const fd = socket.unixConnect(path);
    new Tube(fd).send(encodeRequest({ kind: "resume" }));
    sys.close(fd); // gone before the answer: sending it fails
    pump();
  }
  // One that sends and never reads: its socket fills, the answer cannot go, it is dropped.
  const flooder = socket.unixConnect(path);
  const tube = new Tube(flooder);
  for (let i = 0; i < 2000 && !hungUp(flooder); i++) {
    try {
      tube.send(encodeRequest({ kind: "resume" }));
    } catch {
      break; // our own end is full: the server stopped reading us
    }
    pump();
  }
  pump();
  expect(hungUp(flooder)).toBe(true);
  sys.close(flooder);
  pump();
  expect([openFds(), loop.watchedFds]).toEqual([before, watched]);
  // Still serving.
  const fd = socket.unixConnect(path);
  const good = new Tube(fd);
  good.send(encodeRequest({ kind: "stop" }));
  pump();
  expect(good.receive(1000).kind).toBe("message");
  sys.close(fd);
});

test("closing removes the socket file only while it is still the one it made", () => {
  const { path, server } = serve();
  renameSync(path, `${path}.moved`);
  writeFileSync(path, "another VM's file");
  server.close();
  expect(existsSync(path)).toBe(true);
  const second = ControlServer.listen(join(tempDir(), "b.sock"));
  second.close();
  expect(existsSync(second.path)).toBe(false);
});

test("an answer too long for one message still goes: an error cut short, anything else an error saying so", () => {
  const long = encodeFitting({ kind: "error", message: "x".repeat(10_000) });
  expect(long.byteLength).toBeLessThanOrEqual(4096);
  const decoded = decodeResponse(long);
  expect(decoded.ok && decoded.value.kind === "error" && decoded.value.message.endsWith("...")).toBe(true);
  const stats = decodeResponse(encodeFitting({ kind: "balloon_stats", json: "{}".padEnd(5000) }));
  expect(stats.ok && stats.value.kind === "error" && stats.value.message).toMatch(/balloon_stats answer is \d+ bytes, more than a control message holds/);
});
