// vcpus.ts - the VM's vCPUs seen from the control loop: start the Workers that run them, serve their
// bus requests, park the vCPUs (tsvm suspend), and stop them.
import type { Pointer } from "bun:ffi";
import { sys, vcpu as vcpuFfi } from "../../ffi/mod.ts";
import { EventFd } from "../base/event_fd.ts";
import { logLevel, logOnce } from "../base/log.ts";
import type { BuiltVm } from "../arch/x86_64/build_vm.ts";
import type { Bus } from "../devices/bus.ts";
import { type AddressSpace, BusMailbox } from "../vcpu/bus_mailbox.ts";
import { VCPU_OUTCOME, VCPU_STATE, VcpuShared } from "../vcpu/vcpu_shared.ts";
import type { VcpuWorkerInit } from "../vcpu/vcpu_worker.ts";
import { WorkerBusLayout } from "../vcpu/worker_bus.ts";
import type { ControlLoop, Ending } from "./control_loop.ts";

/** Real-time signal offset used to kick vCPU threads out of KVM_RUN. */
const KICK_SIGNAL_OFFSET = 2;
/** How long stopping vCPUs may take before their Workers are terminated. */
const VCPU_STOP_DEADLINE_MS = 1000;
/** How long vCPUs get to park for tsvm suspend. */
const PARK_DEADLINE_MS = 2000;

import { EXIT_CODE } from "./exit_code.ts";

export { EXIT_CODE };

/**
 * Where the vCPU Workers' code is: an extra entry point of the executable, which lays the bundle out
 * from src/ (so from here, in the bundle, it is ./vcpu/...), or the source file beside this folder.
 */
const WORKER_URL = Bun.isStandaloneExecutable
  ? new URL("./vcpu/vcpu_worker.ts", import.meta.url).href
  : new URL("../vcpu/vcpu_worker.ts", import.meta.url).href;

/**
 * TSVM_VCPU_THREADS=all puts vCPU 0 on a C thread too, so one Worker serves every vCPU: it measures
 * the hand-off on the exit round trip (`npm run bench`, section 1) and saves one Worker (~2.5 MiB).
 */
const EVERY_VCPU_SERVED = process.env.TSVM_VCPU_THREADS === "all";

/**
 * Starts the vCPU Workers early: they take a while to load their code, and get their vCPUs once they
 * are built. vCPU 0 gets a Worker of its own; with more vCPUs, one more Worker serves all the others,
 * which run KVM_RUN on threads of the C library (vcpu_worker.ts says why). A Worker sees the
 * environment as the process started unless given this one; the environment names the memfd that
 * holds libtsvm.so (ffi/lib.ts), and without it each Worker made a copy of its own.
 */
export function startVcpuWorkers(cpus: number): Worker[] {
  const env = Object.fromEntries(Object.entries(process.env).filter((e): e is [string, string] => e[1] !== undefined));
  // smol: the Worker's heap is kept small (collected sooner). Its exit path allocates nothing, so
  // that costs it nothing: section 1 measured 1.04×-1.05× the C loop either way, the VMM 0.2-0.35 MiB less.
  return Array.from({ length: cpus > 1 && !EVERY_VCPU_SERVED ? 2 : 1 }, () => new Worker(WORKER_URL, { env, smol: true }));
}

/** The vCPUs of one VM and the control loop's side of their mailboxes. */
export class Vcpus {
  readonly #built: BuiltVm;
  readonly #workers: readonly Worker[];
  readonly #loop: ControlLoop;
  readonly #buses: Record<AddressSpace, Bus>;
  readonly #shared: VcpuShared;
  readonly #mailboxes: BusMailbox[];
  readonly #busRequest = new EventFd();
  readonly #vcpuExit = new EventFd();
  readonly #unhandled = new Set<string>();
  /** The exit server's bell: rung so that it sees a resume or a stop at once. */
  readonly #bell: Pointer;
  #kickSignal = 0;
  #workerFailure: string | null = null;

