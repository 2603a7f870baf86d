// vcpu.ts - bindings for c/vcpu.c: vCPU threads, their exit slots, KVM_RUN, the kick signal and the waker.
import type { Pointer } from "bun:ffi";
import { checked } from "../src/base/errno.ts";
import { native } from "./lib.ts";

/** Records the calling thread's kvm_run page so a kick can set its immediate_exit. */
export function bindVcpuThread(kvmRunAddress: number): void {
  native.tsvm_vcpu_bind(kvmRunAddress);
}

/** Runs the vCPU until its next exit; returns the exit reason or -errno (-EINTR after a kick). */
export const vcpuRun: (vcpuFd: number) => number = native.tsvm_vcpu_run;

/** A slot's answer to a posted exit (c/vcpu.c). */
export const SLOT_ANSWER = { GO: 3, STOP: 4 } as const;

/**
 * Starts the C thread (named "vcpu <id>") that runs vCPU `id` from `vcpuFd`, its kvm_run page at
 * `kvmRunAddress`: it posts each exit into the slot at address `slot` and rings the bell at `bell`
 * when the exit server sleeps (addresses in shared memory).
 */
export function startVcpuThread(id: number, vcpuFd: number, kvmRunAddress: number, slot: Pointer, bell: Pointer, kickSignal: number): void {
  checked(native.tsvm_vcpu_thread_start(id, vcpuFd, kvmRunAddress, slot, bell, kickSignal), `start the thread of vCPU ${id}`);
}

/** Answers the exit posted in `slot`: run again (GO) or end the thread (STOP). */
export function answerExit(slot: Pointer, answer: number): void {
  native.tsvm_vcpu_answer(slot, answer);
}

/**
 * Waits for a posted exit among `count` slots `stride` bytes apart from `slots`, searching from
 * index `from`, and takes it (a wait made while it is served does not find it again), or waits for
 * an event on the control loop's epoll fd `epfd`; polls first within the
 * adaptive window in `pollState` (window ns, ceiling ns). Returns the index, -EAGAIN (the loop has
 * an event) or -ETIMEDOUT.
 */
export function waitExit(bell: Pointer, slots: Pointer, stride: number, count: number, from: number, epfd: number, timeoutMs: number, pollState: BigInt64Array): number {
  return native.tsvm_vcpu_wait_exit(bell, slots, stride, count, from, epfd, timeoutMs, pollState);
}

/** Gives the bell at `bell` the eventfd a vCPU thread's post writes when the server sleeps. */
export function initBell(bell: Pointer, wakeFd: number): void {
  native.tsvm_bell_init(bell, wakeFd);
}

/** Installs the kick handler for `signum` (process-wide, no SA_RESTART). */
export function installKickHandler(signum: number): void {
  checked(native.tsvm_kick_install(signum), `install kick handler for signal ${signum}`);
}

/** Sends `signum` to thread `tid` of process `tgid`; returns 0 or -errno. */
export function kickThread(tgid: number, tid: number, signum: number): number {
  return native.tsvm_kick(tgid, tid, signum);
}

/** Returns glibc's SIGRTMIN (the first real-time signal free for applications). */
export function sigrtmin(): number {
  return native.tsvm_sigrtmin();
}

/**
 * Readies the calling thread to run vCPU `vcpuFd` itself (the VMM's main thread): `kickSignal` stays
 * blocked outside KVM_RUN, so a kick never interrupts another system call of this thread; KVM
 * unblocks it inside KVM_RUN, which then returns -EINTR (c/vcpu.c).
 */
export function setupMainThreadVcpu(vcpuFd: number, kickSignal: number): void {
  checked(native.tsvm_vcpu_main_setup(vcpuFd, kickSignal), "block the kick signal outside KVM_RUN");
}

/** write() with `kickSignal` unblocked, so that a kick ends it with -EINTR (main thread); the count or -errno. */
export function writeKickable(fd: number, bytes: Uint8Array, kickSignal: number): number {
  return Number(native.tsvm_write_kickable(fd, bytes, bytes.byteLength, kickSignal));
}

/** Takes the pending kicks off the calling thread (after KVM_RUN returned -EINTR); returns how many. */
export function consumeKicks(kickSignal: number): number {
  return native.tsvm_kick_consume(kickSignal);
}

/**
 * The thread that kicks the main thread's vCPU out of the guest when the control loop's epoll fd
 * `epfd` has work, or once `sliceMs` has passed, while the main thread runs its vCPU.
 */
export class VcpuWaker {
  #handle: Pointer | null;

  constructor(epfd: number, tid: number, kickSignal: number, sliceMs: number) {
    this.#handle = native.tsvm_waker_start(epfd, tid, kickSignal, sliceMs) as Pointer | null;
    if (this.#handle === null) throw new Error("failed to start the vCPU waker thread");
  }

  /** The main thread starts (true) or stops (false) running its vCPU. */
  running(yes: boolean): void {
    if (this.#handle !== null) native.tsvm_waker_phase(this.#handle, yes ? 1 : 0);
  }

  /** Ends the thread (it frees itself). */
  stop(): void {
    if (this.#handle !== null) native.tsvm_waker_stop(this.#handle);
    this.#handle = null;
  }
}
