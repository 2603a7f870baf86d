// vsock_driver.ts - a virtio-vsock driver for tests: rings in plain guest memory, packets in and out,
// and a host side made of socket pairs.
import { socket, sys } from "../../ffi/mod.ts";
import { err, ok, type Result } from "../../src/base/result.ts";
import { StreamSocket } from "../../src/base/stream_socket.ts";
import { decodeHeader, encodeHeader, HEADER_SIZE, HOST_CID, type PacketHeader, VSOCK_TYPE_STREAM } from "../../src/devices/virtio/vsock/packet.ts";
import { Vsock, type VsockHost } from "../../src/devices/virtio/vsock/vsock.ts";
import { GuestMemory, guestAddress as ga } from "../../src/memory/mod.ts";
import type { VirtioDevice } from "../../src/devices/virtio/virtio_device.ts";
import { TestLoop } from "./vhost_user_driver.ts";
import { COMMON, FakeLoop, VirtioPciDriver } from "./virtio_pci_driver.ts";

const VERSION_1 = 1n << 32n;
export const GUEST_CID = 3;
const QSIZE = 64;
const RINGS = [0x10000, 0x14000, 0x18000].map((base) => ({ desc: base, avail: base + 0x1000, used: base + 0x2000 }));
const RX_BUFFERS = 0x40000;
export const RX_BUFFER_SIZE = 4096;
const TX_BUFFERS = 0x100000;
const TX_BUFFER_SIZE = 0x10000;
const TX_SLOTS = 16;

/** A packet the guest received: its header and payload. */
export type Received = { readonly header: PacketHeader; readonly payload: Uint8Array };

/** Host programs, one socket pair per connection; `listening` says which host ports accept. */
export class FakeHost implements VsockHost {
  readonly listening = new Set<number>();
  /** The host program's ends of connections the guest opened, by port, oldest first. */
  readonly accepted = new Map<number, number[]>();
  /** Connections waiting for `complete` (set `deferred` to answer later, as a jailed device's VMM does). */
  deferred = false;
  readonly waiting: (() => void)[] = [];

  connect(port: number, done: (socket: Result<StreamSocket>) => void): void {
    const answer = (): void => {
      if (!this.listening.has(port)) return done(err("ECONNREFUSED"));
      const [device, program] = socket.socketPair(socket.SOCK_STREAM);
      const list = this.accepted.get(port) ?? [];
      list.push(program);
      this.accepted.set(port, list);
      done(ok(StreamSocket.adopt(device)));
    };
    if (this.deferred) this.waiting.push(answer);
    else answer();
  }
}

/** Where the device under test lives: tsvm's Vsock on a fake host (the default), or any VirtioDevice on a real loop. */
export type VsockDriverOptions = { readonly cid?: number; readonly rxBuffers?: number; readonly device?: VirtioDevice; readonly loop?: TestLoop };

export class VsockDriver {
  readonly memory = GuestMemory.create([{ base: 0, size: 4 << 20 }]);
  readonly host = new FakeHost();
  readonly device: Vsock;
  readonly pci: VirtioPciDriver<FakeLoop | TestLoop>;
  #rxUsed = 0;
  #rxAvail = 0;
  #txAvail = 0;

  constructor(options: VsockDriverOptions = {}) {
    this.device = new Vsock(options.cid ?? GUEST_CID, this.host);
    this.pci = new VirtioPciDriver<FakeLoop | TestLoop>(options.device ?? this.device, this.memory, options.loop ?? new FakeLoop());
    const rxBuffers = options.rxBuffers ?? 32;
    if (!this.pci.negotiate(VERSION_1)) throw new Error("features refused");
    for (const [i, r] of RINGS.entries()) this.pci.setupQueue(i, QSIZE, r.desc, r.avail, r.used);
    for (let i = 0; i < rxBuffers; i++) this.#postRx(i, RX_BUFFER_SIZE);
    this.pci.driverOk();
  }

