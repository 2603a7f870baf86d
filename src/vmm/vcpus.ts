// vcpus.ts - the VM's vCPUs seen from the control loop: run vCPU 0 on this (the main) thread between
// turns of the loop, start the exit server that runs the others, serve its bus requests, park the
// vCPUs (tsvm suspend), and stop them.
import type { Pointer } from "bun:ffi";
import { sys, vcpu as vcpuFfi } from "../../ffi/mod.ts";
import { EventFd } from "../base/event_fd.ts";
import { logLevel, logOnce, RateLimitedLog } from "../base/log.ts";
import { describeError } from "../base/result.ts";
import type { BuiltVm } from "../arch/x86_64/build_vm.ts";
import type { Bus, BusAccess, BusDevice } from "../devices/bus.ts";
import { type AddressSpace, BusMailbox } from "../vcpu/bus_mailbox.ts";
import { VCPU_OUTCOME, VCPU_STATE, VcpuShared } from "../vcpu/vcpu_shared.ts";
import { type RunnerHost, VcpuRunner, type VcpuWorkerInit } from "../vcpu/vcpu_runner.ts";
import { WorkerBusLayout } from "../vcpu/worker_bus.ts";
import { type ControlLoop, type Ending, EVENT_LOOP_SLICE_MS, yieldToEventLoop } from "./control_loop.ts";

/** Real-time signal offset used to kick vCPU threads out of KVM_RUN. */
const KICK_SIGNAL_OFFSET = 2;
/** How long stopping vCPUs may take before their Workers are terminated. */
const VCPU_STOP_DEADLINE_MS = 1000;
/** How long vCPUs get to park for tsvm suspend. */
const PARK_DEADLINE_MS = 2000;

import { EXIT_CODE } from "./exit_code.ts";

export { EXIT_CODE };

/**
 * Where the exit server's code is: an extra entry point of the executable, which lays the bundle out
 * from src/ (so from here, in the bundle, it is ./vcpu/...), or the source file beside this folder.
 */
const WORKER_URL = Bun.isStandaloneExecutable
  ? new URL("./vcpu/vcpu_worker.ts", import.meta.url).href
  : new URL("../vcpu/vcpu_worker.ts", import.meta.url).href;

/**
 * TSVM_VCPU_THREADS=all puts vCPU 0 on a C thread too, so the exit server serves every vCPU: it
 * measures the hand-off on the exit round trip (`npm run bench`, section 1).
 */
const EVERY_VCPU_SERVED = process.env.TSVM_VCPU_THREADS === "all";

/**
 * Whether vCPU 0 runs on the main thread. Not with --disable-sandbox: the devices then run on the
 * control loop, and each of the guest's notifications would have to kick vCPU 0 out of the guest
 * before the loop could serve it (a 4 KiB read at depth 1 took 6.7 times as long); there every vCPU
 * goes to the exit server, and the main thread is the devices' alone.
 */
export function vcpu0OnMainThread(sandbox: boolean): boolean {
  return sandbox && !EVERY_VCPU_SERVED;
}

/**
 * Starts the exit server's Worker early, where the VM has vCPUs for it (vCPUs 1 and up, or every
 * vCPU when vCPU 0 is not on the main thread): it takes a while to load its code, and gets its vCPUs
 * once they are built (vcpu/vcpu_runner.ts says why vCPUs run where they do). A Worker sees the
 * environment as the process started unless given this one; the environment names the memfd that
 * holds libtsvm.so (ffi/lib.ts), and without it the Worker made a copy of its own.
 */
export function startVcpuWorkers(cpus: number, sandbox: boolean): Worker[] {
  if (cpus === 1 && vcpu0OnMainThread(sandbox)) return [];
  const env = Object.fromEntries(Object.entries(process.env).filter((e): e is [string, string] => e[1] !== undefined));
  // smol: the Worker's heap is kept small (collected sooner). Its exit path allocates nothing, so
  // that costs it nothing: section 1 measured the same round trip either way, the VMM 0.2-0.35 MiB less.
  return [new Worker(WORKER_URL, { env, smol: true })];
}

/**
 * On the main thread, a vCPU's accesses to the devices the control loop owns go straight to its
 * Buses (a Worker's go through a mailbox); a device that throws is logged, and a read sees all ones.
 */
class DirectBusDevice implements BusDevice {
  readonly debugLabel: string;
  readonly #errors = new RateLimitedLog("error");
  constructor(readonly space: AddressSpace, readonly bus: Bus, readonly onUnhandled: (space: AddressSpace, address: number) => void) {
    this.debugLabel = `control loop ${space}`;
  }

  read(access: BusAccess, data: Uint8Array): void {
    try {
      if (this.bus.read(access.address, data, access.vcpuId)) return;
      this.onUnhandled(this.space, access.address);
    } catch (e) {
      this.#errors.log(`${this.space === "io" ? "port" : "MMIO"} read at 0x${access.address.toString(16)} failed: ${describeError(e)}`);
    }
    data.fill(0xff);
  }

  write(access: BusAccess, data: Uint8Array): void {
    try {
      if (!this.bus.write(access.address, data, access.vcpuId)) this.onUnhandled(this.space, access.address);
    } catch (e) {
      this.#errors.log(`${this.space === "io" ? "port" : "MMIO"} write at 0x${access.address.toString(16)} failed: ${describeError(e)}`);
    }
  }
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
  /** vCPU 0's runner on this thread (null with TSVM_VCPU_THREADS=all), and the thread that kicks it. */
  #main: VcpuRunner | null = null;
  #waker: vcpuFfi.VcpuWaker | null = null;

