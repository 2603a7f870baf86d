// vcpu_shared.ts - memory shared between the control loop and the vCPU Workers (one SharedArrayBuffer).
//
// Layout (little-endian Int32 words, then per-vCPU blocks):
//   header   [0] exit requested (0/1)   [1] pause requested (0/1)
//   per vCPU (VCPU_BLOCK bytes each, after HEADER_SIZE):
//     state: STARTING | RUNNING | STOPPED     tid: the Worker's thread id for tgkill
//     outcome: how it stopped                 report length, then the report text (UTF-8)
//     mailbox: state, flags, address lo/hi, length, 8 data bytes (see bus_mailbox.ts)
// Every word is read and written with Atomics, so each side sees the other's stores in order.

const HEADER_SIZE = 16;
const VCPU_BLOCK = 8192;
const REPORT_OFFSET = 64;
export const REPORT_CAPACITY = VCPU_BLOCK - REPORT_OFFSET;
/** Word offsets inside a vCPU block. */
const W_STATE = 0;
const W_TID = 1;
const W_OUTCOME = 2;
const W_REPORT_LENGTH = 3;
/** The mailbox starts at byte 32 of the block. */
export const MAILBOX_OFFSET = 32;

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

  requestExit(): void {
    Atomics.store(this.#words, 0, 1);
    Atomics.notify(this.#words, 1); // parked vCPUs wake up to stop
  }

  get pauseRequested(): boolean {
    return Atomics.load(this.#words, 1) !== 0;
  }

  /** Asks vCPUs to park at their next kick; `resume` lets them go. */
  requestPause(): void {
    Atomics.store(this.#words, 1, 1);
  }

  resume(): void {
    Atomics.store(this.#words, 1, 0);
    Atomics.notify(this.#words, 1);
  }

  /** Worker side: parks vCPU `id` until resumed or told to exit. */
  park(id: number): void {
    Atomics.store(this.#words, this.#word(id, W_STATE), VCPU_STATE.PARKED);
    while (Atomics.load(this.#words, 1) !== 0 && Atomics.load(this.#words, 0) === 0) Atomics.wait(this.#words, 1, 1, 1000);
    Atomics.store(this.#words, this.#word(id, W_STATE), VCPU_STATE.RUNNING);
  }

  state(id: number): number {
    return Atomics.load(this.#words, this.#word(id, W_STATE));
  }

  tid(id: number): number {
    return Atomics.load(this.#words, this.#word(id, W_TID));
  }

  /** Called by the Worker once it can be kicked. */
  markRunning(id: number, tid: number): void {
    Atomics.store(this.#words, this.#word(id, W_TID), tid);
    Atomics.store(this.#words, this.#word(id, W_STATE), VCPU_STATE.RUNNING);
  }

  /** Called by the Worker as its last act: how it stopped and, for errors, the report. */
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
