// frontend.ts - a VirtioDevice whose queues are served by a vhost-user back-end in another process.
//
// The virtio-pci transport stays in the VMM; the back-end sees only what it must: the memory table,
// each ring's size and addresses, the kick eventfds (KVM ioeventfds, so the guest's notifications go
// straight to it), the call eventfds (KVM irqfds when the vector can be delivered directly, so its
// interrupts never pass through the VMM), configuration reads and writes, and resets. The back-end
// is untrusted: every exchange has a deadline, replies are checked, and anything wrong ends the
// device through `onFailure`, never an exception in the VMM's loop.
import { socket } from "../../../ffi/mod.ts";
import { EventFd } from "../../base/event_fd.ts";
import { err, ok, type Result } from "../../base/result.ts";
import type { GuestMemory } from "../../memory/mod.ts";
import { ringHostAddresses, usedRingIndex } from "../virtio/queue.ts";
import type { ActivateContext, DeviceEventLoop, VirtioDevice, VirtioWorker } from "../virtio/virtio_device.ts";
import { hasFeature, VIRTIO_F } from "../virtio/virtio_device.ts";
import { closeFds, describeConnectionError, VhostUserConnection } from "./connection.ts";
import { type DeviceTypeInfo, withQueueCount } from "./device_types.ts";
import {
  decodeConfig, decodeU64, decodeVringState, encodeConfig, encodeMemoryTable, encodeU64, encodeVringAddress, encodeVringState,
  requestName, VHOST_USER, VHOST_USER_BACKEND, VHOST_USER_F_PROTOCOL_FEATURES, VHOST_USER_FLAG_NEED_REPLY, VHOST_USER_FLAG_REPLY,
  VHOST_USER_MAX_REGIONS, VHOST_USER_PROTOCOL_F, type VhostUserMessage,
} from "./protocol.ts";

/** The protocol features a tsvm front-end uses when the back-end offers them. */
const WANTED_PROTOCOL_FEATURES = [
  VHOST_USER_PROTOCOL_F.MQ, VHOST_USER_PROTOCOL_F.REPLY_ACK, VHOST_USER_PROTOCOL_F.BACKEND_REQ,
  VHOST_USER_PROTOCOL_F.CONFIG, VHOST_USER_PROTOCOL_F.RESET_DEVICE,
].reduce<bigint>((acc, bit) => acc | (1n << bit), 0n);
/** bounds back-end requests per second; more is a back-end flooding the VMM */
const MAX_BACKEND_REQUESTS_PER_SECOND = 1000;

/** What a front-end needs besides its connection. */
export type FrontendOptions = {
  readonly label: string;
  readonly type: DeviceTypeInfo;
  /**
   * For a multiqueue type: how many queues the device should have (fewer if the back-end has
   * fewer); 1 when the back-end does not speak VHOST_USER_PROTOCOL_F_MQ.
   */
  readonly queues?: number;
  /** The configuration the front-end provides itself (types whose `configFrom` is "frontend"). */
  readonly localConfig?: Uint8Array;
  /** The loop that watches the back-end channel and the rings' error fds (the VMM's control loop). */
  readonly loop: DeviceEventLoop;
  /** How long the back-end may take to answer one request. */
  readonly timeoutMs: number;
  /** Called once when the back-end fails (gone, too slow, or breaking the protocol). */
  readonly onFailure: (reason: string) => void;
};

/** A device served by a vhost-user back-end. */
export class VhostUserFrontend implements VirtioDevice {
  readonly debugLabel: string;
  readonly deviceType: number;
  readonly queueMaxSizes: readonly number[];
  readonly features: bigint;
  readonly configSize: number;
  readonly #connection: VhostUserConnection;
  readonly #options: FrontendOptions;
  readonly #protocolFeatures: bigint;
  /** Whether the back-end speaks protocol features (rings then start disabled until SET_VRING_ENABLE). */
  readonly #speaksProtocol: boolean;
  #backendChannel: VhostUserConnection | null = null;
  #config: Uint8Array | null = null;
  #failed: string | null = null;
  /** When the operation under way (activation, a reset) must be over; every request shares it. */
  #deadline = 0;
  #configListener: (() => void) | null = null;
  #requestWindow = { start: 0, count: 0 };

