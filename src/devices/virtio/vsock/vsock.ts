// vsock.ts - virtio-vsock (virtio 1.2 §5.10): stream sockets between the guest and host programs,
// mapped to host Unix stream sockets as Firecracker defines it.
//
// The device never opens anything on the host. Its `VsockHost` connects for it when the guest asks
// for a host port (the VMM connects to `<uds>_<port>`), and hands it the sockets of host programs
// that asked for a guest port (`acceptHost`). Inside, every host socket sits in one edge-triggered
// epoll set that the device's loop watches as one fd; a timer bounds how long a guest may leave a
// host program's request unanswered. Queues: 0 rx (to the guest), 1 tx (from it), 2 events (unused:
// tsvm never migrates a guest or changes its CID).
import type { Result } from "../../../base/result.ts";
import type { StreamSocket } from "../../../base/stream_socket.ts";
import { Timer } from "../../../base/timer.ts";
import { EPOLLET, EPOLLIN, EPOLLOUT, EPOLLRDHUP, WaitContext } from "../../../base/wait_context.ts";
import { mapForWriting } from "../../../memory/mod.ts";
import { ChainReader, ChainWriter, type DescriptorChain } from "../descriptor_chain.ts";
import { type ControllableDevice, type DeviceCommand, type DeviceReply, unsupported, type VsockStats } from "../device_control.ts";
import { drainQueue } from "../drain.ts";
import type { Queue } from "../queue.ts";
import { type ActivateContext, TSVM_RING_FEATURES, VIRTIO_ID, type VirtioDevice, type VirtioWorker } from "../virtio_device.ts";
import { Connection, CONNECTION_BUFFER, connectionKey } from "./connection.ts";
import {
  decodeHeader, HEADER_SIZE, headerView, HOST_CID, type PacketHeader, SHUTDOWN_RCV, SHUTDOWN_SEND, VSOCK_OP, VSOCK_TYPE_STREAM, writeHeader,
} from "./packet.ts";

const QUEUE_SIZE = 256;
const RX = 0;
const TX = 1;
/** struct virtio_vsock_config { le64 guest_cid; } */
const CONFIG_SIZE = 8;
/** VIRTIO_VSOCK_F_STREAM (virtio 1.2): stream sockets; the only kind tsvm offers. */
const VIRTIO_VSOCK_F_STREAM = 0n;
/** Connections one device carries at once (guest- and host-initiated together); more are refused. */
export const MAX_CONNECTIONS = 128;
/** How long a guest may take to answer a host program's connection request. */
export const GUEST_ANSWER_TIMEOUT_MS = 2000;
/** The most payload one packet to the guest carries (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE). */
const MAX_PAYLOAD = 64 * 1024;
/**
 * Resets waiting for rx buffers (answers to packets of unknown connections, ends of connections that
 * failed); beyond this they are dropped, so a guest that posts no rx buffers cannot grow the backlog.
 */
export const MAX_QUEUED_RESETS = 256;
/** The first host port tsvm gives a host-initiated connection (Firecracker's choice too). */
const FIRST_HOST_PORT = 1 << 30;
/** Packets to the guest per wake-up before the loop serves its other fds. */
const PACKETS_PER_WAKEUP = 256;
/**
 * Rings for guest data waiting on slow host readers that a device keeps for its next connections
 * (one made when the driver starts it); more are made while more connections are open at once.
 */
const SPARE_RINGS = 4;
/** A port number no connection may use (VMADDR_PORT_ANY). */
const PORT_ANY = 0xffffffff;

/** What the device asks of its host: connections to host programs listening for the guest. */
export type VsockHost = {
  /** Connects to the host program serving vsock port `port`; `done` may run before this returns. */
  connect(port: number, done: (socket: Result<StreamSocket>) => void): void;
};

type Counters = { -readonly [K in Exclude<keyof VsockStats, "cid" | "connections">]: number };

/** A packet waiting for an rx buffer: its operation, and the connection it belongs to (or its ports). */
type Outgoing = {
  readonly op: number;
  readonly flags: number;
  readonly guestPort: number;
  readonly hostPort: number;
  /** The connection whose credit the packet carries (null: none, as for a reset). */
  readonly connection: Connection | null;
  /** A reset (these are bounded: MAX_QUEUED_RESETS). */
  readonly reset: boolean;
};

