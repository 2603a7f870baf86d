// vhost_user_driver.ts - the other side of a vhost-user socket for tests: a front-end that sends well-
// formed or hostile messages to a back-end served in the same process, and a driver-side virtqueue
// in real shared memory (a sealed memfd, as a VMM would share).
import { readdirSync } from "node:fs";
import { socket, sys } from "../../ffi/mod.ts";
import { EventFd } from "../../src/base/event_fd.ts";
import { WaitContext } from "../../src/base/wait_context.ts";
import { VhostUserConnection } from "../../src/devices/vhost_user/connection.ts";
import {
  encodeMemoryTable, encodeU64, encodeVringAddress, encodeVringState, VHOST_USER, VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_FLAG_NEED_REPLY, VHOST_USER_PROTOCOL_F, type VhostUserMessage,
} from "../../src/devices/vhost_user/protocol.ts";
import type { DeviceEventLoop } from "../../src/devices/virtio/virtio_device.ts";
import { GuestMemory, guestAddress as ga } from "../../src/memory/mod.ts";

export const RAM_SIZE = 1 << 20;
/** Where the test's rings live in guest memory (queue i at QUEUE_BASE + i * 0x1000). */
export const QUEUE_BASE = 0x1_0000;
export const BUFFER_BASE = 0x8_0000;
export const QSIZE = 8;

/** A real WaitContext the back-end runs on; `pump` runs whatever is ready, without blocking. */
export class TestLoop implements DeviceEventLoop {
  readonly wait = new WaitContext<() => void>();
  watch(fd: number, handler: () => void, events?: number): void {
    this.wait.add(fd, handler, events);
  }
  unwatch(fd: number): void {
    this.wait.delete(fd);
  }
  /** Runs ready handlers until nothing more is ready. */
  pump(): void {
    for (let rounds = 0; rounds < 100; rounds++) {
      const events = this.wait.wait(0);
      if (events.length === 0) return;
      for (const { token } of events) token();
    }
  }
}

/** The fds this process holds now (to check that a dropped connection leaks none). */
export function openFds(): number {
  return readdirSync("/proc/self/fd").length;
}

/** A front-end for tests, with guest memory and one driver-side ring per queue. */
export class TestFrontend {
  readonly memory = GuestMemory.create([{ base: 0, size: RAM_SIZE }]);
  readonly connection: VhostUserConnection;
  readonly backendFd: number;
  readonly kicks: EventFd[] = [];
  readonly calls: EventFd[] = [];
  readonly #availIdx: number[] = [];

  /** Over a socket pair (the back-end takes `backendFd`), or over `connected`, a socket to a back-end elsewhere. */
  constructor(connected?: number) {
    const [ours, theirs] = connected === undefined ? socket.socketPair(socket.SOCK_STREAM) : [connected, -1];
    this.connection = new VhostUserConnection(ours);
    this.backendFd = theirs;
  }

  /** Sends a well-formed message. */
  send(request: number, payload: Uint8Array = new Uint8Array(0), fds: readonly number[] = [], flags = 0): void {
    const sent = this.connection.send(request, flags, payload, fds, 1000);
    if (!sent.ok) throw new Error(`send failed: ${sent.error.kind}`);
  }

  /** Sends raw bytes (a hostile message). */
  sendRaw(bytes: Uint8Array, fds: readonly number[] = []): void {
    socket.sendWithFds(this.connection.fd, bytes, bytes.byteLength, Int32Array.from(fds));
  }

  /** Reads a reply the back-end already sent. */
  reply(): VhostUserMessage {
    const r = this.connection.receive(1000);
    if (!r.ok) throw new Error(`no reply: ${r.error.kind}`);
    return r.value;
  }

  /** The memory table of this front-end's guest memory (its fd duplicated, as SCM_RIGHTS would). */
  memoryTable(): { payload: Uint8Array; fds: number[] } {
    const r = this.memory.regions[0]!;
    return {
      payload: encodeMemoryTable([{ guestAddress: 0n, size: BigInt(RAM_SIZE), userAddress: BigInt(r.hostAddress), mmapOffset: 0n }]),
      fds: [r.fd],
    };
  }