  private constructor(connection: VhostUserConnection, options: FrontendOptions, offered: bigint, protocolFeatures: bigint, queues: number) {
    this.#connection = connection;
    this.#options = options;
    this.debugLabel = options.label;
    this.deviceType = options.type.deviceType;
    this.queueMaxSizes = withQueueCount(options.type, queues).queueMaxSizes;
    this.configSize = options.type.configSize;
    this.features = offered & ~(1n << VHOST_USER_F_PROTOCOL_FEATURES);
    this.#speaksProtocol = hasFeature(offered, VHOST_USER_F_PROTOCOL_FEATURES);
    this.#protocolFeatures = protocolFeatures;
    if (options.localConfig) this.#config = options.localConfig.slice(0, this.configSize);
  }

  /** Negotiates with the back-end on `fd` (a connected stream socket, now the front-end's). */
  static connect(fd: number, options: FrontendOptions): Result<VhostUserFrontend> {
    const connection = new VhostUserConnection(fd);
    const fail = (reason: string): Result<VhostUserFrontend> => {
      connection.close();
      return err(`vhost-user back-end of ${options.label}: ${reason}`);
    };
    const features = request(connection, VHOST_USER.GET_FEATURES, new Uint8Array(0), options.timeoutMs);
    if (!features.ok) return fail(features.error);
    const offered = decodeU64(features.value.payload);
    if (!offered.ok) return fail(`GET_FEATURES reply: ${offered.error}`);
    if (!hasFeature(offered.value, VIRTIO_F.VIRTIO_F_VERSION_1)) return fail("the back-end does not offer VIRTIO_F_VERSION_1");
    let protocol = 0n;
    if (hasFeature(offered.value, VHOST_USER_F_PROTOCOL_FEATURES)) {
      const p = request(connection, VHOST_USER.GET_PROTOCOL_FEATURES, new Uint8Array(0), options.timeoutMs);
      if (!p.ok) return fail(p.error);
      const bits = decodeU64(p.value.payload);
      if (!bits.ok) return fail(`GET_PROTOCOL_FEATURES reply: ${bits.error}`);
      protocol = bits.value & WANTED_PROTOCOL_FEATURES;
      const sent = connection.send(VHOST_USER.SET_PROTOCOL_FEATURES, 0, encodeU64(protocol), [], options.timeoutMs);
      if (!sent.ok) return fail(describeConnectionError(sent.error));
    }
    if (options.type.configFrom === "backend" && options.type.configSize > 0 && !hasFeature(protocol, VHOST_USER_PROTOCOL_F.CONFIG)) {
      return fail("the back-end does not offer its configuration space (VHOST_USER_PROTOCOL_F_CONFIG)");
    }
    // The queue count: the type's, or for a multiqueue type as many as wanted and the back-end has.
    const needed = options.type.queueMaxSizes.length;
    let queues = needed;
    if (hasFeature(protocol, VHOST_USER_PROTOCOL_F.MQ)) {
      const n = request(connection, VHOST_USER.GET_QUEUE_NUM, new Uint8Array(0), options.timeoutMs);
      const count = n.ok ? decodeU64(n.value.payload) : n;
      if (!count.ok) return fail(count.error);
      if (count.value < BigInt(needed)) return fail(`the back-end has ${count.value} queues; a ${options.label} device needs ${needed}`);
      const multiqueue = options.type.multiqueue;
      if (multiqueue) queues = Math.max(needed, Math.min(Number(count.value), options.queues ?? needed, multiqueue.max));
    }
    const frontend = new VhostUserFrontend(connection, options, offered.value, protocol, queues);
    frontend.#deadline = performance.now() + options.timeoutMs;
    const owner = frontend.#send(VHOST_USER.SET_OWNER, new Uint8Array(0));
    if (!owner.ok) return fail(owner.error);
    if (hasFeature(protocol, VHOST_USER_PROTOCOL_F.BACKEND_REQ)) {
      const [ours, theirs] = socket.socketPair(socket.SOCK_STREAM);
      const sent = frontend.#send(VHOST_USER.SET_BACKEND_REQ_FD, new Uint8Array(0), [theirs]);
      closeFds([theirs]);
      if (!sent.ok) {
        closeFds([ours]);
        return fail(sent.error);
      }
      frontend.#backendChannel = new VhostUserConnection(ours);
      options.loop.watch(ours, () => frontend.#onBackendRequest());
    }
    // Between requests the back-end has nothing to say on the main socket: readable means it closed
    // it (it died) or is talking out of turn.
    options.loop.watch(connection.fd, () => frontend.#onUnexpected());
    return ok(frontend);
  }

  /** Why the back-end failed, or null while it works. */
  get failure(): string | null {
    return this.#failed;
  }

  /** Sets the one listener told when the back-end says its configuration changed. */
  onConfigChanged(listener: (() => void) | null): void {
    this.#configListener = listener;
  }

  readConfig(offset: number, data: Uint8Array): void {
    const config = this.#cachedConfig();
    for (let i = 0; i < data.byteLength; i++) data[i] = config?.[offset + i] ?? 0;
  }

  writeConfig(offset: number, data: Uint8Array): void {
    if (this.#options.type.configFrom === "frontend") return;
    if (offset + data.byteLength > this.configSize) return;
    this.#deadline = performance.now() + this.#options.timeoutMs;
    const sent = this.#send(VHOST_USER.SET_CONFIG, encodeConfig({ offset, size: data.byteLength, flags: 0, data }));
    if (sent.ok) this.#config = null; // read it afresh: the device may have changed more than we wrote
  }

  activate(ctx: ActivateContext): VirtioWorker {
    return this.#start(ctx, false);
  }

  /**
   * Starts the rings of a device the driver already runs, on a back-end that has just (re)connected
   * and knows nothing of them: each ring restarts at its used index, so requests the previous
   * back-end took but never completed are served again (as QEMU does without inflight tracking),
   * and every ring is kicked once so the back-end looks at what is already waiting.
   */
  resume(ctx: ActivateContext): VirtioWorker {
    return this.#start(ctx, true);
  }

  #start(ctx: ActivateContext, resume: boolean): VirtioWorker {
    this.#deadline = performance.now() + this.#options.timeoutMs;
    const started: number[] = [];
    const errors: EventFd[] = [];
    const calls = new Map<number, number>();
    const stop = (): void => {
      this.#deadline = performance.now() + this.#options.timeoutMs;
      ctx.interrupt.onNotifiersChanged(null);
      for (const e of errors) {
        ctx.loop.unwatch(e.fd);
        e.close();
      }
      for (const index of started) {
        // GET_VRING_BASE stops the ring; the answer (where it stopped) matters only for migration.
        const r = this.#request(VHOST_USER.GET_VRING_BASE, encodeVringState({ index, num: 0 }));
        if (r.ok && !decodeVringState(r.value.payload).ok) this.#fail("malformed GET_VRING_BASE reply");
      }
      if (hasFeature(this.#protocolFeatures, VHOST_USER_PROTOCOL_F.RESET_DEVICE)) this.#send(VHOST_USER.RESET_DEVICE, new Uint8Array(0));
    };
    const setup = this.#setUp(ctx, started, errors, calls, resume);
    if (!setup.ok) {
      this.#fail(setup.error);
      stop();
      return { stop: () => {} };
    }
    if (resume) for (const index of started) ctx.kicks[index]!.signal();
    // When MSI-X masking moves a queue's interrupt between its irqfd and the VMM, tell the back-end.
    ctx.interrupt.onNotifiersChanged(() => {
      for (const index of started) {
        const fd = ctx.interrupt.queueNotifier(index).fd;
        if (calls.get(index) === fd) continue;
        calls.set(index, fd);
        this.#send(VHOST_USER.SET_VRING_CALL, encodeU64(index), [fd]);
      }
    });
    return { stop };
  }

  /** Closes the connection (the back-end sees its front-end go). */
  close(): void {
    if (this.#backendChannel) {
      this.#options.loop.unwatch(this.#backendChannel.fd);
      this.#backendChannel.close();
      this.#backendChannel = null;
    }
    if (this.#failed === null) this.#options.loop.unwatch(this.#connection.fd);
    this.#connection.close();
  }

  #onUnexpected(): void {
    if (this.#failed !== null) return;
    const r = this.#connection.readMessage();
    if (!r.ok) this.#fail(describeConnectionError(r.error));
    else if (r.value !== null) {
      closeFds(r.value.fds);
      this.#fail(`the back-end sent ${requestName(r.value.request)} unasked`);
    }
  }

  #setUp(ctx: ActivateContext, started: number[], errors: EventFd[], calls: Map<number, number>, resume: boolean): Result<null> {
    const protocolBit = this.#speaksProtocol ? 1n << VHOST_USER_F_PROTOCOL_FEATURES : 0n;
    let r = this.#send(VHOST_USER.SET_FEATURES, encodeU64(ctx.features | protocolBit));
    if (!r.ok) return r;
    r = this.#setMemTable(ctx.memory);
    if (!r.ok) return r;
    for (const [index, queue] of ctx.queues.entries()) {
      if (queue === null) continue;
      const addresses = ringHostAddresses(ctx.memory, queue);
      if (addresses === null) return err(`ring ${index} is not in memory the back-end can see`);
      const base = resume ? usedRingIndex(ctx.memory, queue) : queue.nextAvail;
      if (base === null) return err(`ring ${index}'s used ring is not in guest memory`);
      const error = new EventFd();
      errors.push(error);
      ctx.loop.watch(error.fd, () => {
        if (error.read() > 0) ctx.needsReset(`its back-end reported an error on queue ${index}`);
      });
      const call = ctx.interrupt.queueNotifier(index).fd;
      calls.set(index, call);
      const steps: [number, Uint8Array, number[]][] = [
        [VHOST_USER.SET_VRING_NUM, encodeVringState({ index, num: queue.config.size }), []],
        [VHOST_USER.SET_VRING_BASE, encodeVringState({ index, num: base }), []],
        [VHOST_USER.SET_VRING_ADDR, encodeVringAddress({ index, flags: 0, ...addresses, log: 0n }), []],
        [VHOST_USER.SET_VRING_CALL, encodeU64(index), [call]],
        [VHOST_USER.SET_VRING_ERR, encodeU64(index), [error.fd]],
        [VHOST_USER.SET_VRING_KICK, encodeU64(index), [ctx.kicks[index]!.fd]],
      ];
      for (const [requestId, payload, fds] of steps) {
        r = this.#send(requestId, payload, fds);
        if (!r.ok) return r;
      }
      started.push(index);
      if (this.#speaksProtocol) {
        r = this.#send(VHOST_USER.SET_VRING_ENABLE, encodeVringState({ index, num: 1 }));
        if (!r.ok) return r;
      }
    }
    return ok(null);
  }

  #setMemTable(memory: GuestMemory): Result<null> {
    const regions = memory.hostMappings();
    if (regions.length === 0) return err("guest memory is not shareable (no memfd)");
    if (regions.length > VHOST_USER_MAX_REGIONS) return err(`guest memory has ${regions.length} regions; vhost-user carries at most ${VHOST_USER_MAX_REGIONS}`);
    const payload = encodeMemoryTable(regions.map((region) => ({
      guestAddress: BigInt(region.guestBase), size: BigInt(region.size), userAddress: BigInt(region.hostAddress), mmapOffset: BigInt(region.fdOffset),
    })));
    return this.#send(VHOST_USER.SET_MEM_TABLE, payload, regions.map((region) => region.fd));
  }

  #cachedConfig(): Uint8Array | null {
    if (this.#config !== null || this.configSize === 0) return this.#config;
    this.#deadline = performance.now() + this.#options.timeoutMs;
    const r = this.#request(VHOST_USER.GET_CONFIG, encodeConfig({ offset: 0, size: this.configSize, flags: 0, data: new Uint8Array(this.configSize) }));
    if (!r.ok) return null;
    const c = decodeConfig(r.value.payload);
    if (!c.ok || c.value.size !== this.configSize || c.value.offset !== 0) {
      this.#fail(`malformed GET_CONFIG reply${c.ok ? "" : `: ${c.error}`}`);
      return null;
    }
    const config = c.value.data;
    // A multiqueue device's configuration counts its queues: the count the guest gets is ours.
    const multiqueue = this.#options.type.multiqueue;
    if (multiqueue && multiqueue.countOffset + 2 <= config.byteLength) {
      new DataView(config.buffer, config.byteOffset, config.byteLength).setUint16(multiqueue.countOffset, this.queueMaxSizes.length, true);
    }
    this.#config = config;
    return config;
  }

  /** Sends a request that needs no answer; with REPLY_ACK, waits for the back-end's acknowledgement. */
  #send(requestId: number, payload: Uint8Array, fds: readonly number[] = []): Result<null> {
    if (this.#failed !== null) return err(this.#failed);
    const ack = hasFeature(this.#protocolFeatures, VHOST_USER_PROTOCOL_F.REPLY_ACK);
    const sent = this.#connection.send(requestId, ack ? VHOST_USER_FLAG_NEED_REPLY : 0, payload, fds, this.#remaining());
    if (!sent.ok) return this.#fail(`${requestName(requestId)}: ${describeConnectionError(sent.error)}`);
    if (!ack) return ok(null);
    const reply = this.#awaitReply(requestId);
    if (!reply.ok) return reply;
    const status = decodeU64(reply.value.payload);
    if (!status.ok) return this.#fail(`${requestName(requestId)} acknowledgement: ${status.error}`);
    if (status.value !== 0n) return this.#fail(`the back-end refused ${requestName(requestId)}`);
    return ok(null);
  }

  /** Sends a request whose answer carries data, and returns that answer. */
  #request(requestId: number, payload: Uint8Array): Result<VhostUserMessage> {
    if (this.#failed !== null) return err(this.#failed);
    const sent = this.#connection.send(requestId, 0, payload, [], this.#remaining());
    if (!sent.ok) return this.#fail(`${requestName(requestId)}: ${describeConnectionError(sent.error)}`);
    return this.#awaitReply(requestId);
  }

  /** What is left of the current operation's deadline (a request outside one gets a whole timeout). */
  #remaining(): number {
    const left = this.#deadline - performance.now();
    return left > 0 ? left : this.#deadline === 0 ? this.#options.timeoutMs : 0;
  }

  #awaitReply(requestId: number): Result<VhostUserMessage> {
    const reply = this.#connection.receive(this.#remaining());
    if (!reply.ok) return this.#fail(`${requestName(requestId)}: ${describeConnectionError(reply.error)}`);
    closeFds(reply.value.fds);
    if (reply.value.request !== requestId || !(reply.value.flags & VHOST_USER_FLAG_REPLY) || reply.value.fds.length > 0) {
      return this.#fail(`${requestName(requestId)}: the back-end answered with ${requestName(reply.value.request)}`);
    }
    return ok(reply.value);
  }

  /** Serves the back-end channel: configuration-change notices, each acknowledged when asked. */
  #onBackendRequest(): void {
    const channel = this.#backendChannel;
    if (channel === null) return;
    for (;;) {
      const r = channel.readMessage();
      if (!r.ok) {
        this.#fail(`back-end channel: ${describeConnectionError(r.error)}`);
        return;
      }
      const m = r.value;
      if (m === null) return;
      closeFds(m.fds);
      const now = performance.now();
      if (now - this.#requestWindow.start > 1000) this.#requestWindow = { start: now, count: 0 };
      if (++this.#requestWindow.count > MAX_BACKEND_REQUESTS_PER_SECOND) {
        this.#fail(`the back-end sent more than ${MAX_BACKEND_REQUESTS_PER_SECOND} requests in a second`);
        return;
      }
      if (m.request !== VHOST_USER_BACKEND.CONFIG_CHANGE_MSG || m.fds.length > 0) {
        this.#fail(`back-end channel: unexpected request ${m.request}`);
        return;
      }
      if (this.#options.type.configFrom === "backend") this.#config = null;
      if (m.flags & VHOST_USER_FLAG_NEED_REPLY) channel.send(m.request, VHOST_USER_FLAG_REPLY, encodeU64(0), [], this.#options.timeoutMs);
      this.#configListener?.();
    }
  }

  #fail(reason: string): Result<never> {
    if (this.#failed === null) {
      this.#failed = reason;
      if (this.#backendChannel) this.#options.loop.unwatch(this.#backendChannel.fd);
      this.#options.loop.unwatch(this.#connection.fd);
      this.#options.onFailure(reason);
    }
    return err(reason);
  }
}

/** Sends `requestId` and waits for its answer (during the handshake, before the object exists). */
function request(connection: VhostUserConnection, requestId: number, payload: Uint8Array, timeoutMs: number): Result<VhostUserMessage> {
  const sent = connection.send(requestId, 0, payload, [], timeoutMs);
  if (!sent.ok) return err(`${requestName(requestId)}: ${describeConnectionError(sent.error)}`);
  const reply = connection.receive(timeoutMs);
  if (!reply.ok) return err(`${requestName(requestId)}: ${describeConnectionError(reply.error)}`);
  closeFds(reply.value.fds);
  if (reply.value.request !== requestId || !(reply.value.flags & VHOST_USER_FLAG_REPLY)) {
    return err(`${requestName(requestId)}: the back-end answered with ${requestName(reply.value.request)}`);
  }
  return ok(reply.value);
}