export class Vsock implements VirtioDevice, ControllableDevice {
  readonly debugLabel = "vsock";
  readonly deviceType = VIRTIO_ID.VSOCK;
  readonly queueMaxSizes = [QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE];
  readonly features = TSVM_RING_FEATURES | (1n << VIRTIO_VSOCK_F_STREAM);
  readonly configSize = CONFIG_SIZE;
  readonly counters: Counters = { hostInitiated: 0, guestInitiated: 0, refused: 0, resets: 0, malformed: 0, bytesToGuest: 0, bytesFromGuest: 0 };
  #worker: VsockWorker | null = null;

  /** `cid` is the guest's address (3 and up, below 2^32 - 1); `host` connects for the guest. */
  constructor(readonly cid: number, readonly host: VsockHost) {}

  readConfig(offset: number, data: Uint8Array): void {
    const config = new DataView(new ArrayBuffer(CONFIG_SIZE));
    config.setBigUint64(0, BigInt(this.cid), true);
    for (let i = 0; i < data.byteLength; i++) data[i] = offset + i < CONFIG_SIZE ? config.getUint8(offset + i) : 0;
  }

  writeConfig(): void {}

  /** A host program wants guest port `port` on `socket`; refused (closed) unless the guest's driver runs. */
  acceptHost(socket: StreamSocket, port: number): void {
    if (this.#worker === null) {
      this.counters.refused++;
      socket.close();
      return;
    }
    this.#worker.acceptHost(socket, port);
  }

