// vcpu_runner.ts - what runs the vCPUs: vCPU 0 on the VMM's main thread, and the exit server of the
// others on a Worker.
//
// vCPU 0 runs KVM_RUN on the VMM's main thread and serves each exit right there (run_loop.ts): no
// hand-off, so its exit round trip stays at the C loop's, and no JavaScript realm of its own (a
// Worker costs about 3 MiB). The control loop shares that thread: the waker (c/vcpu.c) kicks the
// vCPU out of the guest when the loop has work, and vmm/vcpus.ts turns the loop between two runs.
// Every other vCPU runs KVM_RUN on a thread of the C library, which posts each exit into its slot;
// one Worker, the exit server, serves the posted exits of all of them and answers GO (run on) or
// STOP. The hand-off costs those vCPUs a few thousand cycles per exit (docs/architecture.md has the
// measurements). A kick (-EINTR) is where a runner looks at the VM's flags: stop, or hold the vCPU
// outside the guest while the VM is paused (tsvm suspend).
import type { Pointer } from "bun:ffi";
import { noFTL } from "bun:jsc";
import { sys, vcpu as vcpuFfi } from "../../ffi/mod.ts";
import { EventFd } from "../base/event_fd.ts";
import { logOnce, type LogLevel } from "../base/log.ts";
import { LOOP_POLL_NS } from "../base/wait_context.ts";
import { Bus, type BusDevice } from "../devices/bus.ts";
import { Sink } from "../devices/sink.ts";
import { Vcpu } from "../kvm/vcpu.ts";
import type { AddressSpace } from "./bus_mailbox.ts";
import { exitHandler, type ExitOutcome, type VcpuStop } from "./run_loop.ts";
import { formatRegisters } from "./vcpu_dump.ts";
import { VCPU_OUTCOME, VCPU_STATE, VcpuShared } from "./vcpu_shared.ts";
import { WorkerBuses, type WorkerView } from "./worker_bus.ts";
import { workerDeviceFactory } from "./worker_devices.ts";

/** What a runner is given: by the control loop for the main thread, in the one message a Worker receives. */
export type VcpuWorkerInit = {
  /** "main": run the one vCPU in `ids` on this (the main) thread; "server": serve the C threads of `ids`. */
  readonly role: "main" | "server";
  /** The vCPUs this runner runs (a "server" gets consecutive ids). */
  readonly ids: readonly number[];
  /** Every vCPU's fd, indexed by vCPU id. */
  readonly vcpuFds: readonly number[];
  readonly mmapSize: number;
  readonly shared: SharedArrayBuffer;
  readonly kickSignal: number;
  readonly busRequestFd: number;
  readonly exitFd: number;
  readonly vmFd: number;
  /** The bus layout table and the views it refers to (worker_bus.ts). */
  readonly layout: SharedArrayBuffer;
  readonly views: readonly WorkerView[];
  /** The VMM's --log-level (a Worker starts with the default). */
  readonly logLevel: LogLevel;
};

/** What the thread a runner lives on gives it. */
export type RunnerHost = {
  /** What stands on this thread's buses for the devices the control loop owns. */
  readonly remote: (init: VcpuWorkerInit, shared: VcpuShared) => Readonly<Record<AddressSpace, BusDevice>>;
  /**
   * Asked whenever a UART's output waits for its reader; true drops the byte (the VM is going
   * down). Null: the runner's own (a suspend holds the vCPUs right there).
   */
  readonly outputWaits: (() => boolean) | null;
  /**
   * The UARTs' write call; the main thread's is one a kick interrupts (it must never sit in write()
   * while its control loop has work). Undefined: a plain write.
   */
  readonly writeOnce?: (fd: number, bytes: Uint8Array) => number;
};

const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;
/** How long one wait for an exit sleeps before it looks at the flags anyway (ms). */
const WAIT_TIMEOUT_MS = 1000;
/** How long a paused wait sleeps before it looks again (ms); a resume or stop rings at once. */
const PAUSE_WAIT_MS = 10;

/** How far a vCPU is, as its Worker sees it. */
const enum Phase { STARTING, RUNNING, HELD, STOPPED }

