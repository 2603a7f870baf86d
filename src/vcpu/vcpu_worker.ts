// vcpu_worker.ts - the Worker entry point of one vCPU thread: set up, run the loop, report how it stopped.
import { sys, vcpu as vcpuFfi } from "../../ffi/mod.ts";
import { EventFd } from "../base/event_fd.ts";
import { drainLog, type LogLevel, logOnce, setLogLevel, useNonBlockingStderr } from "../base/log.ts";
import { Bus } from "../devices/bus.ts";
import { Sink } from "../devices/sink.ts";
import { Vcpu } from "../kvm/vcpu.ts";
import { BusMailbox, RemoteBusDevice } from "./bus_mailbox.ts";
import { runVcpu, type VcpuStop } from "./run_loop.ts";
import { formatRegisters } from "./vcpu_dump.ts";
import { VCPU_OUTCOME, VcpuShared } from "./vcpu_shared.ts";
import { WorkerBuses, type WorkerView } from "./worker_bus.ts";
import { workerDeviceFactory } from "./worker_devices.ts";

declare const self: Worker;

/** The one message a vCPU Worker receives. */
export type VcpuWorkerInit = {
  readonly vcpuId: number;
  readonly vcpuFd: number;
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

const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;

function start(init: VcpuWorkerInit): void {
  setLogLevel(init.logLevel);
  useNonBlockingStderr(); // a vCPU never waits for a stderr reader (base/log.ts)
  const shared = new VcpuShared(init.shared);
  const exitEvent = new EventFd(init.exitFd);
  let stop: VcpuStop;
  try {
    const wake = new EventFd(init.busRequestFd);
    const mailbox = new BusMailbox(shared, init.vcpuId);
    const remote = { io: new RemoteBusDevice("remote port", "io", mailbox, wake), mmio: new RemoteBusDevice("remote MMIO", "mmio", mailbox, wake) };
    const runAddress = sys.mmap(init.mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, init.vcpuFd, 0);
    const kvmRun = new Uint8Array(sys.viewOf(runAddress, init.mmapSize));
    const buses = new WorkerBuses({ io: new Bus(), mmio: new Bus() }, init.layout, init.views, remote, new Sink("sink"), workerDeviceFactory(init.vmFd, kvmRun, () => {
      // Output that waits for its reader: a suspend parks this vCPU right here (it runs no guest code
      // meanwhile), and a stop drops the byte.
      if (shared.pauseRequested && !shared.exitRequested) shared.park(init.vcpuId);
      return shared.exitRequested;
    }));
    const unhandled = new Set<string>();
    vcpuFfi.bindVcpuThread(runAddress);
    // Publish the tid before the first exit-flag check: a kick is then either seen or delivered.
    shared.markRunning(init.vcpuId, sys.gettid());
    stop = shared.exitRequested
      ? { kind: "kicked" }
      : runVcpu({
        vcpuId: init.vcpuId, vcpuFd: init.vcpuFd, run: vcpuFfi.vcpuRun, kvmRun, io: buses.io, mmio: buses.mmio,
        refreshBuses: () => buses.refresh(),
        // Only at debug level: an exit to an unclaimed address is otherwise as cheap as before.
        unhandled: init.logLevel !== "debug" ? undefined
          : (space, address) => logOnce(unhandled, `${space}:${address}`, "debug", `unhandled ${space === "io" ? "port" : "MMIO"} access at 0x${address.toString(16)}`),
        exitRequested: () => shared.exitRequested,
        pauseRequested: () => shared.pauseRequested,
        park: () => shared.park(init.vcpuId),
      });
  } catch (e) {
    stop = { kind: "error", message: `vCPU ${init.vcpuId}: ${e instanceof Error ? e.message : String(e)}` };
  }
  let report = stop.kind === "kicked" ? "" : stop.message;
  if (stop.kind === "error") {
    try {
      const vcpu = new Vcpu(init.vcpuId, init.vcpuFd);
      report += `\n${formatRegisters(vcpu.getRegs(), vcpu.getSregs())}`;
    } catch (e) {
      report += `\n(registers unavailable: ${e instanceof Error ? e.message : String(e)})`;
    }
  }
  const outcome = stop.kind === "kicked" ? VCPU_OUTCOME.KICKED : stop.kind === "guest_exit" ? VCPU_OUTCOME.GUEST_EXIT : VCPU_OUTCOME.ERROR;
  shared.markStopped(init.vcpuId, outcome, report);
  exitEvent.signal();
}

self.onmessage = (event: MessageEvent<VcpuWorkerInit>) => {
  start(event.data);
  drainLog(100);
  self.onmessage = null;
  process.exit(0);
};
