// vcpu_runner.ts - how the VMM's main thread runs the vCPUs: vCPU 0 itself, or the C threads of all
// of them, whose exits it serves.
//
// A JavaScript realm per vCPU (a Bun Worker) costs about 3 MiB, so no vCPU gets one, and the main
// thread, which runs the control loop, runs the vCPUs too:
// - "own": a VM with one vCPU runs it on the main thread, KVM_RUN and the exit served right there
//   (run_loop.ts), with no hand-off, so its exit round trip stays at the C loop's. The waker
//   (c/vcpu.c) kicks the vCPU out of the guest when the control loop has work, and vmm/vcpus.ts
//   turns the loop between two runs.
// - "serve": with more vCPUs, every vCPU runs KVM_RUN on a thread of the C library, which posts each
//   exit into its slot; the main thread waits for a post and for the control loop's events at once,
//   serves each exit from that vCPU's kvm_run page and answers GO (run on) or STOP. The hand-off
//   costs a few thousand cycles per exit (docs/architecture.md has the measurements).
// A kick (-EINTR) is where a vCPU looks at the VM's flags: stop, or stay outside the guest while the
// VM is paused (tsvm suspend).
import type { Pointer } from "bun:ffi";
import { noFTL } from "bun:jsc";
import { sys, vcpu as vcpuFfi } from "../../ffi/mod.ts";
import { EventFd } from "../base/event_fd.ts";
import { logOnce, type LogLevel } from "../base/log.ts";
import { LOOP_POLL_NS } from "../base/wait_context.ts";
import { Bus, type BusDevice } from "../devices/bus.ts";
import { Sink } from "../devices/sink.ts";
import { Vcpu } from "../kvm/vcpu.ts";
import { exitHandler, type ExitOutcome, type VcpuStop } from "./run_loop.ts";
import { formatRegisters } from "./vcpu_dump.ts";
import { VCPU_OUTCOME, VCPU_STATE, VcpuShared } from "./vcpu_shared.ts";
import { type AddressSpace, WorkerBuses, type WorkerView } from "./worker_bus.ts";
import { workerDeviceFactory } from "./worker_devices.ts";

/** What a runner is given by the control loop (vmm/vcpus.ts). */
export type VcpuRunnerInit = {
  /** "own": run the one vCPU in `ids` on this thread; "serve": start the C threads of `ids` and serve them. */
  readonly mode: "own" | "serve";
  readonly ids: readonly number[];
  /** Every vCPU's fd, indexed by vCPU id. */
  readonly vcpuFds: readonly number[];
  readonly mmapSize: number;
  readonly shared: VcpuShared;
  readonly kickSignal: number;
  /** Signalled when a vCPU stops (the control loop then looks at how). */
  readonly exitFd: number;
  readonly vmFd: number;
  /** The control loop's epoll fd: a server waiting for exits returns when it has events. */
  readonly epollFd: number;
  /** The bus layout table and the views it refers to (worker_bus.ts). */
  readonly layout: SharedArrayBuffer;
  readonly views: readonly WorkerView[];
  readonly logLevel: LogLevel;
  /** What stands on the runner's buses for the devices the control loop owns (its Buses, called directly). */
  readonly remote: Readonly<Record<AddressSpace, BusDevice>>;
  /**
   * Asked whenever a UART's output waits for its reader: turns the control loop, and says whether
   * to drop the byte (the VM is going down).
   */
  readonly outputWaits: () => boolean;
  /** The UARTs' write call: one a kick interrupts (the thread must never sit in write() while its loop has work). */
  readonly writeOnce: (fd: number, bytes: Uint8Array) => number;
};

const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;

/** How far a vCPU is, as its runner sees it. */
const enum Phase { STARTING, RUNNING, HELD, STOPPED }

export class VcpuRunner {
  readonly #init: VcpuRunnerInit;
  readonly #shared: VcpuShared;
  readonly #exitEvent: EventFd;
  readonly #bell: Pointer;
  /** Indexed by vCPU id. */
  readonly #slots: Pointer[] = [];
  readonly #phase: Phase[] = [];
  readonly #serve: ((reason: number) => ExitOutcome)[] = [];
  readonly #runs: number[] = [];
  /** The vCPUs whose exits are being served, outermost first (a UART's output may turn the loop meanwhile). */
  readonly #inFlight: number[] = [];
  /** The adaptive polling window (ns) and its ceiling, for vcpuFfi.waitExit. */
  readonly #poll = new BigInt64Array([0n, BigInt(LOOP_POLL_NS)]);
  #stopped = 0;
  #from = 0;
  /** Set when an exit turned the control loop. */
  #loopTurned = false;

