// backend.ts - serves one VirtioDevice to a vhost-user front-end: tsvm's own VMM over a private
// socket (a jailed device process), or another VMM (QEMU, Cloud Hypervisor) through `tsvm devices`.
//
// The front-end is untrusted input. Every message is checked; anything malformed or out of order
// (an index past the queues, a ring outside the memory table, an fd of the wrong kind, an unknown
// request) ends the connection with one log line. The device is then stopped, its memory unmapped
// and every fd closed, and the back-end is ready for the next front-end.
//
// Rings follow the protocol's life cycle: stopped until SET_VRING_KICK, stopped again by
// GET_VRING_BASE; when protocol features are negotiated they also need SET_VRING_ENABLE. Whenever
// the set of running rings changes, the device's worker is restarted with that set.
import { sys } from "../../../ffi/mod.ts";
import { EventFd } from "../../base/event_fd.ts";
import { err, ok, type Result } from "../../base/result.ts";
import type { VirtioInterrupt } from "../virtio/interrupt.ts";
import { Queue } from "../virtio/queue.ts";
import { type DeviceEventLoop, hasFeature, VIRTIO_F, type VirtioDevice, type VirtioWorker } from "../virtio/virtio_device.ts";
import { closeFds, describeConnectionError, VhostUserConnection } from "./connection.ts";
import { MemoryTable } from "./memory_table.ts";
import {
  decodeConfig, decodeMemoryTable, decodeU64, decodeVringAddress, decodeVringFile, decodeVringState, encodeConfig, encodeU64,
  encodeVringState, requestName, VHOST_USER, VHOST_USER_BACKEND, VHOST_USER_F_PROTOCOL_FEATURES, VHOST_USER_FLAG_NEED_REPLY,
  VHOST_USER_FLAG_REPLY, VHOST_USER_PROTOCOL_F, type VhostUserMessage,
} from "./protocol.ts";

/** The protocol features a tsvm back-end offers (CONFIG only for devices that have a configuration). */
export function backendProtocolFeatures(configSize: number): bigint {
  const bits: bigint[] = [VHOST_USER_PROTOCOL_F.MQ, VHOST_USER_PROTOCOL_F.REPLY_ACK, VHOST_USER_PROTOCOL_F.BACKEND_REQ, VHOST_USER_PROTOCOL_F.RESET_DEVICE];
  if (configSize > 0) bits.push(VHOST_USER_PROTOCOL_F.CONFIG);
  return bits.reduce<bigint>((acc, bit) => acc | (1n << bit), 0n);
}
/** How long a reply or a back-end request may wait for room in the socket. */
const SEND_TIMEOUT_MS = 2000;
/** Messages handled per wake-up: a front-end that writes faster than we handle cannot starve the loop. */
const MESSAGES_PER_WAKEUP = 64;
const F_GETFL = 3;
const O_PATH = 0o10000000;
/** struct vhost_vring_addr flags: VHOST_VRING_F_LOG (dirty logging, which tsvm does not offer). */
const VHOST_VRING_F_LOG = 1;

type Vring = {
  readonly queue: Queue;
  /** Never-signalled stand-in for a ring with no kick fd yet (devices watch every queue's kick). */
  readonly idle: EventFd;
  size: number;
  address: { readonly desc: bigint; readonly used: bigint; readonly avail: bigint } | null;
  base: number;
  kick: EventFd | null;
  call: EventFd | null;
  error: EventFd | null;
  started: boolean;
  enabled: boolean;
  /** Whether the queue's rings are mapped (it ran before), so a restart continues where it was. */
  mapped: boolean;
};

/** What a back-end reports about its connections. */
export type BackendEvents = {
  /** A front-end connection ended (closed, or dropped for a protocol error: `reason` says which). */
  readonly disconnected: (reason: string) => void;
  readonly log: (level: "warn" | "info" | "debug", message: string) => void;
};

