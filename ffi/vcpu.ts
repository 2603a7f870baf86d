// vcpu.ts - bindings for c/vcpu.c: vCPU threads, their exit slots, KVM_RUN and the kick signal.
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
 * index `from`; polls first within the adaptive window in `pollState` (window ns, ceiling ns).
 * Returns the index, -EAGAIN (the bell rang, nothing posted) or -ETIMEDOUT.
 */
export function waitExit(bell: Pointer, slots: Pointer, stride: number, count: number, from: number, timeoutMs: number, pollState: BigInt64Array): number {
  return native.tsvm_vcpu_wait_exit(bell, slots, stride, count, from, timeoutMs, pollState);
}

/** Rings the bell at `bell`: a waiting exit server looks at its flags again. */
export function ringBell(bell: Pointer): void {
  native.tsvm_bell_ring(bell);
}

/** Waits at most `timeoutMs` until the bell's sequence differs from `sequence`. */
export function waitBell(bell: Pointer, sequence: number, timeoutMs: number): void {
  native.tsvm_bell_wait(bell, sequence, timeoutMs);
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