  constructor(init: VcpuRunnerInit) {
    this.#init = init;
    this.#shared = init.shared;
    this.#exitEvent = new EventFd(init.exitFd);
    this.#bell = this.#shared.bellAddress();
    for (const id of init.ids) {
      this.#slots[id] = this.#shared.slotAddress(id);
      this.#phase[id] = Phase.STARTING;
    }
  }

  /** Maps the vCPUs' kvm_run pages and builds the buses and an exit handler for each vCPU. */
  prepare(): void {
    const init = this.#init;
    for (const id of init.ids) this.#runs[id] = sys.mmap(init.mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, init.vcpuFds[id]!, 0);
    const pages = this.#runs.map((address) => new Uint8Array(sys.viewOf(address, init.mmapSize)));
    const outputWaits = (): boolean => {
      this.#loopTurned = true;
      return init.outputWaits();
    };
    // KVM's coalesced ring follows every vCPU's kvm_run page; it is the VM's, so any vCPU's mapping serves.
    const buses = new WorkerBuses({ io: new Bus(), mmio: new Bus() }, init.layout, init.views, init.remote, new Sink("sink"),
      workerDeviceFactory(init.vmFd, pages[init.ids[0]!]!, outputWaits, init.writeOnce));
    const unhandled = new Set<string>();
    const onUnhandled = init.logLevel !== "debug" ? undefined
      : (space: "io" | "mmio", address: number): void =>
        logOnce(unhandled, `${space}:${address}`, "debug", `unhandled ${space === "io" ? "port" : "MMIO"} access at 0x${address.toString(16)}`);
    for (const id of init.ids) {
      this.#serve[id] = exitHandler({ vcpuId: id, kvmRun: pages[id]!, io: buses.io, mmio: buses.mmio, refreshBuses: () => buses.refresh(), unhandled: onUnhandled });
      // A server's handlers stop at JSC's DFG tier: an FTL compile lands on a CPU that the spinning
      // server and vCPU threads keep busy, and measured it cost the hand-off ~1,500 cycles an exit
      // over the first 100,000 exits while gaining nothing once settled (400,000 exits).
      if (init.mode === "serve") noFTL(this.#serve[id]!);
    }
  }

  /** Whether every vCPU of this runner has stopped. */
  get stopped(): boolean {
    return this.#stopped === this.#init.ids.length;
  }

  // --- "own": the one vCPU on this thread ---

  /**
   * Readies this thread to run its one vCPU: binds its kvm_run page, keeps the kick signal out of
   * every system call but KVM_RUN, and marks it running (with no tid: nothing signals this thread
   * but the waker).
   */
  startOwn(): void {
    const id = this.#init.ids[0]!;
    vcpuFfi.bindVcpuThread(this.#runs[id]!);
    vcpuFfi.setupMainThreadVcpu(this.#init.vcpuFds[id]!, this.#init.kickSignal);
    this.#shared.markRunning(id, 0);
    this.#phase[id] = Phase.RUNNING;
  }

  /**
   * Runs the vCPU and serves its exits until a kick (the control loop has work, or the slice ended:
   * "interrupted"), an exit that turned the loop ("served"), or a stop, which it does not record
   * (`stopOwn`); a kick's pending signal is taken off the thread.
   */
  runOwn(): ExitOutcome {
    const id = this.#init.ids[0]!;
    const fd = this.#init.vcpuFds[id]!;
    const serve = this.#serve[id]!;
    for (;;) {
      const outcome = serve(vcpuFfi.vcpuRun(fd));
      if (outcome === "served" && !this.#loopTurned) continue;
      // An exit turned the control loop (a UART waiting for its reader): back to the loop, which
      // looks at a pause or stop asked for meanwhile.
      this.#loopTurned = false;
      if (outcome === "interrupted") vcpuFfi.consumeKicks(this.#init.kickSignal);
      return outcome;
    }
  }

  /** Ends the own vCPU (`stop` says why) unless it has ended already. */
  stopOwn(stop: VcpuStop): void {
    const id = this.#init.ids[0]!;
    if (this.#phase[id] !== Phase.STOPPED) this.#stop(id, stop);
  }

  // --- "serve": C threads, their exits served here ---

  /** Starts the C thread of every vCPU; each posts a first pseudo-exit before it runs the guest. */
  startThreads(wakeFd: number): void {
    const init = this.#init;
    vcpuFfi.initBell(this.#bell, wakeFd);
    for (const id of init.ids) vcpuFfi.startVcpuThread(id, init.vcpuFds[id]!, this.#runs[id]!, this.#slots[id]!, this.#bell, init.kickSignal);
  }

  /**
   * Waits up to `timeoutMs` for a posted exit or an event of the control loop, and serves one exit;
   * returns whether it did (false: the loop has events, or the time is up). Answers held vCPUs first
   * once a pause has ended.
   */
  serveNext(timeoutMs: number): boolean {
    this.#settleHeld();
    const ids = this.#init.ids;
    if (this.stopped) return false;
    const first = ids[0]!;
    const index = vcpuFfi.waitExit(this.#bell, this.#slots[first]!, VcpuShared.slotStride, ids.length, this.#from, this.#init.epollFd, timeoutMs, this.#poll);
    if (index < 0) return false;
    this.#from = index + 1 === ids.length ? 0 : index + 1;
    const id = first + index;
    const shared = this.#shared;
    let outcome: ExitOutcome;
    this.#inFlight.push(id);
    try {
      outcome = this.#serve[id]!(shared.slotReason(id));
    } catch (e) {
      outcome = { kind: "error", message: `vCPU ${id}: ${e instanceof Error ? e.message : String(e)}` };
    } finally {
      this.#inFlight.pop();
    }
    if (outcome === "served") {
      // The exit may have turned the control loop (a UART waiting for its reader).
      if (shared.exitRequested) this.#stop(id, { kind: "kicked" });
      else if (shared.pauseRequested) this.#hold(id);
      else vcpuFfi.answerExit(this.#slots[id]!, vcpuFfi.SLOT_ANSWER.GO);
    } else if (outcome === "interrupted") {
      this.#interrupted(id);
    } else {
      this.#stop(id, outcome);
    }
    return true;
  }

  /**
   * For a pause: the vCPUs whose exits are being served further up this thread's stack (a UART
   * waiting for its reader turned the loop) count as parked; they are held once their exits end.
   */
  parkInFlight(): void {
    for (const id of this.#inFlight) this.#shared.setState(id, VCPU_STATE.PARKED);
  }

  /** The pause ended: those vCPUs run on. */
  unparkInFlight(): void {
    for (const id of this.#inFlight) this.#shared.setState(id, VCPU_STATE.RUNNING);
  }

  /** A kick (or the thread's first post): stop, hold while paused, or run on. */
  #interrupted(id: number): void {
    const shared = this.#shared;
    if (this.#phase[id] === Phase.STARTING) {
      // Mark it running before the flags are read: a kick sent after requestExit is then either seen
      // here or delivered to the thread (its tid is published, its handler ready).
      shared.markRunning(id, shared.slotTid(id));
      this.#phase[id] = Phase.RUNNING;
    }
    if (shared.exitRequested) this.#stop(id, { kind: "kicked" });
    else if (shared.pauseRequested) this.#hold(id);
    else vcpuFfi.answerExit(this.#slots[id]!, vcpuFfi.SLOT_ANSWER.GO);
  }

  /** Keeps vCPU `id` outside the guest (its exit unanswered) until the pause ends. */
  #hold(id: number): void {
    this.#phase[id] = Phase.HELD;
    this.#shared.setState(id, VCPU_STATE.PARKED);
  }

  /** Lets held vCPUs go once the pause ends, or stops them once the VM stops. */
  #settleHeld(): void {
    const shared = this.#shared;
    const exiting = shared.exitRequested;
    if (!exiting && shared.pauseRequested) return;
    for (const id of this.#init.ids) {
      if (this.#phase[id] !== Phase.HELD) continue;
      if (exiting) {
        this.#stop(id, { kind: "kicked" });
      } else {
        this.#phase[id] = Phase.RUNNING;
        shared.setState(id, VCPU_STATE.RUNNING);
        vcpuFfi.answerExit(this.#slots[id]!, vcpuFfi.SLOT_ANSWER.GO);
      }
    }
  }

  /** Ends vCPU `id` (its C thread, when served) and reports how it stopped. */
  #stop(id: number, stop: VcpuStop): void {
    let report = stop.kind === "kicked" ? "" : stop.message;
    if (stop.kind === "error") {
      try {
        const vcpu = new Vcpu(id, this.#init.vcpuFds[id]!);
        report += `\n${formatRegisters(vcpu.getRegs(), vcpu.getSregs())}`;
      } catch (e) {
        report += `\n(registers unavailable: ${e instanceof Error ? e.message : String(e)})`;
      }
    }
    if (this.#init.mode === "serve" && this.#shared.exitPosted(id)) vcpuFfi.answerExit(this.#slots[id]!, vcpuFfi.SLOT_ANSWER.STOP);
    this.#phase[id] = Phase.STOPPED;
    this.#stopped++;
    const outcome = stop.kind === "kicked" ? VCPU_OUTCOME.KICKED : stop.kind === "guest_exit" ? VCPU_OUTCOME.GUEST_EXIT : VCPU_OUTCOME.ERROR;
    this.#shared.markStopped(id, outcome, report);
    this.#exitEvent.signal();
  }
}