/** One device served over vhost-user; one front-end at a time. */
export class VhostUserBackend {
  readonly #device: VirtioDevice;
  readonly #loop: DeviceEventLoop;
  readonly #events: BackendEvents;
  readonly #rings: Vring[];
  #connection: VhostUserConnection | null = null;
  #backendChannel: VhostUserConnection | null = null;
  #memory: MemoryTable | null = null;
  #protocolFeatures = 0n;
  #ackedFeatures = 0n;
  #featuresSet = false;
  #worker: VirtioWorker | null = null;
  #broken = false;
  readonly #offeredProtocol: bigint;

  constructor(device: VirtioDevice, loop: DeviceEventLoop, events: BackendEvents) {
    this.#device = device;
    this.#loop = loop;
    this.#events = events;
    this.#offeredProtocol = backendProtocolFeatures(device.configSize);
    this.#rings = device.queueMaxSizes.map((max, index) => ({
      queue: new Queue(max, index, device.maxChainBytes), idle: new EventFd(), size: max, address: null, base: 0,
      kick: null, call: null, error: null, started: false, enabled: false, mapped: false,
    }));
    // A change the device makes on its own goes to the front-end whether or not any ring runs.
    device.onConfigChanged?.(() => this.#interrupt.signalConfigChanged());
  }

  /** Whether a front-end is connected. */
  get connected(): boolean {
    return this.#connection !== null;
  }

  /** Starts serving the front-end on `fd` (a connected stream socket, now the back-end's). */
  serve(fd: number): void {
    if (this.#connection !== null) {
      sys.close(fd);
      this.#events.log("warn", "a second front-end was refused: one is already connected");
      return;
    }
    this.#connection = new VhostUserConnection(fd);
    this.#loop.watch(fd, () => this.#onReadable());
  }

  /** Ends the current connection, if any, and stops the device. */
  disconnect(reason: string): void {
    const connection = this.#connection;
    if (connection === null) return;
    this.#loop.unwatch(connection.fd);
    connection.close();
    this.#connection = null;
    this.#resetState();
    this.#events.disconnected(reason);
  }

  /** Stops everything and releases every fd. */
  close(): void {
    this.#device.onConfigChanged?.(null);
    this.disconnect("the back-end is closing");
    for (const ring of this.#rings) ring.idle.close();
  }

  #onReadable(): void {
    // The socket is watched level-triggered: what is left after this batch comes back next turn.
    for (let i = 0; i < MESSAGES_PER_WAKEUP; i++) {
      const connection = this.#connection;
      if (connection === null) return;
      const r = connection.readMessage();
      if (!r.ok) {
        this.disconnect(describeConnectionError(r.error));
        return;
      }
      if (r.value === null) return;
      const kept = new Set<number>();
      let handled: Result<null>;
      try {
        handled = this.#handle(r.value, kept);
      } catch (e) {
        // A bug of ours, met on a front-end's input: drop that front-end, as for a malformed message.
        handled = err(`internal error: ${e instanceof Error ? e.message : String(e)}`);
      }
      closeFds(r.value.fds.filter((fd) => !kept.has(fd)));
      if (!handled.ok) {
        this.#events.log("warn", `vhost-user front-end dropped: ${requestName(r.value.request)}: ${handled.error}`);
        this.disconnect(handled.error);
        return;
      }
    }
  }

  /** Handles one message; the fds a handler keeps go into `kept`, the caller closes the rest. */
  #handle(m: VhostUserMessage, kept: Set<number>): Result<null> {
    const ackWanted = (m.flags & VHOST_USER_FLAG_NEED_REPLY) !== 0 && this.#hasProtocolFeature(VHOST_USER_PROTOCOL_F.REPLY_ACK);
    const noFds = (): Result<null> => (m.fds.length === 0 ? ok(null) : err(`${m.fds.length} unexpected fds`));
    let result: Result<null>;
    let replied = false;
    const reply = (payload: Uint8Array): Result<null> => {
      replied = true;
      const sent = this.#connection!.send(m.request, VHOST_USER_FLAG_REPLY, payload, [], SEND_TIMEOUT_MS);
      return sent.ok ? ok(null) : err(describeConnectionError(sent.error));
    };
    switch (m.request) {
      case VHOST_USER.GET_FEATURES:
        result = noFds();
        if (result.ok) result = reply(encodeU64(this.#device.features | (1n << VHOST_USER_F_PROTOCOL_FEATURES)));
        break;
      case VHOST_USER.SET_FEATURES:
        result = this.#setFeatures(m);
        break;
      case VHOST_USER.GET_PROTOCOL_FEATURES:
        result = noFds();
        if (result.ok) result = reply(encodeU64(this.#offeredProtocol));
        break;
      case VHOST_USER.SET_PROTOCOL_FEATURES: {
        const v = decodeU64(m.payload);
        result = !v.ok ? v : (v.value & ~this.#offeredProtocol) !== 0n
          ? err(`protocol features 0x${v.value.toString(16)} were not offered`) : ok(null);
        if (result.ok && v.ok) this.#protocolFeatures = v.value;
        if (result.ok) result = noFds();
        break;
      }
      case VHOST_USER.SET_OWNER:
      case VHOST_USER.RESET_OWNER: // deprecated; QEMU's advice: ignore, or stop the rings
        result = noFds();
        if (result.ok && m.request === VHOST_USER.RESET_OWNER) this.#stopAllRings();
        break;
      case VHOST_USER.RESET_DEVICE:
        result = noFds();
        if (result.ok) this.#resetDevice();
        break;
      case VHOST_USER.GET_QUEUE_NUM:
        result = noFds();
        if (result.ok) result = reply(encodeU64(this.#rings.length));
        break;
      case VHOST_USER.SET_MEM_TABLE:
        result = this.#setMemTable(m, kept);
        break;
      case VHOST_USER.SET_VRING_NUM:
      case VHOST_USER.SET_VRING_BASE:
      case VHOST_USER.SET_VRING_ENABLE:
        result = this.#setVringState(m);
        break;
      case VHOST_USER.SET_VRING_ADDR:
        result = this.#setVringAddress(m);
        break;
      case VHOST_USER.GET_VRING_BASE: {
        const state = decodeVringState(m.payload);
        const ring = state.ok ? this.#rings[state.value.index] : undefined;
        if (!state.ok) result = state;
        else if (ring === undefined) result = err(`no vring ${state.value.index}`);
        else {
          result = noFds();
          if (result.ok) {
            const base = this.#stopRing(ring);
            result = reply(encodeVringState({ index: state.value.index, num: base }));
          }
        }
        break;
      }
      case VHOST_USER.SET_VRING_KICK:
      case VHOST_USER.SET_VRING_CALL:
      case VHOST_USER.SET_VRING_ERR:
        result = this.#setVringFile(m, kept);
        break;
      case VHOST_USER.SET_BACKEND_REQ_FD:
        result = this.#setBackendChannel(m, kept);
        break;
      case VHOST_USER.GET_CONFIG: {
        const c = decodeConfig(m.payload);
        result = !c.ok ? c : noFds();
        if (result.ok && c.ok) {
          const data = new Uint8Array(c.value.size);
          const inside = Math.max(0, Math.min(c.value.size, this.#device.configSize - c.value.offset));
          if (inside > 0) this.#device.readConfig(c.value.offset, data.subarray(0, inside));
          result = reply(encodeConfig({ offset: c.value.offset, size: c.value.size, flags: c.value.flags, data }));
        }
        break;
      }
      case VHOST_USER.SET_CONFIG: {
        const c = decodeConfig(m.payload);
        result = !c.ok ? c : noFds();
        if (result.ok && c.ok && c.value.offset + c.value.size <= this.#device.configSize && c.value.size > 0) {
          this.#device.writeConfig(c.value.offset, c.value.data);
        }
        break;
      }
      default:
        result = err("request not supported by this back-end");
    }
    if (!result.ok) return result;
    if (ackWanted && !replied) return reply(encodeU64(0));
    return ok(null);
  }

  #hasProtocolFeature(bit: bigint): boolean {
    return hasFeature(this.#protocolFeatures, bit);
  }

  /** Whether protocol features were acknowledged (rings then need SET_VRING_ENABLE). */
  #protocolNegotiated(): boolean {
    return hasFeature(this.#ackedFeatures, VHOST_USER_F_PROTOCOL_FEATURES);
  }

  #setFeatures(m: VhostUserMessage): Result<null> {
    if (m.fds.length !== 0) return err("unexpected fds");
    const v = decodeU64(m.payload);
    if (!v.ok) return v;
    const offered = this.#device.features | (1n << VHOST_USER_F_PROTOCOL_FEATURES);
    const unknown = v.value & ~offered;
    // Some front-ends pass on what the guest acknowledged unmasked (QEMU 7.2's vhost-user-rng):
    // keep only what was offered rather than refuse a working guest.
    if (unknown !== 0n) this.#events.log("debug", `front-end set features 0x${unknown.toString(16)} that were not offered; ignoring them`);
    if (this.#worker !== null && (v.value & offered) !== this.#ackedFeatures) {
      return err("features changed while rings were running");
    }
    this.#ackedFeatures = v.value & offered;
    this.#featuresSet = true;
    return ok(null);
  }

  #setMemTable(m: VhostUserMessage, kept: Set<number>): Result<null> {
    const table = decodeMemoryTable(m.payload);
    if (!table.ok) return table;
    for (const fd of m.fds) kept.add(fd);
    const mapped = MemoryTable.map(table.value, m.fds); // owns the fds from here, closing them on failure
    if (!mapped.ok) return err(mapped.error);
    // A new table replaces the old one; running rings are restarted on it, each where it was (not from
    // the base it was started with, which would serve its descriptors again). No queue keeps a view
    // of the old mappings once they are gone.
    const running = this.#worker !== null;
    this.#stopWorker();
    for (const ring of this.#rings) {
      if (ring.mapped) ring.base = ring.queue.nextAvail;
      ring.mapped = false;
      ring.queue.reset();
    }
    this.#memory?.close();
    this.#memory = mapped.value;
    if (running) return this.#restart();
    return ok(null);
  }

  #ring(index: number): Result<Vring> {
    const ring = this.#rings[index];
    return ring === undefined ? err(`no vring ${index} (the device has ${this.#rings.length})`) : ok(ring);
  }

  #setVringState(m: VhostUserMessage): Result<null> {
    if (m.fds.length !== 0) return err("unexpected fds");
    const state = decodeVringState(m.payload);
    if (!state.ok) return state;
    const ring = this.#ring(state.value.index);
    if (!ring.ok) return ring;
    const r = ring.value;
    const num = state.value.num;
    switch (m.request) {
      case VHOST_USER.SET_VRING_NUM:
        if (r.started) return err("SET_VRING_NUM on a running ring");
        if (num === 0 || num > r.queue.maxSize || (num & (num - 1)) !== 0) return err(`ring size ${num} is not a power of two up to ${r.queue.maxSize}`);
        r.size = num;
        return ok(null);
      case VHOST_USER.SET_VRING_BASE:
        if (r.started) return err("SET_VRING_BASE on a running ring");
        if (num > 0xffff) return err(`ring base ${num} is beyond 16 bits`);
        r.base = num;
        r.mapped = false;
        return ok(null);
      default: // SET_VRING_ENABLE
        if (num > 1) return err(`enable value ${num}`);
        r.enabled = num === 1;
        return this.#restart();
    }
  }

  #setVringAddress(m: VhostUserMessage): Result<null> {
    if (m.fds.length !== 0) return err("unexpected fds");
    const a = decodeVringAddress(m.payload);
    if (!a.ok) return a;
    const ring = this.#ring(a.value.index);
    if (!ring.ok) return ring;
    if (a.value.flags & VHOST_VRING_F_LOG) return err("dirty logging was not offered");
    if (ring.value.started) return err("SET_VRING_ADDR on a running ring");
    ring.value.address = { desc: a.value.descriptor, used: a.value.used, avail: a.value.available };
    ring.value.mapped = false;
    return ok(null);
  }

  #setVringFile(m: VhostUserMessage, kept: Set<number>): Result<null> {
    const file = decodeVringFile(m.payload);
    if (!file.ok) return file;
    const ring = this.#ring(file.value.index);
    if (!ring.ok) return ring;
    if (!file.value.hasFd) {
      if (m.fds.length !== 0) return err("an fd came with the no-fd flag");
      if (m.request === VHOST_USER.SET_VRING_KICK) return err("polling rings (no kick fd) is not supported");
      this.#replaceFile(ring.value, m.request, null);
      return ok(null);
    }
    if (m.fds.length !== 1) return err(`expected one fd, got ${m.fds.length}`);
    const fd = m.fds[0]!;
    const eventFd = EventFd.fromPeer(fd, m.request === VHOST_USER.SET_VRING_KICK);
    if (eventFd === null) return err("the fd is not an eventfd");
    kept.add(fd);
    this.#replaceFile(ring.value, m.request, eventFd);
    if (m.request === VHOST_USER.SET_VRING_KICK) {
      ring.value.started = true;
      return this.#restart();
    }
    return ok(null);
  }

  #replaceFile(ring: Vring, request: number, event: EventFd | null): void {
    if (request === VHOST_USER.SET_VRING_KICK) {
      // The running worker watches the old kick fd: stop it before the fd goes.
      this.#stopWorker();
      ring.kick?.close();
      ring.kick = event;
    } else if (request === VHOST_USER.SET_VRING_CALL) {
      ring.call?.close();
      ring.call = event;
    } else {
      ring.error?.close();
      ring.error = event;
    }
  }

  #setBackendChannel(m: VhostUserMessage, kept: Set<number>): Result<null> {
    if (!this.#hasProtocolFeature(VHOST_USER_PROTOCOL_F.BACKEND_REQ)) return err("BACKEND_REQ was not negotiated");
    if (m.fds.length !== 1) return err(`expected one fd, got ${m.fds.length}`);
    const fd = m.fds[0]!;
    const stat = sys.fstat(fd);
    // An O_PATH descriptor passes fstat but takes no flags (nor I/O): refuse it here.
    if (typeof stat === "number" || (stat.mode & sys.S_IFMT) !== sys.S_IFSOCK || sys.fcntlIntRaw(fd, F_GETFL, 0) & O_PATH) {
      return err("the back-end channel fd is not a socket");
    }
    kept.add(fd);
    this.#backendChannel?.close();
    this.#backendChannel = new VhostUserConnection(fd);
    return ok(null);
  }

  /** Stops `ring` and returns where the next run should resume (its next available index). */
  #stopRing(ring: Vring): number {
    const wasRunning = this.#worker !== null;
    this.#stopWorker();
    const base = ring.mapped ? ring.queue.nextAvail : ring.base;
    ring.started = false;
    ring.mapped = false;
    ring.base = base;
    ring.kick?.close();
    ring.kick = null;
    // Once the front-end has stopped every ring, a device that broke may run again.
    if (!this.#rings.some((r) => r.started)) this.#broken = false;
    if (wasRunning) {
      const restarted = this.#restart();
      if (!restarted.ok) this.#events.log("warn", `vhost-user: ${restarted.error}`);
    }
    return base;
  }

  #stopAllRings(): void {
    this.#stopWorker();
    for (const ring of this.#rings) {
      ring.started = false;
      ring.mapped = false;
      ring.kick?.close();
      ring.kick = null;
    }
  }

  #resetDevice(): void {
    this.#stopAllRings();
    for (const ring of this.#rings) {
      ring.enabled = false;
      ring.base = 0;
      ring.size = ring.queue.maxSize;
      ring.address = null;
      ring.queue.reset();
    }
    this.#ackedFeatures = 0n;
    this.#featuresSet = false;
    this.#broken = false;
  }

  /** Forgets everything the last front-end set up. */
  #resetState(): void {
    this.#resetDevice();
    for (const ring of this.#rings) {
      ring.call?.close();
      ring.call = null;
      ring.error?.close();
      ring.error = null;
    }
    this.#backendChannel?.close();
    this.#backendChannel = null;
    this.#memory?.close();
    this.#memory = null;
    this.#protocolFeatures = 0n;
  }

  #stopWorker(): void {
    const worker = this.#worker;
    if (worker === null) return;
    this.#worker = null;
    worker.stop();
  }

  /** (Re)starts the device on the rings that can run now; says why a ring cannot be started. */
  #restart(): Result<null> {
    this.#stopWorker();
    if (this.#broken) return ok(null);
    const runnable = (r: Vring): boolean => r.started && r.kick !== null && (r.enabled || !this.#protocolNegotiated());
    if (!this.#rings.some(runnable)) return ok(null);
    const memory = this.#memory;
    if (memory === null) return err("a ring was started before the memory table was set");
    if (!this.#featuresSet) return err("a ring was started before the features were set");
    const ringFeatures = {
      eventIdx: hasFeature(this.#ackedFeatures, VIRTIO_F.VIRTIO_RING_F_EVENT_IDX),
      indirect: hasFeature(this.#ackedFeatures, VIRTIO_F.VIRTIO_RING_F_INDIRECT_DESC),
    };
    const queues: (Queue | null)[] = [];
    for (const [i, r] of this.#rings.entries()) {
      if (!runnable(r)) {
        queues.push(null);
        continue;
      }
      if (!r.mapped) {
        const a = r.address;
        if (a === null) return err(`ring ${i} was started without addresses`);
        const desc = memory.guestAddressOf(a.desc, 16 * r.size);
        const avail = memory.guestAddressOf(a.avail, 6 + 2 * r.size);
        const used = memory.guestAddressOf(a.used, 6 + 8 * r.size);
        if (desc === null || avail === null || used === null) return err(`ring ${i} lies outside the memory table`);
        Object.assign(r.queue.config, { size: r.size, desc: BigInt(desc), driver: BigInt(avail), device: BigInt(used), ready: true });
        // The used index continues from what the ring holds (the previous owner's last publication).
        const activated = r.queue.activate(memory.memory, ringFeatures, { nextAvail: r.base, nextUsed: null });
        if (!activated.ok) return err(`ring ${i}: ${activated.error}`);
        r.mapped = true;
      }
      queues.push(r.queue);
    }
    // A device whose activation throws half-way must leave no handler behind on the loop (one would
    // run later on rings that are no longer mapped): what it watched is unwatched.
    const watched = new Set<number>();
    const loop: DeviceEventLoop = {
      watch: (fd, handler, events) => {
        this.#loop.watch(fd, handler, events);
        watched.add(fd);
      },
      unwatch: (fd) => {
        watched.delete(fd);
        this.#loop.unwatch(fd);
      },
    };
    try {
      const worker = this.#device.activate({
        memory: memory.memory,
        queues,
        kicks: this.#rings.map((r) => r.kick ?? r.idle),
        interrupt: this.#interrupt,
        features: this.#ackedFeatures & ~(1n << VHOST_USER_F_PROTOCOL_FEATURES),
        loop,
        needsReset: (reason) => this.#needsReset(reason),
      });
      // A device that broke while activating asked for a reset before there was a worker to stop.
      if (this.#broken) worker.stop();
      else this.#worker = worker;
    } catch (e) {
      for (const fd of watched) this.#loop.unwatch(fd);
      this.#needsReset(`activation failed: ${e instanceof Error ? e.message : String(e)}`);
    }
    return ok(null);
  }

  /** The device broke on the guest's input: stop it and tell the front-end through the error fds. */
  #needsReset(reason: string): void {
    this.#events.log("warn", `${this.#device.debugLabel}: ${reason}; the device needs a reset`);
    this.#broken = true;
    this.#stopWorker();
    for (const ring of this.#rings) ring.error?.signal();
  }

  /** How the device interrupts the driver from here: the rings' call fds and the back-end channel. */
  readonly #interrupt: VirtioInterrupt = {
    signalUsedQueue: (queue) => {
      this.#rings[queue]?.call?.signal();
    },
    signalConfigChanged: () => {
      const channel = this.#backendChannel;
      if (channel === null || !this.#hasProtocolFeature(VHOST_USER_PROTOCOL_F.CONFIG)) return;
      const sent = channel.send(VHOST_USER_BACKEND.CONFIG_CHANGE_MSG, 0, new Uint8Array(0), [], SEND_TIMEOUT_MS);
      if (!sent.ok) this.#events.log("warn", `vhost-user: cannot tell the front-end its configuration changed: ${describeConnectionError(sent.error)}`);
    },
    queueNotifier: (queue) => this.#rings[queue]?.call ?? this.#rings[queue]!.idle,
    onNotifiersChanged: () => {},
  };
}
