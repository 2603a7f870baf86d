// vcpus.ts - the VM's vCPUs seen from the control loop, which shares the main thread with them: run
// vCPU 0 between turns of the loop, or serve the exits of the vCPUs' C threads; park the vCPUs (tsvm
// suspend), and stop them.
import { sys, vcpu as vcpuFfi } from "../../ffi/mod.ts";
import { EventFd } from "../base/event_fd.ts";
import { logLevel, logOnce, RateLimitedLog } from "../base/log.ts";
import { describeError } from "../base/result.ts";
import type { BuiltVm } from "../arch/x86_64/build_vm.ts";
import type { Bus, BusAccess, BusDevice } from "../devices/bus.ts";
import { VcpuRunner } from "../vcpu/vcpu_runner.ts";
import { VCPU_OUTCOME, VCPU_STATE, VcpuShared } from "../vcpu/vcpu_shared.ts";
import { type AddressSpace, WorkerBusLayout } from "../vcpu/worker_bus.ts";
import { type ControlLoop, type Ending, EVENT_LOOP_SLICE_MS, yieldToEventLoop } from "./control_loop.ts";

/** Real-time signal offset used to kick vCPU threads out of KVM_RUN. */
const KICK_SIGNAL_OFFSET = 2;
/** How long stopping vCPUs may take before tsvm exits without them. */
const VCPU_STOP_DEADLINE_MS = 1000;
/** How long vCPUs get to park for tsvm suspend. */
const PARK_DEADLINE_MS = 2000;
/** Exits served in a row before the control loop gets a turn, when exits keep coming. */
const EXITS_PER_TURN = 64;

import { EXIT_CODE } from "./exit_code.ts";

export { EXIT_CODE };

/**
 * TSVM_VCPU_THREADS=all puts vCPU 0 on a C thread even in a one-vCPU VM, served as vCPUs are in a
 * VM with more: it measures the hand-off on the exit round trip (`npm run bench`, section 1).
 */
const EVERY_VCPU_SERVED = process.env.TSVM_VCPU_THREADS === "all";

/**
 * Whether the main thread runs the VM's one vCPU itself ("own") or serves the exits of C threads
 * ("serve"). Not "own" with --disable-sandbox: the devices then run on the control loop, and each of
 * the guest's notifications would have to kick the vCPU out of the guest before the loop could serve
 * it (a 4 KiB read at depth 1 took 6.7 times as long); served vCPUs keep running meanwhile.
 */
export function vcpuMode(cpus: number, sandbox: boolean): "own" | "serve" {
  return cpus === 1 && sandbox && !EVERY_VCPU_SERVED ? "own" : "serve";
}

/**
 * A vCPU's accesses to the devices the control loop owns go straight to its Buses; a device that
 * throws is logged, and a read sees all ones.
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

/** The vCPUs of one VM, run from the control loop's thread. */
export class Vcpus {
  readonly #built: BuiltVm;
  readonly #loop: ControlLoop;
  readonly #buses: Record<AddressSpace, Bus>;
  readonly #shared: VcpuShared;
  readonly #mode: "own" | "serve";
  readonly #vcpuExit = new EventFd();
  /** What a vCPU thread's post writes when the main thread sleeps ("serve"). */
  readonly #wake = new EventFd();
  readonly #unhandled = new Set<string>();
  #kickSignal = 0;
  #runner: VcpuRunner | null = null;
  /** The thread that kicks the own vCPU out of the guest when the loop has work ("own"). */
  #waker: vcpuFfi.VcpuWaker | null = null;

