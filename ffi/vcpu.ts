// vcpu.ts - bindings for c/vcpu.c: KVM_RUN and the kick signal.
import { checked } from "../src/base/errno.ts";
import { native } from "./lib.ts";

/** Records the calling thread's kvm_run page so a kick can set its immediate_exit. */
export function bindVcpuThread(kvmRunAddress: number): void {
  native.tsvm_vcpu_bind(kvmRunAddress);
}

/** Runs the vCPU until its next exit; returns the exit reason or -errno (-EINTR after a kick). */
export const vcpuRun: (vcpuFd: number) => number = native.tsvm_vcpu_run;

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
