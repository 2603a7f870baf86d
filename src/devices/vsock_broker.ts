// vsock_broker.ts - the host side of a vsock device, kept out of the device: the Unix socket host
// programs connect to, and the connections the guest asks for.
//
// A jailed device can open nothing on the host, so the process that named the paths (the VMM, or
// `tsvm devices`) does it for the device (Firecracker's scheme):
//  - host -> guest: a program connects to `uds` and writes `CONNECT <port>\n`; the broker reads that
//    line (one byte at a time, so not a byte of what follows is taken), then hands the connected
//    socket and the port to the device, which asks the guest and, once the guest accepts, writes
//    `OK <host port>\n` to the program;
//  - guest -> host: the device asks the broker for host port P; the broker connects to `<uds>_P`
//    without blocking and hands the socket back (or the reason it could not).
// Programs that connect and never finish their line are dropped after HANDSHAKE_TIMEOUT_MS, and at
// most MAX_HANDSHAKES wait at once.
import { socket, sys } from "../../ffi/mod.ts";
import { err, ok, type Result } from "../base/result.ts";
import { OwnedFd } from "../base/owned_fd.ts";
import { acceptStream, connectStream, type StreamSocket } from "../base/stream_socket.ts";
import { Timer } from "../base/timer.ts";
import { listenUnix, SOCK_STREAM } from "../base/unix_listener.ts";
import type { DeviceEventLoop } from "./virtio/virtio_device.ts";
import type { VsockHost } from "./virtio/vsock/vsock.ts";
import { CONNECTION_BUFFER } from "./virtio/vsock/connection.ts";

export const HANDSHAKE_TIMEOUT_MS = 5000;
export const MAX_HANDSHAKES = 32;
/** "CONNECT 4294967294\n" is 19 bytes; a longer line is not one. */
const MAX_LINE = 32;
const CONNECT_LINE = /^CONNECT ([0-9]{1,10})$/;
const PORT_ANY = 0xffffffff;
/** sun_path holds 107 bytes and a NUL. */
const MAX_SOCKET_PATH = 107;

type Handshake = { readonly socket: StreamSocket; readonly deadline: number; line: string };

export class VsockBroker {
  readonly path: string;
  readonly #listening: OwnedFd;
  /** The socket file this broker made, as "dev:ino" (null: gone before it could be looked at). */
  readonly #identity: string | null;
  readonly #handshakes = new Map<number, Handshake>();
  readonly #handshakeTimeoutMs: number;
  readonly #timer = new Timer();
  #loop: DeviceEventLoop | null = null;
  #deliver: ((socket: StreamSocket, port: number) => void) | null = null;
  #closed = false;

  private constructor(path: string, listening: OwnedFd, handshakeTimeoutMs: number) {
    this.path = path;
    this.#listening = listening;
    this.#handshakeTimeoutMs = handshakeTimeoutMs;
    const st = sys.lstat(path);
    this.#identity = typeof st === "number" ? null /* gone already: nothing to remove at close */ : st.identity;
  }

  /** Listens on `path` (a stale socket there is replaced; anything else is refused). */
  static listen(path: string, handshakeTimeoutMs = HANDSHAKE_TIMEOUT_MS): Result<VsockBroker> {
    if (new TextEncoder().encode(path).length > MAX_SOCKET_PATH - 11) {
      return err(`the vsock socket path ${path} is too long (its per-port sockets add up to 11 bytes to ${MAX_SOCKET_PATH})`);
    }
    const fd = listenUnix(path, SOCK_STREAM, "the vsock socket");
    if (!fd.ok) return fd;
    return ok(new VsockBroker(path, new OwnedFd(fd.value), handshakeTimeoutMs));
  }

  /** The device's view of the host: connections to `<uds>_<port>`. */
  get host(): VsockHost {
    return { connect: (port, done) => done(this.connect(port)) };
  }