  constructor(built: BuiltVm, loop: ControlLoop, buses: Record<AddressSpace, Bus>, sandbox: boolean) {
    this.#built = built;
    this.#loop = loop;
    this.#buses = buses;
    this.#mode = vcpuMode(built.vcpus.length, sandbox);
    this.#shared = new VcpuShared(built.vcpus.length);
    loop.watch(this.#vcpuExit.fd, () => {
      this.#vcpuExit.read();
      const ending = this.ending();
      if (ending) loop.end(ending);
    });
  }

  /**
   * Readies the vCPUs: their buses follow the layout the control loop publishes, which follows every
   * later change of its buses (BARs the guest moves); the devices offering a worker view then are the
   * ones served over shared state. "own" binds vCPU 0 to this thread and starts the waker; "serve"
   * starts the vCPU threads. `serve` runs them.
   */
  start(): void {
    const kickSignal = vcpuFfi.sigrtmin() + KICK_SIGNAL_OFFSET;
    vcpuFfi.installKickHandler(kickSignal);
    this.#kickSignal = kickSignal;
    const layout = new WorkerBusLayout();
    layout.publish(this.#buses);
    const views = layout.freezeViews();
    const republish = (): void => layout.publish(this.#buses);
    this.#buses.io.onChange = republish;
    this.#buses.mmio.onChange = republish;
    const onUnhandled = (space: AddressSpace, address: number): void =>
      logOnce(this.#unhandled, `${space}:${address}`, "debug", `unhandled ${space === "io" ? "port" : "MMIO"} access at 0x${address.toString(16)}`);
    const runner = new VcpuRunner({
      mode: this.#mode, ids: this.#built.vcpus.map((v) => v.id), vcpuFds: this.#built.vcpus.map((v) => v.fd),
      mmapSize: this.#built.vm.kvm.vcpuMmapSize(), shared: this.#shared, kickSignal, exitFd: this.#vcpuExit.fd,
      vmFd: this.#built.vm.fd, epollFd: this.#loop.epollFd, layout: layout.table, views, logLevel: logLevel(),
      remote: { io: new DirectBusDevice("io", this.#buses.io, onUnhandled), mmio: new DirectBusDevice("mmio", this.#buses.mmio, onUnhandled) },
      // A UART whose reader stopped reading holds up the vCPU that prints, not tsvm: its write is one
      // a kick ends (the waker kicks each slice while the main thread has not come back), and while
      // it waits the control loop turns; a stop drops the byte, a suspend parks the vCPU right there.
      outputWaits: () => {
        this.#loop.turn(0);
        return this.#shared.exitRequested || this.#loop.ending !== null;
      },
      writeOnce: (fd, bytes) => vcpuFfi.writeKickable(fd, bytes, kickSignal),
    });
    runner.prepare();
    this.#runner = runner;
    if (this.#mode === "own") {
      runner.startOwn();
      this.#waker = new vcpuFfi.VcpuWaker(this.#loop.epollFd, sys.gettid(), kickSignal, EVENT_LOOP_SLICE_MS);
    } else {
      runner.startThreads(this.#wake.fd);
    }
  }

  /**
   * Serves the control loop and runs the vCPUs until something ends the VM; Bun's event loop gets a
   * turn each EVENT_LOOP_SLICE_MS. "own": vCPU 0 runs until the waker kicks it (the loop has work, or
   * the slice ended) or it stops, and the loop then takes a turn. "serve": the thread waits for a
   * posted exit and for the loop's events at once, serves what came, and gives the loop a turn at
   * least every EXITS_PER_TURN exits. While the VM is paused, or once the vCPUs have stopped, the
   * loop serves alone.
   */
  async serve(): Promise<Ending> {
    const runner = this.#runner;
    if (runner === null) return await this.#loop.run();
    const loop = this.#loop;
    let sliceStart = performance.now();
    let exits = 0;
    for (;;) {
      let events = 0;
      if (runner.stopped || loop.ending !== null) {
        events = loop.turn(EVENT_LOOP_SLICE_MS);
      } else if (this.#mode === "own") {
        if (this.#shared.pauseRequested) {
          events = loop.turn(EVENT_LOOP_SLICE_MS);
        } else {
          this.#waker!.running(true);
          const outcome = runner.runOwn();
          this.#waker!.running(false);
          if (outcome !== "interrupted" && outcome !== "served") runner.stopOwn(outcome);
          events = loop.turn(0);
        }
      } else if (!runner.serveNext(EVENT_LOOP_SLICE_MS) || ++exits >= EXITS_PER_TURN) {
        exits = 0;
        events = loop.turn(0);
      }
      if (loop.ending) return loop.ending;
      if ((events === 0 && runner.stopped) || performance.now() - sliceStart >= EVENT_LOOP_SLICE_MS) {
        await yieldToEventLoop();
        sliceStart = performance.now();
        if (loop.ending) return loop.ending;
      }
    }
  }

  /** How the VM ends because of its vCPUs (an error, the guest's reset or power-off), or null. */
  ending(): Ending | null {
    for (const vcpu of this.#built.vcpus) {
      if (this.#shared.state(vcpu.id) !== VCPU_STATE.STOPPED) continue;
      const outcome = this.#shared.outcome(vcpu.id);
      if (outcome === VCPU_OUTCOME.ERROR) return { code: EXIT_CODE.VM_ERROR, message: this.#shared.report(vcpu.id) };
      if (outcome === VCPU_OUTCOME.GUEST_EXIT) return { code: EXIT_CODE.GUEST_EXIT, message: null };
    }
    return null;
  }

  /**
   * Parks every vCPU outside KVM_RUN; returns false (and lets them go) if they do not park in time.
   * It runs on the vCPUs' own thread, inside a turn of the control loop: the own vCPU is outside the
   * guest meanwhile and stays out while the pause lasts; served vCPUs are kicked, and their posts
   * served here, until each is held.
   */
  park(): boolean {
    this.#shared.requestPause();
    const runner = this.#runner;
    if (runner === null) return true;
    if (this.#mode === "own" && !runner.stopped) this.#shared.setState(0, VCPU_STATE.PARKED);
    runner.parkInFlight();
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
      // A vCPU in the middle of an exit finishes it, then parks at its kick.
      if (!runner.serveNext(1)) this.#loop.turn(0);
    }
    return true;
  }

  /** Lets parked vCPUs run again (served ones at the next wait for exits). */
  unpark(): void {
    this.#shared.resume();
    const runner = this.#runner;
    if (runner === null) return;
    if (this.#mode === "own" && !runner.stopped) this.#shared.setState(0, VCPU_STATE.RUNNING);
    runner.unparkInFlight();
  }

  /** Stops every vCPU: the own one at once, served ones at their kick. */
  async stop(): Promise<void> {
    this.#shared.requestExit();
    this.#waker?.stop();
    this.#waker = null;
    const runner = this.#runner;
    if (runner === null) return;
    if (this.#mode === "own") {
      runner.stopOwn({ kind: "kicked" });
      return;
    }
    const deadline = performance.now() + VCPU_STOP_DEADLINE_MS;
    while (!runner.stopped && performance.now() < deadline) {
      this.#kickRunning();
      if (!runner.serveNext(10)) {
        this.#loop.turn(0);
        await yieldToEventLoop();
      }
    }
  }

  /** Whether every vCPU has stopped. */
  get stopped(): boolean {
    return this.#built.vcpus.every((v) => this.#shared.state(v.id) === VCPU_STATE.STOPPED);
  }

  close(): void {
    this.#waker?.stop();
    this.#waker = null;
    this.#loop.unwatch(this.#vcpuExit.fd);
    this.#vcpuExit.close();
    // A vCPU thread that did not stop in time may still post and write the eventfd: leave it open.
    if (this.stopped) this.#wake.close();
  }

  #kickRunning(): void {
    const pid = sys.getpid();
    for (const v of this.#built.vcpus) {
      const tid = this.#shared.tid(v.id);
      if (this.#shared.state(v.id) === VCPU_STATE.RUNNING && tid > 0) vcpuFfi.kickThread(pid, tid, this.#kickSignal);
    }
  }
}