export class VcpuRunner {
  readonly #init: VcpuWorkerInit;
  readonly #shared: VcpuShared;
  readonly #exitEvent: EventFd;
  readonly #bell: Pointer;
  /** Indexed by vCPU id (only this Worker's ids are set). */
  readonly #slots: Pointer[] = [];
  readonly #phase: Phase[] = [];
  readonly #serve: ((reason: number) => ExitOutcome)[] = [];
  readonly #runs: number[] = [];
  /** The adaptive polling window (ns) and its ceiling, for vcpuFfi.waitExit. */
  readonly #poll = new BigInt64Array([0n, BigInt(LOOP_POLL_NS)]);
  #stopped = 0;
  /** The vCPU whose exit is being served (a UART's output may wait for its reader meanwhile). */
  #current: number;

  readonly #host: RunnerHost;
  /** Set when an exit of the main thread's vCPU turned the control loop. */
  #loopTurned = false;

  constructor(init: VcpuWorkerInit, host: RunnerHost) {
    this.#init = init;
    this.#host = host;
    this.#shared = new VcpuShared(init.shared);
    this.#exitEvent = new EventFd(init.exitFd);
    this.#bell = this.#shared.bellAddress();
    this.#current = init.ids[0]!;
    for (const id of init.ids) {
      this.#slots[id] = this.#shared.slotAddress(id);
      this.#phase[id] = Phase.STARTING;
    }
  }