  /** The guest sends one packet (header fields default to a stream from the guest to the host). */
  send(fields: Partial<PacketHeader>, payload: Uint8Array = new Uint8Array(0), opts: { chainLength?: number } = {}): void {
    const header: PacketHeader = {
      srcCid: GUEST_CID, dstCid: HOST_CID, srcPort: 0, dstPort: 0, len: payload.byteLength, type: VSOCK_TYPE_STREAM, op: 0, flags: 0,
      bufAlloc: 256 * 1024, fwdCnt: 0, ...fields,
    };
    const slot = this.#txAvail % QSIZE;
    const buffer = TX_BUFFERS + (this.#txAvail % TX_SLOTS) * TX_BUFFER_SIZE;
    const bytes = new Uint8Array(HEADER_SIZE + payload.byteLength);
    encodeHeader(header, bytes);
    bytes.set(payload, HEADER_SIZE);
    this.memory.write(ga(buffer), bytes);
    const r = RINGS[1]!;
    this.memory.writeU64(ga(r.desc + slot * 16), BigInt(buffer));
    this.memory.writeU32(ga(r.desc + slot * 16 + 8), opts.chainLength ?? bytes.byteLength);
    this.memory.writeU16(ga(r.desc + slot * 16 + 12), 0);
    this.memory.writeU16(ga(r.avail + 4 + slot * 2), slot);
    this.#txAvail++;
    this.memory.writeU16(ga(r.avail + 2), this.#txAvail & 0xffff);
    this.pci.kick(1);
  }

  /** Whether the device wants to hear of new rx buffers (VIRTQ_USED_F_NO_NOTIFY clear in the rx used ring). */
  get rxNotificationsWanted(): boolean {
    return (this.memory.readU16(ga(RINGS[0]!.used)) & 1) === 0;
  }

  /** How many transmit buffers the device has returned. */
  get txUsed(): number {
    return this.memory.readU16(ga(RINGS[1]!.used + 2));
  }

  /** Runs every ready handler of the device (kicks, host sockets, the timer) until none is ready. */
  pump(): void {
    const loop = this.pci.loop;
    if (loop instanceof TestLoop) {
      loop.pump();
      return;
    }
    for (let round = 0; round < 1000; round++) {
      let ran = false;
      for (const [fd, handler] of [...loop.handlers]) {
        if (socket.poll(fd, socket.POLLIN, 0) > 0) {
          handler();
          ran = true;
        }
      }
      if (!ran) return;
    }
  }

  /** Packets the device put in rx buffers since the last call (each buffer is posted again). */
  receive(): Received[] {
    this.pump();
    const r = RINGS[0]!;
    const out: Received[] = [];
    const usedIdx = this.memory.readU16(ga(r.used + 2));
    while (this.#rxUsed !== usedIdx) {
      const slot = 4 + 8 * (this.#rxUsed % QSIZE);
      const id = this.memory.readU32(ga(r.used + slot));
      const len = this.memory.readU32(ga(r.used + slot + 4));
      const buffer = RX_BUFFERS + id * RX_BUFFER_SIZE;
      const header = decodeHeader(this.memory.slice(ga(buffer), HEADER_SIZE)!);
      out.push({ header, payload: this.memory.slice(ga(buffer + HEADER_SIZE), len - HEADER_SIZE)!.slice() });
      this.#rxUsed = (this.#rxUsed + 1) & 0xffff;
      this.#postRx(id, RX_BUFFER_SIZE);
    }
    if (out.length > 0) this.pci.kick(0);
    return out;
  }

  /** Runs the device until `predicate` holds for the packets received so far, or `ms` pass. */
  async receiveUntil(predicate: (all: Received[]) => boolean, ms = 5000): Promise<Received[]> {
    const all: Received[] = [];
    const deadline = performance.now() + ms;
    for (;;) {
      all.push(...this.receive());
      if (predicate(all) || performance.now() > deadline) return all;
      await Bun.sleep(1);
    }
  }

  /** Makes `count` more rx buffers available (ids after the first `from`). */
  postRxBuffers(from: number, count: number): void {
    for (let i = from; i < from + count; i++) this.#postRx(i, RX_BUFFER_SIZE);
    this.pci.kick(0);
  }

  #postRx(id: number, size: number): void {
    const r = RINGS[0]!;
    this.memory.writeU64(ga(r.desc + id * 16), BigInt(RX_BUFFERS + id * RX_BUFFER_SIZE));
    this.memory.writeU32(ga(r.desc + id * 16 + 8), size);
    this.memory.writeU16(ga(r.desc + id * 16 + 12), 2); // device-writable
    this.memory.writeU16(ga(r.avail + 4 + (this.#rxAvail % QSIZE) * 2), id);
    this.#rxAvail = (this.#rxAvail + 1) & 0xffff;
    this.memory.writeU16(ga(r.avail + 2), this.#rxAvail);
  }

  close(): void {
    this.pci.write(COMMON.STATUS, 0, 1); // reset: the device stops and closes its host sockets
    for (const list of this.host.accepted.values()) for (const fd of list) sys.close(fd);
    this.pci.pci.close();
    this.memory.close();
  }
}
