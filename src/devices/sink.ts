// sink.ts - a device that ignores writes and reads as zero (the port 0x80 POST-code/debug port).
import type { WorkerView } from "../vcpu/worker_bus.ts";
import type { BusAccess, BusDevice } from "./bus.ts";

/** The POST/debug port: firmware and kernels write progress codes and use it as an I/O delay. */
export const DEBUG_PORT = 0x80;

/** Swallows writes; reads return zero. Stateless, so every vCPU may keep its own copy. */
export class Sink implements BusDevice {
  readonly workerView: WorkerView = { kind: "sink" };
  constructor(readonly debugLabel: string) {}
  read(_access: BusAccess, data: Uint8Array): void {
    data.fill(0);
  }
  write(_access: BusAccess, _data: Uint8Array): void {}
}