  /** Negotiates like QEMU does and starts `queues` rings (protocol features, REPLY_ACK off). */
  start(queues: number, features: bigint): void {
    this.send(VHOST_USER.SET_OWNER);
    this.send(VHOST_USER.SET_FEATURES, encodeU64(features | (1n << VHOST_USER_F_PROTOCOL_FEATURES)));
    const table = this.memoryTable();
    this.send(VHOST_USER.SET_MEM_TABLE, table.payload, table.fds);
    const host = BigInt(this.memory.regions[0]!.hostAddress);
    for (let index = 0; index < queues; index++) {
      const base = BigInt(QUEUE_BASE + index * 0x1000);
      const kick = new EventFd();
      const call = new EventFd();
      this.kicks.push(kick);
      this.calls.push(call);
      this.#availIdx.push(0);
      this.send(VHOST_USER.SET_VRING_NUM, encodeVringState({ index, num: QSIZE }));
      this.send(VHOST_USER.SET_VRING_BASE, encodeVringState({ index, num: 0 }));
      this.send(VHOST_USER.SET_VRING_ADDR, encodeVringAddress({ index, flags: 0, descriptor: host + base, available: host + base + 0x200n, used: host + base + 0x400n, log: 0n }));
      this.send(VHOST_USER.SET_VRING_CALL, encodeU64(index), [call.fd]);
      this.send(VHOST_USER.SET_VRING_KICK, encodeU64(index), [kick.fd]);
      this.send(VHOST_USER.SET_VRING_ENABLE, encodeVringState({ index, num: 1 }));
    }
  }

  /** Posts one device-writable buffer of `length` bytes on queue `index` and kicks it; returns the buffer address. */
  postWritable(index: number, length: number): number {
    const base = QUEUE_BASE + index * 0x1000;
    const slot = this.#availIdx[index]! % QSIZE;
    const buffer = BUFFER_BASE + index * 0x8000 + slot * 0x1000;
    this.memory.writeU64(ga(base + slot * 16), BigInt(buffer));
    this.memory.writeU32(ga(base + slot * 16 + 8), length);
    this.memory.writeU16(ga(base + slot * 16 + 12), 2); // VIRTQ_DESC_F_WRITE
    this.memory.writeU16(ga(base + 0x200 + 4 + 2 * slot), slot);
    this.#availIdx[index] = (this.#availIdx[index]! + 1) & 0xffff;
    this.memory.writeU16(ga(base + 0x200 + 2), this.#availIdx[index]!);
    this.kicks[index]!.signal();
    return buffer;
  }

  /**
   * Posts one chain on queue `index` (`segments` in order, each device-readable or -writable) and
   * kicks it. The chain takes descriptors 0..3: one chain in flight at a time, of at most 4 segments.
   */
  postChain(index: number, segments: readonly { readonly addr: number; readonly len: number; readonly write: boolean }[]): void {
    const base = QUEUE_BASE + index * 0x1000;
    const slot = this.#availIdx[index]! % QSIZE;
    if (segments.length > 4) throw new Error("postChain: at most 4 segments");
    segments.forEach((segment, i) => {
      const at = base + i * 16;
      const last = i === segments.length - 1;
      this.memory.writeU64(ga(at), BigInt(segment.addr));
      this.memory.writeU32(ga(at + 8), segment.len);
      this.memory.writeU16(ga(at + 12), (last ? 0 : 1) | (segment.write ? 2 : 0)); // VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
      this.memory.writeU16(ga(at + 14), i + 1);
    });
    this.memory.writeU16(ga(base + 0x200 + 4 + 2 * slot), 0);
    this.#availIdx[index] = (this.#availIdx[index]! + 1) & 0xffff;
    this.memory.writeU16(ga(base + 0x200 + 2), this.#availIdx[index]!);
    this.kicks[index]!.signal();
  }

  /** The used index of queue `index` and its last element. */
  used(index: number): { idx: number; len: number } {
    const base = QUEUE_BASE + index * 0x1000 + 0x400;
    const idx = this.memory.readU16(ga(base + 2));
    return { idx, len: idx === 0 ? 0 : this.memory.readU32(ga(base + 4 + 8 * ((idx - 1) % QSIZE) + 4)) };
  }

  close(): void {
    this.connection.close();
    for (const e of [...this.kicks, ...this.calls]) e.close();
    this.memory.close();
  }
}

/** The protocol features a test asks for. */
export const TEST_PROTOCOL_FEATURES = (1n << VHOST_USER_PROTOCOL_F.REPLY_ACK) | (1n << VHOST_USER_PROTOCOL_F.MQ);
export { VHOST_USER_FLAG_NEED_REPLY, sys };