  /** Starts accepting host programs on `loop`; each finished handshake goes to `deliver`. */
  start(loop: DeviceEventLoop, deliver: (socket: StreamSocket, port: number) => void): void {
    this.#loop = loop;
    this.#deliver = deliver;
    loop.watch(this.#listening.fd, () => this.#accept());
    loop.watch(this.#timer.fd, () => this.#expire());
  }

  /** Connects to the host program serving vsock port `port` at `<uds>_<port>`, without blocking. */
  connect(port: number): Result<StreamSocket> {
    const s = connectStream(`${this.path}_${port}`);
    if (s.ok) sizeSendBuffer(s.value);
    return s;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#loop) {
      this.#loop.unwatch(this.#listening.fd);
      this.#loop.unwatch(this.#timer.fd);
      for (const fd of this.#handshakes.keys()) this.#loop.unwatch(fd);
    }
    for (const h of this.#handshakes.values()) h.socket.close();
    this.#handshakes.clear();
    this.#listening.close();
    this.#timer.close();
    // Remove the socket only if it is still the one we made.
    const st = sys.lstat(this.path);
    if (this.#identity !== null && typeof st !== "number" && st.identity === this.#identity) sys.unlink(this.path);
  }

  /** Takes one waiting connection (the listening socket blocks; the loop comes back while more wait). */
  #accept(): void {
    const s = acceptStream(this.#listening);
    if (s === null) return;
    if (this.#handshakes.size >= MAX_HANDSHAKES) {
      s.close();
      return;
    }
    sizeSendBuffer(s);
    const fd = s.fd;
    this.#handshakes.set(fd, { socket: s, deadline: performance.now() + this.#handshakeTimeoutMs, line: "" });
    if (this.#handshakes.size === 1) this.#timer.arm(this.#handshakeTimeoutMs);
    this.#loop!.watch(fd, () => this.#onHandshake(fd));
  }

  #onHandshake(fd: number): void {
    const h = this.#handshakes.get(fd);
    if (h === undefined) return;
    const byte = new Uint8Array(1);
    for (;;) {
      const n = h.socket.read(byte);
      if (n === "again") return;
      if (n !== 1 || h.line.length >= MAX_LINE) return this.#drop(fd);
      if (byte[0] !== 0x0a) {
        h.line += String.fromCharCode(byte[0]!);
        continue;
      }
      const m = CONNECT_LINE.exec(h.line);
      const port = m ? Number(m[1]) : -1;
      if (port < 0 || port >= PORT_ANY) return this.#drop(fd);
      this.#loop!.unwatch(fd);
      this.#handshakes.delete(fd);
      this.#deliver!(h.socket, port);
      return;
    }
  }

  #drop(fd: number): void {
    const h = this.#handshakes.get(fd);
    if (h === undefined) return;
    this.#loop!.unwatch(fd);
    this.#handshakes.delete(fd);
    h.socket.close();
  }

  #expire(): void {
    this.#timer.clear();
    const now = performance.now();
    let next = Infinity;
    for (const [fd, h] of [...this.#handshakes]) {
      if (h.deadline <= now) this.#drop(fd);
      else next = Math.min(next, h.deadline);
    }
    if (next !== Infinity) this.#timer.arm(next - now);
  }
}

/**
 * The send buffer of the device's end of each host connection: the credit the device offers the
 * guest (CONNECTION_BUFFER), which the kernel doubles for its bookkeeping, so what the guest may send
 * ahead fits in the socket and waits in the device's own ring only when the host program falls
 * that far behind. With the kernel's default (208 KiB, below one window) the device kept copying
 * into its ring and waiting for the program to read: 1 MiB guest->host took 2.2-3.0 ms (medians of
 * 5 rounds, three runs) against 1.7-2.2 with it; the host socket pair's 1.1-1.2. A program that never
 * reads holds up to twice this in the kernel per connection, MAX_CONNECTIONS at most. Forced past
 * net.core.wmem_max where the VMM may (root); elsewhere the kernel caps it there.
 */
export const HOST_SEND_BUFFER = CONNECTION_BUFFER;
function sizeSendBuffer(s: StreamSocket): void {
  socket.setSendBuffer(s.fd, HOST_SEND_BUFFER); // a size, not a need: the default works, slower
}