  stats(): VsockStats {
    return { cid: this.cid, connections: this.#worker?.connectionCount ?? 0, ...this.counters };
  }

  control(command: DeviceCommand): DeviceReply {
    if (command.kind !== "vsock_stats") return unsupported("vsock", command);
    return { kind: "vsock_stats", stats: this.stats() };
  }

  activate(ctx: ActivateContext): VirtioWorker {
    const worker = new VsockWorker(this, ctx);
    this.#worker = worker;
    return {
      stop: () => {
        worker.stop();
        if (this.#worker === worker) this.#worker = null;
      },
    };
  }
}

/** The running device: its connections, the host sockets' epoll set, and the rx backlog. */
class VsockWorker {
  readonly #device: Vsock;
  readonly #ctx: ActivateContext;
  readonly #rx: Queue | null;
  readonly #tx: Queue | null;
  readonly #connections = new Map<string, Connection>();
  readonly #hostSockets = new WaitContext<Connection>();
  readonly #timer = new Timer();
  /** Control packets for the guest, oldest first. */
  readonly #outgoing: Outgoing[] = [];
  #queuedResets = 0;
  /** Connections whose host socket has data the guest can take (in turn). */
  readonly #sending = new Set<Connection>();
  /** Connections that owe the guest a credit update. */
  readonly #creditUpdates = new Set<Connection>();
  /** Rings for the next connections' host-bound data (Connection.useHostBuffer), made off any connection's path. */
  readonly #spareRings: Uint8Array[] = [new Uint8Array(CONNECTION_BUFFER)];
  #nextHostPort = FIRST_HOST_PORT;
  /**
   * The header being read from the guest or made for it, reused: on the path of every packet,
   * allocations and copies cost more than the work, the more as this device's code mostly runs in
   * JSC's interpreter (in_process_jsc.ts).
   */
  readonly #headerBytes = new Uint8Array(HEADER_SIZE);
  readonly #headerView = headerView(this.#headerBytes);
  /** The connection of the last packet from the guest (most packets belong to the one before's). */
  #lastConnection: Connection | null = null;
  /** When the timer fires (0: disarmed). */
  #timerAt = 0;
  #stopped = false;

  constructor(device: Vsock, ctx: ActivateContext) {
    this.#device = device;
    this.#ctx = ctx;
    this.#rx = ctx.queues[RX] ?? null;
    this.#tx = ctx.queues[TX] ?? null;
    try {
      ctx.loop.watch(ctx.kicks[RX]!.fd, () => {
        ctx.kicks[RX]!.read();
        this.#fillRx();
      });
      ctx.loop.watch(ctx.kicks[TX]!.fd, () => this.#onTx());
      ctx.loop.watch(this.#hostSockets.fd, () => this.#onHostSockets());
      ctx.loop.watch(this.#timer.fd, () => this.#onTimer());
    } catch (e) {
      this.stop(); // unwatches what was watched and closes the epoll set and the timer
      throw e;
    }
    this.#onTx(); // packets queued before DRIVER_OK
  }

  get connectionCount(): number {
    return this.#connections.size;
  }

  acceptHost(socket: StreamSocket, port: number): void {
    if (this.#connections.size >= MAX_CONNECTIONS || port === PORT_ANY) {
      this.#device.counters.refused++;
      socket.close();
      return;
    }
    let hostPort = this.#nextHostPort;
    while (this.#connections.has(connectionKey(port, hostPort))) hostPort = hostPort === PORT_ANY - 1 ? FIRST_HOST_PORT : hostPort + 1;
    this.#nextHostPort = hostPort === PORT_ANY - 1 ? FIRST_HOST_PORT : hostPort + 1;
    const c = new Connection(port, hostPort, "guest_requested");
    this.#attachHost(c, socket);
    this.#connections.set(c.key, c);
    this.#device.counters.hostInitiated++;
    this.#send(c, VSOCK_OP.REQUEST);
    this.#fillRx();
  }

  stop(): void {
    this.#stopped = true;
    const { loop, kicks } = this.#ctx;
    loop.unwatch(kicks[RX]!.fd);
    loop.unwatch(kicks[TX]!.fd);
    loop.unwatch(this.#hostSockets.fd);
    loop.unwatch(this.#timer.fd);
    for (const c of this.#connections.values()) c.close();
    this.#connections.clear();
    this.#lastConnection = null;
    this.#spareRings.length = 0;
    this.#sending.clear();
    this.#creditUpdates.clear();
    this.#outgoing.length = 0;
    this.#hostSockets.close();
    this.#timer.close();
  }

  // ---- from the guest ----

  #onTx(): void {
    const kick = this.#ctx.kicks[TX]!;
    kick.read();
    if (this.#tx === null) return;
    drainQueue(this.#tx, kick, this.#ctx.interrupt, this.#ctx.needsReset, this.#takePacket);
    this.#fillRx();
  }

  /** drainQueue's handler for the tx queue, made once. */
  readonly #takePacket = (chain: DescriptorChain): number => {
    this.#onPacket(chain);
    return 0; // the device writes nothing into transmit buffers
  };

  #onPacket(chain: DescriptorChain): void {
    const reader = new ChainReader(chain);
    if (!reader.read(this.#headerBytes)) {
      this.#device.counters.malformed++;
      return;
    }
    const h = decodeHeader(this.#headerBytes, this.#headerView);
    const counters = this.#device.counters;
    // A packet claiming another source is not the guest's to send: drop it without an answer.
    if (h.srcCid !== this.#device.cid) {
      counters.malformed++;
      return;
    }
    if (h.dstCid !== HOST_CID || h.type !== VSOCK_TYPE_STREAM || h.dstPort === PORT_ANY || h.srcPort === PORT_ANY) {
      if (h.op !== VSOCK_OP.RST) this.#strayReset(h);
      return;
    }
    const last = this.#lastConnection;
    const c = last !== null && last.guestPort === h.srcPort && last.hostPort === h.dstPort ? last : this.#connections.get(connectionKey(h.srcPort, h.dstPort));
    if (c === undefined) {
      if (h.op === VSOCK_OP.REQUEST) this.#guestConnects(h);
      else if (h.op !== VSOCK_OP.RST) this.#strayReset(h);
      return;
    }
    this.#lastConnection = c;
    c.peerBufAlloc = h.bufAlloc;
    c.peerFwdCnt = h.fwdCnt;
    if (c.peerCredit > 0) c.creditRequested = false;
    switch (h.op) {
      case VSOCK_OP.RW: {
        if (c.state !== "established" || (c.guestShutdown & SHUTDOWN_SEND) !== 0) return this.#reset(c);
        if (h.len > reader.remaining) {
          counters.malformed++;
          return this.#reset(c);
        }
        // Beyond the credit we offered: the guest broke the protocol, and no byte of it is kept.
        if (c.pendingBytes + h.len > CONNECTION_BUFFER) return this.#reset(c);
        const views = reader.take(h.len) ?? [];
        const before = c.bytesFromGuest;
        const written = c.writeToHost(views);
        counters.bytesFromGuest += c.bytesFromGuest - before;
        if (written === "broken") return this.#reset(c);
        if (c.owesCreditUpdate) this.#creditUpdates.add(c);
        break;
      }
      case VSOCK_OP.RESPONSE:
        if (c.state !== "guest_requested") return this.#reset(c);
        c.state = "established";
        c.deadline = 0;
        if (!c.writeControlLine(`OK ${c.hostPort}\n`)) return this.#reset(c);
        break;
      case VSOCK_OP.RST:
        this.#drop(c);
        break;
      case VSOCK_OP.SHUTDOWN:
        c.guestShutdown |= h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
        if (c.guestShutdown === (SHUTDOWN_RCV | SHUTDOWN_SEND)) {
          // The guest is done: what the host has not taken is lost with the connection, as on Linux.
          return this.#reset(c);
        }
        if ((c.guestShutdown & SHUTDOWN_SEND) !== 0 && c.pendingBytes === 0) c.host?.shutdownWrite();
        if ((c.guestShutdown & SHUTDOWN_RCV) !== 0) this.#sending.delete(c);
        break;
      case VSOCK_OP.CREDIT_UPDATE:
        break;
      case VSOCK_OP.CREDIT_REQUEST:
        this.#creditUpdates.add(c);
        break;
      case VSOCK_OP.REQUEST: // a second request on a live connection
      default:
        counters.malformed++;
        return this.#reset(c);
    }
    // Any header may have brought credit (unless the packet ended the connection: #drop forgets it).
    if (this.#lastConnection === c) this.#wantToSend(c);
  }

  /** The guest asks to connect to host port `h.dstPort`. */
  #guestConnects(h: PacketHeader): void {
    if (this.#connections.size >= MAX_CONNECTIONS) {
      this.#device.counters.refused++;
      return this.#strayReset(h);
    }
    const c = new Connection(h.srcPort, h.dstPort, "host_connecting");
    c.peerBufAlloc = h.bufAlloc;
    c.peerFwdCnt = h.fwdCnt;
    this.#connections.set(c.key, c);
    this.#device.counters.guestInitiated++;
    this.#device.host.connect(h.dstPort, (result) => {
      const current = this.#connections.get(c.key);
      if (this.#stopped || current !== c || c.state !== "host_connecting") {
        if (result.ok) result.value.close(); // the guest gave up (or the device stopped) meanwhile
        return;
      }
      if (!result.ok) {
        this.#device.counters.refused++;
        this.#reset(c);
      } else {
        this.#attachHost(c, result.value);
        c.state = "established";
        this.#send(c, VSOCK_OP.RESPONSE);
      }
      this.#fillRx();
    });
  }

  // ---- from host sockets ----

  #attachHost(c: Connection, socket: StreamSocket): void {
    c.host = socket;
    c.useHostBuffer(this.#spareRings.pop() ?? new Uint8Array(CONNECTION_BUFFER));
    this.#hostSockets.add(socket.fd, c, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET);
  }

  #onHostSockets(): void {
    for (const e of this.#hostSockets.wait(0)) {
      const c = e.token;
      if (c.host === null) continue;
      if (e.writable && c.pendingBytes > 0) {
        const r = c.flushToHost();
        if (r === "broken") {
          this.#reset(c);
          continue;
        }
        if (c.owesCreditUpdate) this.#creditUpdates.add(c);
        if (r === "done" && (c.guestShutdown & SHUTDOWN_SEND) !== 0) c.host.shutdownWrite();
      }
      if (e.readable || e.hungUp) {
        c.hostReadable = true;
        if (c.state === "guest_requested" && e.hungUp) {
          // The host program gave up before the guest answered.
          this.#reset(c);
          continue;
        }
        this.#wantToSend(c);
      }
    }
    this.#fillRx();
  }

  #wantToSend(c: Connection): void {
    if (c.state === "established" && c.hostReadable && !c.hostDone && (c.guestShutdown & SHUTDOWN_RCV) === 0) this.#sending.add(c);
  }

  #onTimer(): void {
    this.#timer.clear();
    this.#timerAt = 0;
    const now = performance.now();
    for (const c of [...this.#connections.values()]) {
      if (c.state !== "guest_requested" || c.deadline === 0) continue;
      if (c.deadline <= now) this.#reset(c);
      else this.#armTimer(c.deadline);
    }
    this.#fillRx();
  }

  /** Makes the timer fire by `deadline` (keeping an earlier arming). */
  #armTimer(deadline: number): void {
    if (this.#timerAt !== 0 && this.#timerAt <= deadline) return;
    this.#timerAt = deadline;
    this.#timer.arm(deadline - performance.now());
  }

  // ---- to the guest ----

  #send(c: Connection, op: number, flags = 0): void {
    this.#outgoing.push({ op, flags, guestPort: c.guestPort, hostPort: c.hostPort, connection: c, reset: false });
  }

  /** Answers a packet that belongs to no connection with a reset. */
  #strayReset(h: PacketHeader): void {
    this.#queueReset(h.srcPort, h.dstPort);
  }

  /** Ends `c` with a reset the guest will hear. */
  #reset(c: Connection): void {
    this.#queueReset(c.guestPort, c.hostPort);
    this.#drop(c);
  }

  /** Queues a reset while the backlog of resets has room (MAX_QUEUED_RESETS). */
  #queueReset(guestPort: number, hostPort: number): void {
    this.#device.counters.resets++;
    if (this.#queuedResets >= MAX_QUEUED_RESETS) return;
    this.#queuedResets++;
    this.#outgoing.push({ op: VSOCK_OP.RST, flags: 0, guestPort, hostPort, connection: null, reset: true });
  }

  /** Forgets `c` and closes its host socket; its ring is kept for the next connection. */
  #drop(c: Connection): void {
    if (c.host !== null) this.#hostSockets.delete(c.host.fd);
    const ring = c.takeHostBuffer();
    if (ring !== null && this.#spareRings.length < SPARE_RINGS) this.#spareRings.push(ring);
    c.close();
    if (this.#lastConnection === c) this.#lastConnection = null;
    this.#connections.delete(c.key);
    this.#sending.delete(c);
    this.#creditUpdates.delete(c);
  }

  /** Fills rx buffers: control packets first, then credit updates, then data in turn. */
  #fillRx(): void {
    const rx = this.#rx;
    if (rx === null || this.#stopped) return;
    let used = 0;
    let again = true;
    while (again && used < PACKETS_PER_WAKEUP) {
      again = false;
      while (used < PACKETS_PER_WAKEUP) {
        const chain = this.#nextWork() ? this.#popRx(rx) : null;
        if (chain === null) break;
        if (this.#writePacket(rx, chain)) used++;
        else rx.undoPop(1);
      }
      if (!this.#nextWork()) {
        // Nothing waits for a buffer: the driver need not tell us of the ones it adds (each notify
        // is an exit and a wake-up of this loop for nothing); whatever brings work next (a host
        // socket, a packet, the timer) looks at the ring itself.
        rx.disableNotification();
        break;
      }
      rx.enableNotification();
      // A buffer the driver added before notifications were re-armed brings no kick: look again.
      again = rx.hasAvailable();
    }
    if (used === PACKETS_PER_WAKEUP) this.#ctx.kicks[RX]!.signal(); // more to do after the rest of the loop
    if (used > 0 && rx.shouldNotify()) this.#ctx.interrupt.signalUsedQueue(RX);
  }

  #nextWork(): boolean {
    return this.#outgoing.length > 0 || this.#creditUpdates.size > 0 || this.#sending.size > 0;
  }

  /** The next usable rx chain (bad ones are returned empty), or null when none is there. */
  #popRx(rx: Queue): DescriptorChain | null {
    for (;;) {
      const r = rx.pop();
      if (r === null) return null;
      if (r.kind === "fatal") {
        this.#ctx.needsReset(r.reason);
        return null;
      }
      if (r.kind === "bad_chain" || r.chain.writableLength < HEADER_SIZE) {
        rx.addUsed(r.kind === "chain" ? r.chain.head : r.head, 0);
        continue;
      }
      return r.chain;
    }
  }

  /** Writes the next packet into `chain` and returns it used; false if there was nothing to write after all. */
  #writePacket(rx: Queue, chain: DescriptorChain): boolean {
    const writer = new ChainWriter(chain);
    const header = this.#headerBytes;
    const out = this.#outgoing.length > 0 ? this.#outgoing.shift() : undefined;
    if (out !== undefined) {
      if (out.reset) this.#queuedResets--;
      this.#header(out.guestPort, out.hostPort, out.op, out.flags, 0, out.connection);
      writer.write(header);
      rx.addUsed(chain.head, HEADER_SIZE);
      if (out.op === VSOCK_OP.REQUEST && out.connection !== null && this.#connections.get(out.connection.key) === out.connection) {
        out.connection.deadline = performance.now() + GUEST_ANSWER_TIMEOUT_MS;
        this.#armTimer(out.connection.deadline);
      }
      return true;
    }
    const update = this.#creditUpdates.size > 0 ? this.#creditUpdates.values().next() : null;
    if (update !== null && !update.done) {
      const c = update.value;
      this.#creditUpdates.delete(c);
      this.#header(c.guestPort, c.hostPort, VSOCK_OP.CREDIT_UPDATE, 0, 0, c);
      writer.write(header);
      rx.addUsed(chain.head, HEADER_SIZE);
      return true;
    }
    for (const c of this.#sending) {
      this.#sending.delete(c);
      if (c.host === null || c.state !== "established") continue;
      const credit = c.peerCredit;
      if (credit === 0) {
        if (!c.creditRequested) {
          c.creditRequested = true;
          this.#send(c, VSOCK_OP.CREDIT_REQUEST);
        }
        return false; // waits for the guest's credit update; the request goes out next
      }
      const room = Math.min(writer.remaining - HEADER_SIZE, credit, MAX_PAYLOAD);
      if (room <= 0) {
        // A buffer with no room for data: it carries our credit instead, and the data waits its turn.
        this.#header(c.guestPort, c.hostPort, VSOCK_OP.CREDIT_UPDATE, 0, 0, c);
        writer.write(header);
        rx.addUsed(chain.head, HEADER_SIZE);
        this.#sending.add(c);
        return true;
      }
      const headerView = writer.take(HEADER_SIZE)!;
      const read = readInto(c.host, writer.take(room) ?? []);
      if (read === "again" || read === 0) {
        c.hostReadable = false;
        return false;
      }
      if (read === "eof" || read === "broken") {
        // The host program finished sending (or went away): the guest hears it in this buffer.
        c.hostDone = true;
        this.#header(c.guestPort, c.hostPort, VSOCK_OP.SHUTDOWN, SHUTDOWN_SEND | (read === "broken" ? SHUTDOWN_RCV : 0), 0, c);
        copyInto(headerView, header);
        rx.addUsed(chain.head, HEADER_SIZE);
        if (read === "broken") this.#drop(c);
        return true;
      }
      c.txCnt = (c.txCnt + read) >>> 0;
      c.bytesToGuest += read;
      this.#device.counters.bytesToGuest += read;
      this.#header(c.guestPort, c.hostPort, VSOCK_OP.RW, 0, read, c);
      copyInto(headerView, header);
      rx.addUsed(chain.head, HEADER_SIZE + read);
      this.#sending.add(c); // back of the line: the others get their turn
      return true;
    }
    return false;
  }

  /** Makes the header of a packet to the guest in #headerBytes. */
  #header(guestPort: number, hostPort: number, op: number, flags: number, len: number, c: Connection | null): void {
    if (c !== null) c.reportedFwdCnt = c.fwdCnt;
    writeHeader(this.#headerView, HOST_CID, this.#device.cid, hostPort, guestPort, len, op, flags, c === null ? 0 : CONNECTION_BUFFER, c === null ? 0 : c.fwdCnt);
  }
}

/** Reads from `socket` into `views` in order until one is not filled; the total, or what stopped the first read. */
function readInto(socket: StreamSocket, views: readonly Uint8Array[]): number | "again" | "eof" | "broken" {
  mapForWriting(views);
  let total = 0;
  for (const view of views) {
    const n = socket.read(view);
    if (typeof n !== "number") return total > 0 ? total : n;
    total += n;
    if (n < view.byteLength) break;
  }
  return total;
}

function copyInto(views: readonly Uint8Array[], bytes: Uint8Array): void {
  let at = 0;
  for (const view of views) {
    view.set(bytes.subarray(at, at + view.byteLength));
    at += view.byteLength;
  }
}