  constructor(built: BuiltVm, workers: readonly Worker[], loop: ControlLoop, buses: Record<AddressSpace, Bus>) {
    this.#built = built;
    this.#workers = workers;
    this.#loop = loop;
    this.#buses = buses;
    this.#shared = new VcpuShared(built.vcpus.length);
    this.#bell = this.#shared.bellAddress();
    this.#mailboxes = built.vcpus.map((v) => new BusMailbox(this.#shared, v.id));
    loop.watch(this.#busRequest.fd, () => {
      this.#busRequest.read();
      this.serveMailboxes();
    });
    loop.watch(this.#vcpuExit.fd, () => {
      this.#vcpuExit.read();
      const ending = this.ending();
      if (ending) loop.end(ending);
    });
  }

  /**
   * Hands the Workers their vCPUs and the bus layout, which follows every later change of the buses
   * (BARs the guest moves); the devices offering a worker view then are the ones Workers serve.
   */
  start(): void {
    const kickSignal = vcpuFfi.sigrtmin() + KICK_SIGNAL_OFFSET;
    vcpuFfi.installKickHandler(kickSignal);
    this.#kickSignal = kickSignal;
    const mmapSize = this.#built.vm.kvm.vcpuMmapSize();
    const layout = new WorkerBusLayout();
    layout.publish(this.#buses);
    const views = layout.freezeViews();
    const republish = (): void => layout.publish(this.#buses);
    this.#buses.io.onChange = republish;
    this.#buses.mmio.onChange = republish;
    const ids = this.#built.vcpus.map((v) => v.id);
    this.#workers.forEach((worker, n) => {
      const role = n === 0 && !EVERY_VCPU_SERVED ? "own" : "server";
      const mine = EVERY_VCPU_SERVED ? ids : n === 0 ? ids.slice(0, 1) : ids.slice(1);
      const label = role === "own" ? "vCPU 0's Worker" : `the exit server of vCPUs ${mine[0]} and up`;
      worker.addEventListener("error", (e) => this.#onWorkerFailure(label, e.message));
      worker.addEventListener("close", () => {
        if (mine.some((id) => this.#shared.state(id) !== VCPU_STATE.STOPPED)) this.#onWorkerFailure(label, "it exited before its vCPUs stopped");
      });
      const init: VcpuWorkerInit = {
        role, ids: mine, vcpuFds: this.#built.vcpus.map((v) => v.fd), mmapSize, shared: this.#shared.buffer, kickSignal,
        busRequestFd: this.#busRequest.fd, exitFd: this.#vcpuExit.fd, vmFd: this.#built.vm.fd, layout: layout.table, views, logLevel: logLevel(),
      };
      worker.postMessage(init);
    });
  }

  /** Answers every pending bus request; keeps going while requests arrive (a wake-up may cover several). */
  serveMailboxes(): void {
    const onUnhandled = (space: AddressSpace, address: number): void =>
      logOnce(this.#unhandled, `${space}:${address}`, "debug", `unhandled ${space === "io" ? "port" : "MMIO"} access at 0x${address.toString(16)}`);
    let served = true;
    while (served) {
      served = false;
      this.#mailboxes.forEach((m, id) => {
        if (m.serve(this.#buses, id, onUnhandled)) served = true;
      });
    }
  }

  /** How the VM ends because of its vCPUs (an error, the guest's reset or power-off), or null. */
  ending(): Ending | null {
    if (this.#workerFailure) return { code: EXIT_CODE.VM_ERROR, message: this.#workerFailure };
    for (const vcpu of this.#built.vcpus) {
      if (this.#shared.state(vcpu.id) !== VCPU_STATE.STOPPED) continue;
      const outcome = this.#shared.outcome(vcpu.id);
      if (outcome === VCPU_OUTCOME.ERROR) return { code: EXIT_CODE.VM_ERROR, message: this.#shared.report(vcpu.id) };
      if (outcome === VCPU_OUTCOME.GUEST_EXIT) return { code: EXIT_CODE.GUEST_EXIT, message: null };
    }
    return null;
  }

  /** Parks every vCPU outside KVM_RUN; returns false (and lets them go) if they do not park in time. */
  park(): boolean {
    this.#shared.requestPause();
    const deadline = performance.now() + PARK_DEADLINE_MS;
    const settled = (): boolean => this.#built.vcpus.every((v) => {
      const state = this.#shared.state(v.id);
      return state === VCPU_STATE.PARKED || state === VCPU_STATE.STOPPED;
    });
    while (!settled()) {
      if (performance.now() > deadline) {
        this.unpark();
        return false;
      }
      this.#kickRunning();
      this.#busRequest.read();
      this.serveMailboxes(); // a vCPU waiting on a device finishes its exit, then parks
      this.#loop.turn(1);
    }
    return true;
  }

  /** Lets parked vCPUs run again. */
  unpark(): void {
    this.#shared.resume();
    vcpuFfi.ringBell(this.#bell);
  }

  /** Stops every vCPU (kicks them out of KVM_RUN, releases waiting mailboxes). */
  async stop(): Promise<void> {
    this.#shared.requestExit();
    vcpuFfi.ringBell(this.#bell);
    const deadline = performance.now() + VCPU_STOP_DEADLINE_MS;
    const allStopped = (): boolean => this.#built.vcpus.every((v) => this.#shared.state(v.id) === VCPU_STATE.STOPPED);
    while (!allStopped() && performance.now() < deadline) {
      this.#kickRunning();
      for (const m of this.#mailboxes) m.cancel();
      this.#loop.turn(10);
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  /** Whether every vCPU has stopped. */
  get stopped(): boolean {
    return this.#built.vcpus.every((v) => this.#shared.state(v.id) === VCPU_STATE.STOPPED);
  }

  close(): void {
    this.#loop.unwatch(this.#busRequest.fd);
    this.#loop.unwatch(this.#vcpuExit.fd);
    this.#busRequest.close();
    this.#vcpuExit.close();
  }

  #kickRunning(): void {
    const pid = sys.getpid();
    for (const v of this.#built.vcpus) {
      const tid = this.#shared.tid(v.id);
      if (this.#shared.state(v.id) === VCPU_STATE.RUNNING && tid > 0) vcpuFfi.kickThread(pid, tid, this.#kickSignal);
    }
  }

  #onWorkerFailure(label: string, message: string): void {
    this.#workerFailure ??= `${label} failed: ${message}`;
    this.#vcpuExit.signal();
  }
}
