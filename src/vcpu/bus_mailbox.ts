// bus_mailbox.ts - the exit server's synchronous call into the Bus owned by the control loop, one
// mailbox per vCPU (the access is the vCPU's, and the control loop serves it as that vCPU's).
//
//   exit server (RemoteBusDevice)                 control loop (serveMailboxes)
//   write flags, address, length, data
//   state := REQUEST; eventfd += 1  ───────────▶  epoll wakes on the eventfd
//   Atomics.wait(state == REQUEST)                 for each mailbox in REQUEST: run the Bus access,
//                                   ◀───────────   write data, state := DONE, Atomics.notify
//   read data, state := IDLE
// A mailbox holds one request at a time (the exit server is blocked until the answer). CANCELLED tells
// a waiting exit server that the VM is going down; the vCPU then stops at its next kick.
import type { EventFd } from "../base/event_fd.ts";
import { RateLimitedLog } from "../base/log.ts";
import { describeError } from "../base/result.ts";
import type { Bus, BusAccess, BusDevice } from "../devices/bus.ts";
import { MAILBOX_OFFSET, type VcpuShared } from "./vcpu_shared.ts";

export const MAILBOX_STATE = { IDLE: 0, REQUEST: 1, DONE: 2, CANCELLED: 3 } as const;
const FLAG_WRITE = 1;
const FLAG_MMIO = 2;
/** Word offsets inside the mailbox. */
const M_STATE = 0;
const M_FLAGS = 1;
const M_ADDRESS_LO = 2;
const M_ADDRESS_HI = 3;
const M_LENGTH = 4;
/** Byte offset of the data inside the mailbox. */
const DATA_OFFSET = 24;
const MAX_ACCESS = 8;

/** The two address spaces a vCPU exit can touch. */
export type AddressSpace = "io" | "mmio";

/** One vCPU's mailbox over the shared buffer. */
export class BusMailbox {
  readonly #words: Int32Array;
  readonly #data: Uint8Array;
  readonly #errors = new RateLimitedLog("error");

  constructor(shared: VcpuShared, vcpuId: number) {
    const offset = shared.blockOffset(vcpuId) + MAILBOX_OFFSET;
    this.#words = new Int32Array(shared.buffer, offset, 6);
    this.#data = new Uint8Array(shared.buffer, offset + DATA_OFFSET, MAX_ACCESS);
  }

  /** Exit-server side: performs one access through the control loop; returns false if it was cancelled. */
  call(space: AddressSpace, write: boolean, address: number, data: Uint8Array, wake: EventFd): boolean {
    const w = this.#words;
    w[M_FLAGS] = (write ? FLAG_WRITE : 0) | (space === "mmio" ? FLAG_MMIO : 0);
    w[M_ADDRESS_LO] = address >>> 0;
    w[M_ADDRESS_HI] = Math.floor(address / 0x1_0000_0000);
    w[M_LENGTH] = data.byteLength;
    if (write) this.#data.set(data);
    Atomics.store(w, M_STATE, MAILBOX_STATE.REQUEST);
    wake.signal();
    while (Atomics.load(w, M_STATE) === MAILBOX_STATE.REQUEST) Atomics.wait(w, M_STATE, MAILBOX_STATE.REQUEST);
    const done = Atomics.load(w, M_STATE) === MAILBOX_STATE.DONE;
    if (done && !write) data.set(this.#data.subarray(0, data.byteLength));
    Atomics.store(w, M_STATE, MAILBOX_STATE.IDLE);
    return done;
  }

  /** Control-loop side: answers a pending request with `buses`; returns whether there was one. */
  serve(buses: Record<AddressSpace, Bus>, vcpuId: number, onUnhandled: (space: AddressSpace, address: number) => void): boolean {
    const w = this.#words;
    if (Atomics.load(w, M_STATE) !== MAILBOX_STATE.REQUEST) return false;
    const flags = w[M_FLAGS]!;
    const address = (w[M_ADDRESS_HI]! >>> 0) * 0x1_0000_0000 + (w[M_ADDRESS_LO]! >>> 0);
    const length = Math.min(MAX_ACCESS, Math.max(0, w[M_LENGTH]!));
    const space: AddressSpace = flags & FLAG_MMIO ? "mmio" : "io";
    const data = this.#data.subarray(0, length);
    try {
      const handled = flags & FLAG_WRITE ? buses[space].write(address, data, vcpuId) : buses[space].read(address, data, vcpuId);
      if (!handled) {
        if (!(flags & FLAG_WRITE)) data.fill(0xff);
        onUnhandled(space, address);
      }
    } catch (e) {
      // A device bug must neither leave the vCPU waiting nor reach the control loop.
      if (!(flags & FLAG_WRITE)) data.fill(0xff);
      this.#errors.log(`${space === "io" ? "port" : "MMIO"} access at 0x${address.toString(16)} failed: ${describeError(e)}`);
    }
    Atomics.store(w, M_STATE, MAILBOX_STATE.DONE);
    Atomics.notify(w, M_STATE);
    return true;
  }

  /** Control-loop side: releases a waiting vCPU without an answer. */
  cancel(): void {
    const w = this.#words;
    if (Atomics.compareExchange(w, M_STATE, MAILBOX_STATE.REQUEST, MAILBOX_STATE.CANCELLED) === MAILBOX_STATE.REQUEST) {
      Atomics.notify(w, M_STATE);
    }
  }
}

/** A BusDevice in the exit server that stands for a device owned by the control loop. */
export class RemoteBusDevice implements BusDevice {
  constructor(
    readonly debugLabel: string,
    readonly space: AddressSpace,
    /** Indexed by vCPU id: an access goes through the mailbox of the vCPU that made it. */
    readonly mailboxes: readonly BusMailbox[],
    readonly wake: EventFd,
  ) {}

  read(access: BusAccess, data: Uint8Array): void {
    if (!this.mailboxes[access.vcpuId]!.call(this.space, false, access.address, data, this.wake)) data.fill(0xff);
  }

  write(access: BusAccess, data: Uint8Array): void {
    this.mailboxes[access.vcpuId]!.call(this.space, true, access.address, data, this.wake);
  }
}