  /** Maps this runner's kvm_run pages and builds the buses and an exit handler for each vCPU. */
  prepare(): void {
    const init = this.#init;
    const remote = this.#host.remote(init, this.#shared);
    for (const id of init.ids) this.#runs[id] = sys.mmap(init.mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, init.vcpuFds[id]!, 0);
    const pages = this.#runs.map((address) => new Uint8Array(sys.viewOf(address, init.mmapSize)));
    // Output that waits for its reader: on a Worker a suspend holds the vCPUs right here (none runs
    // guest code meanwhile), and a stop drops the byte; the main thread turns its control loop.
    const hostWaits = this.#host.outputWaits;
    const outputWaits = hostWaits === null
      ? (): boolean => {
        this.#holdWhilePaused();
        return this.#shared.exitRequested;
      }
      : (): boolean => {
        this.#loopTurned = true;
        return hostWaits();
      };
    // KVM's coalesced ring follows every vCPU's kvm_run page; it is the VM's, so any vCPU's mapping serves.
    const buses = new WorkerBuses({ io: new Bus(), mmio: new Bus() }, init.layout, init.views, remote, new Sink("sink"),
      workerDeviceFactory(init.vmFd, pages[init.ids[0]!]!, outputWaits, this.#host.writeOnce));
    const unhandled = new Set<string>();
    const onUnhandled = init.logLevel !== "debug" ? undefined
      : (space: "io" | "mmio", address: number): void =>
        logOnce(unhandled, `${space}:${address}`, "debug", `unhandled ${space === "io" ? "port" : "MMIO"} access at 0x${address.toString(16)}`);
    for (const id of init.ids) {
      this.#serve[id] = exitHandler({ vcpuId: id, kvmRun: pages[id]!, io: buses.io, mmio: buses.mmio, refreshBuses: () => buses.refresh(), unhandled: onUnhandled });
      // The exit server's handlers stop at JSC's DFG tier: an FTL compile lands on a CPU that the
      // spinning server and vCPU threads keep busy, and measured it cost the hand-off ~1,500 cycles
      // an exit over the first 100,000 exits while gaining nothing once settled (400,000 exits).
      if (init.role === "server") noFTL(this.#serve[id]!);
    }
  }

  /**
   * Readies the main thread to run its one vCPU: binds its kvm_run page, keeps the kick signal out of
   * every system call but KVM_RUN, and marks it running (with no tid: nothing signals the main thread).
   */
  startMain(): void {
    const id = this.#init.ids[0]!;
    vcpuFfi.bindVcpuThread(this.#runs[id]!);
    vcpuFfi.setupMainThreadVcpu(this.#init.vcpuFds[id]!, this.#init.kickSignal);
    this.#shared.markRunning(id, 0);
    this.#phase[id] = Phase.RUNNING;
  }

  /**
   * Runs the main thread's vCPU and serves its exits until a kick (the control loop has work, or the
   * slice ended: "interrupted") or a stop; a kick's pending signal is taken off the thread.
   */
  runMain(): ExitOutcome {
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

  /** Whether the main thread's vCPU has stopped. */
  get stopped(): boolean {
    return this.#phase[this.#init.ids[0]!] === Phase.STOPPED;
  }

  /** Ends the main thread's vCPU (`stop` says why) unless it has ended already. */
  stopMain(stop: VcpuStop): void {
    const id = this.#init.ids[0]!;
    if (this.#phase[id] !== Phase.STOPPED) this.#stop(id, stop);
  }

  /** Starts the C threads of this runner's vCPUs and serves their exits until every one has stopped. */
  runServer(): void {
    const init = this.#init;
    const first = init.ids[0]!;
    const count = init.ids.length;
    for (const id of init.ids) vcpuFfi.startVcpuThread(id, init.vcpuFds[id]!, this.#runs[id]!, this.#slots[id]!, this.#bell, init.kickSignal);
    const shared = this.#shared;
    let from = 0;
    while (this.#stopped < count) {
      this.#settleHeld();
      if (this.#stopped === count) break;
      const index = vcpuFfi.waitExit(this.#bell, this.#slots[first]!, VcpuShared.slotStride, count, from, WAIT_TIMEOUT_MS, this.#poll);
      if (index < 0) continue; // the bell rang (resume, stop) or a timeout: look at the flags
      from = index + 1 === count ? 0 : index + 1;
      const id = first + index;
      this.#current = id;
      let outcome: ExitOutcome;
      try {
        outcome = this.#serve[id]!(shared.slotReason(id));
      } catch (e) {
        outcome = { kind: "error", message: `vCPU ${id}: ${e instanceof Error ? e.message : String(e)}` };
      }
      if (outcome === "served") vcpuFfi.answerExit(this.#slots[id]!, vcpuFfi.SLOT_ANSWER.GO);
      else if (outcome === "interrupted") this.#interrupted(id);
      else this.#stop(id, outcome);
    }
  }

  /** Reports every vCPU of this runner that has not stopped as failed (its thread failed). */
  abandon(message: string): void {
    for (const id of this.#init.ids) {
      if (this.#phase[id] !== Phase.STOPPED) this.#stop(id, { kind: "error", message: `vCPU ${id}: ${message}` });
    }
  }

  /** Server side, a kick (or the thread's first post): stop, hold while paused, or run on. */
  #interrupted(id: number): void {
    const shared = this.#shared;
    if (this.#phase[id] === Phase.STARTING) {
      // Mark it running before the flags are read: a kick sent after requestExit is then either seen
      // here or delivered to the thread (its tid is published, its handler ready).
      shared.markRunning(id, shared.slotTid(id));
      this.#phase[id] = Phase.RUNNING;
    }
    if (shared.exitRequested) {
      this.#stop(id, { kind: "kicked" });
    } else if (shared.pauseRequested) {
      this.#phase[id] = Phase.HELD;
      shared.setState(id, VCPU_STATE.PARKED);
    } else {
      vcpuFfi.answerExit(this.#slots[id]!, vcpuFfi.SLOT_ANSWER.GO);
    }
  }

  /** Server side: lets held vCPUs go once the pause ends, or stops them once the VM stops. */
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

  /**
   * Holds this Worker's vCPUs outside the guest while the VM is paused: the current one (its exit is
   * being served, or it was kicked) and, for the server, every one whose exit is posted.
   */
  #holdWhilePaused(): void {
    const shared = this.#shared;
    const parked: number[] = [];
    for (;;) {
      const sequence = shared.bellSequence();
      if (!shared.pauseRequested || shared.exitRequested) break;
      for (const id of this.#init.ids) {
        if (shared.state(id) !== VCPU_STATE.RUNNING) continue;
        if (id === this.#current || (this.#init.role === "server" && shared.exitPosted(id))) {
          shared.setState(id, VCPU_STATE.PARKED);
          parked.push(id);
        }
      }
      vcpuFfi.waitBell(this.#bell, sequence, PAUSE_WAIT_MS);
    }
    for (const id of parked) shared.setState(id, VCPU_STATE.RUNNING);
  }

  /** Ends vCPU `id` (its C thread, for the server) and reports how it stopped. */
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
    if (this.#init.role === "server" && this.#shared.exitPosted(id)) vcpuFfi.answerExit(this.#slots[id]!, vcpuFfi.SLOT_ANSWER.STOP);
    this.#phase[id] = Phase.STOPPED;
    this.#stopped++;
    const outcome = stop.kind === "kicked" ? VCPU_OUTCOME.KICKED : stop.kind === "guest_exit" ? VCPU_OUTCOME.GUEST_EXIT : VCPU_OUTCOME.ERROR;
    this.#shared.markStopped(id, outcome, report);
    this.#exitEvent.signal();
  }
}