  readonly #mainThreadVcpu: boolean;

  constructor(built: BuiltVm, workers: readonly Worker[], loop: ControlLoop, buses: Record<AddressSpace, Bus>, sandbox: boolean) {
    this.#built = built;
    this.#mainThreadVcpu = vcpu0OnMainThread(sandbox);
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
   * Readies vCPU 0 on this thread and hands the exit server its vCPUs and the bus layout, which
   * follows every later change of the buses (BARs the guest moves); the devices offering a worker
   * view then are the ones the runners serve themselves. `serve` runs vCPU 0.
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
    const init = (role: VcpuWorkerInit["role"], mine: readonly number[]): VcpuWorkerInit => ({
      role, ids: mine, vcpuFds: this.#built.vcpus.map((v) => v.fd), mmapSize, shared: this.#shared.buffer, kickSignal,
      busRequestFd: this.#busRequest.fd, exitFd: this.#vcpuExit.fd, vmFd: this.#built.vm.fd, layout: layout.table, views, logLevel: logLevel(),
    });
    const served = this.#mainThreadVcpu ? ids.slice(1) : ids;
    if (this.#mainThreadVcpu) {
      const main = new VcpuRunner(init("main", ids.slice(0, 1)), this.#mainHost(kickSignal));
      main.prepare();
      main.startMain();
      this.#main = main;
      this.#waker = new vcpuFfi.VcpuWaker(this.#loop.epollFd, sys.gettid(), kickSignal, EVENT_LOOP_SLICE_MS);
    }
    const worker = this.#workers[0];
    if (served.length === 0 || worker === undefined) return;
    const label = `the exit server of vCPUs ${served[0]} and up`;
    worker.addEventListener("error", (e) => this.#onWorkerFailure(label, e.message));
    worker.addEventListener("close", () => {
      if (served.some((id) => this.#shared.state(id) !== VCPU_STATE.STOPPED)) this.#onWorkerFailure(label, "it exited before its vCPUs stopped");
    });
    worker.postMessage(init("server", served));
  }

  /**
   * What vCPU 0's runner gets on this thread: the control loop's buses, called directly; and UART
   * output whose write a kick interrupts, and which turns the control loop while it waits (the waker
   * kicks each slice then): a stuck reader holds up the guest's printing vCPU but not tsvm, and a
   * stop drops the byte.
   */
  #mainHost(kickSignal: number): RunnerHost {
    const onUnhandled = (space: AddressSpace, address: number): void =>
      logOnce(this.#unhandled, `${space}:${address}`, "debug", `unhandled ${space === "io" ? "port" : "MMIO"} access at 0x${address.toString(16)}`);
    return {
      remote: () => ({ io: new DirectBusDevice("io", this.#buses.io, onUnhandled), mmio: new DirectBusDevice("mmio", this.#buses.mmio, onUnhandled) }),
      outputWaits: () => {
        this.#loop.turn(0);
        return this.#shared.exitRequested || this.#loop.ending !== null;
      },
      writeOnce: (fd, bytes) => vcpuFfi.writeKickable(fd, bytes, kickSignal),
    };
  }

  /**
   * Serves the control loop, and runs vCPU 0 between its turns, until something ends the VM. vCPU 0
   * runs until the waker kicks it (the loop has work, or a slice of EVENT_LOOP_SLICE_MS has passed)
   * or it stops; the loop then takes a turn, and Bun's event loop one each slice. While the VM is
   * paused, or once vCPU 0 has stopped, the loop serves alone.
   */
  async serve(): Promise<Ending> {
    const main = this.#main;
    const waker = this.#waker;
    if (main === null || waker === null) return await this.#loop.run();
    const loop = this.#loop;
    let sliceStart = performance.now();
    for (;;) {
      let served: number;
      if (!main.stopped && !this.#shared.pauseRequested && !this.#shared.exitRequested && loop.ending === null) {
        waker.running(true);
        const outcome = main.runMain();
        waker.running(false);
        if (outcome !== "interrupted" && outcome !== "served") main.stopMain(outcome);
        served = loop.turn(0);
      } else {
        served = loop.turn(EVENT_LOOP_SLICE_MS);
      }
      if (loop.ending) return loop.ending;
      if ((served === 0 && main.stopped) || performance.now() - sliceStart >= EVENT_LOOP_SLICE_MS) {
        await yieldToEventLoop();
        sliceStart = performance.now();
        if (loop.ending) return loop.ending;
      }
    }
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
    // vCPU 0 is outside the guest whenever this thread runs, and stays out while the pause lasts.
    const main = this.#main;
    if (main !== null && !main.stopped) this.#shared.setState(0, VCPU_STATE.PARKED);
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
    if (this.#main !== null && !this.#main.stopped) this.#shared.setState(0, VCPU_STATE.RUNNING);
    vcpuFfi.ringBell(this.#bell);
  }

  /** Stops every vCPU (kicks them out of KVM_RUN, releases waiting mailboxes). */
  async stop(): Promise<void> {
    this.#shared.requestExit();
    vcpuFfi.ringBell(this.#bell);
    this.#main?.stopMain({ kind: "kicked" });
    this.#waker?.stop();
    this.#waker = null;
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
    this.#waker?.stop();
    this.#waker = null;
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
