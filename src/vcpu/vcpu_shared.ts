// vcpu_shared.ts - memory shared between the main thread (control loop, vCPU 0, the server of the
// others) and the vCPU threads (one SharedArrayBuffer).
//
// Layout (little-endian Int32 words, then per-vCPU blocks):
//   header   [0] exit requested (0/1)   [1] pause requested (0/1)   [2..5] the server's bell
//   per vCPU (VCPU_BLOCK bytes each, after HEADER_SIZE):
//     state: STARTING | RUNNING | PARKED | STOPPED    tid: the vCPU thread's id for tgkill
//     outcome: how it stopped                         report length, then the report text (UTF-8)
//     slot (byte 16): the vCPU thread's posted exit (c/vcpu.c)
// Every word is read and written with Atomics (or C atomics), so each side sees the other's stores
// in order.
import { type Pointer, ptr } from "bun:ffi";

const HEADER_SIZE = 32;
const VCPU_BLOCK = 8192;
const REPORT_OFFSET = 64;
export const REPORT_CAPACITY = VCPU_BLOCK - REPORT_OFFSET;
/** Word offsets inside a vCPU block. */
const W_STATE = 0;
const W_TID = 1;
const W_OUTCOME = 2;
const W_REPORT_LENGTH = 3;
/** The vCPU thread's slot starts at byte 16 of the block, the bell at byte 8 of the header. */
const SLOT_OFFSET = 16;
const BELL_OFFSET = 8;
/** Slot words (c/vcpu.c). */
const S_STATE = 0;
const S_REASON = 1;
const S_TID = 2;
/** The slot's state while an exit is posted, and once the server took it (c/vcpu.c). */
const SLOT_EXIT = 2;
const SLOT_SERVING = 6;

export const VCPU_STATE = { STARTING: 0, RUNNING: 1, STOPPED: 2, PARKED: 3 } as const;

/** How a vCPU stopped: asked to (kick), the guest powered off or reset, or an error with a report. */
export const VCPU_OUTCOME = { NONE: 0, KICKED: 1, GUEST_EXIT: 2, ERROR: 3 } as const;
export type VcpuOutcome = (typeof VCPU_OUTCOME)[keyof typeof VCPU_OUTCOME];

/** A view of the shared block; both sides construct one over the same SharedArrayBuffer. */
export class VcpuShared {
  readonly buffer: SharedArrayBuffer;
  readonly #words: Int32Array;
  readonly #bytes: Uint8Array;

  constructor(bufferOrCount: SharedArrayBuffer | number) {
    this.buffer = typeof bufferOrCount === "number"
      ? new SharedArrayBuffer(HEADER_SIZE + bufferOrCount * VCPU_BLOCK)
      : bufferOrCount;
    this.#words = new Int32Array(this.buffer);
    this.#bytes = new Uint8Array(this.buffer);
  }

  get vcpuCount(): number {
    return (this.buffer.byteLength - HEADER_SIZE) / VCPU_BLOCK;
  }

  /** Byte offset of vCPU `id`'s block. */
  blockOffset(id: number): number {
    return HEADER_SIZE + id * VCPU_BLOCK;
  }

  get exitRequested(): boolean {
    return Atomics.load(this.#words, 0) !== 0;
  }

  /** Asks every vCPU to stop; the caller rings the bell and kicks the running ones. */
  requestExit(): void {
    Atomics.store(this.#words, 0, 1);
  }

  get pauseRequested(): boolean {
    return Atomics.load(this.#words, 1) !== 0;
  }

  /** Asks vCPUs to park at their next kick; `resume` lets them go (the caller rings the bell). */
  requestPause(): void {
    Atomics.store(this.#words, 1, 1);
  }

  resume(): void {
    Atomics.store(this.#words, 1, 0);
  }

  state(id: number): number {
    return Atomics.load(this.#words, this.#word(id, W_STATE));
  }

  /** Server side: vCPU `id` is PARKED (held outside KVM_RUN) or RUNNING again. */
  setState(id: number, state: (typeof VCPU_STATE)["RUNNING" | "PARKED"]): void {
    Atomics.store(this.#words, this.#word(id, W_STATE), state);
  }

  /** The address of the server's bell (two words and a 64-bit time), for c/vcpu.c. */
  bellAddress(): Pointer {
    return ptr(new Int32Array(this.buffer, BELL_OFFSET, 4)); // c/vcpu.c struct exit_bell: 16 bytes
  }

  /** The address of vCPU `id`'s slot, for c/vcpu.c; slots are `VCPU_BLOCK` bytes apart. */
  slotAddress(id: number): Pointer {
    return ptr(new Int32Array(this.buffer, this.blockOffset(id) + SLOT_OFFSET, 4));
  }

  static readonly slotStride = VCPU_BLOCK;

  /** Whether vCPU `id`'s thread has posted an exit that is not answered yet (taken or not). */
  exitPosted(id: number): boolean {
    const state = Atomics.load(this.#words, this.#word(id, SLOT_OFFSET / 4 + S_STATE));
    return state === SLOT_EXIT || state === SLOT_SERVING;
  }

  /** The exit reason (or -errno) the vCPU thread posted. */
  slotReason(id: number): number {
    return Atomics.load(this.#words, this.#word(id, SLOT_OFFSET / 4 + S_REASON));
  }

  slotTid(id: number): number {
    return Atomics.load(this.#words, this.#word(id, SLOT_OFFSET / 4 + S_TID));
  }

  tid(id: number): number {
    return Atomics.load(this.#words, this.#word(id, W_TID));
  }

  /** Called by the runner of vCPU `id` once it runs (a C thread: once it can be kicked). */
  markRunning(id: number, tid: number): void {
    Atomics.store(this.#words, this.#word(id, W_TID), tid);
    Atomics.store(this.#words, this.#word(id, W_STATE), VCPU_STATE.RUNNING);
  }

  /** Called by the runner of vCPU `id` as it stops: how it stopped and, for errors, the report. */
  markStopped(id: number, outcome: VcpuOutcome, report: string): void {
    const encoded = new TextEncoder().encode(report).subarray(0, REPORT_CAPACITY);
    this.#bytes.set(encoded, this.blockOffset(id) + REPORT_OFFSET);
    Atomics.store(this.#words, this.#word(id, W_REPORT_LENGTH), encoded.length);
    Atomics.store(this.#words, this.#word(id, W_OUTCOME), outcome);
    Atomics.store(this.#words, this.#word(id, W_STATE), VCPU_STATE.STOPPED);
  }

  outcome(id: number): VcpuOutcome {
    return Atomics.load(this.#words, this.#word(id, W_OUTCOME)) as VcpuOutcome;
  }

  report(id: number): string {
    const length = Atomics.load(this.#words, this.#word(id, W_REPORT_LENGTH));
    const start = this.blockOffset(id) + REPORT_OFFSET;
    return new TextDecoder().decode(this.#bytes.slice(start, start + length));
  }

  #word(id: number, word: number): number {
    return this.blockOffset(id) / 4 + word;
  }
}
