// worker_devices.ts - the devices a vCPU runner (on the main thread, or the exit server) serves
// itself, each over state shared with the control loop (worker_bus.ts: the layout, why a view exists).
import { FdOutput } from "../base/fd_output.ts";
import { RateLimitedLog } from "../base/log.ts";
import { describeError } from "../base/result.ts";
import type { BusAccess, BusDevice } from "../devices/bus.ts";
import { PciConfigIo, WorkerPciConfigTarget } from "../devices/pci/pci_config_io.ts";
import { Serial } from "../devices/serial.ts";
import { SharedRegisters } from "../devices/shared_registers.ts";
import { CoalescedRing } from "../kvm/coalesced_ring.ts";
import { IrqLineSetter } from "../kvm/vm.ts";
import type { AddressSpace, WorkerDeviceFactory, WorkerView } from "./worker_bus.ts";

/** Serves reads from a register image where it allows; the rest of the device by the control loop's Bus. */
export class RegistersBusDevice implements BusDevice {
  readonly debugLabel = "register image";
  readonly #registers: SharedRegisters;
  constructor(buffer: SharedArrayBuffer, readonly remote: BusDevice) {
    this.#registers = new SharedRegisters(buffer);
  }
  read(access: BusAccess, data: Uint8Array): void {
    if (!this.#registers.read(access.offset, data)) this.remote.read(access, data);
  }
  write(access: BusAccess, data: Uint8Array): void {
    this.remote.write(access, data);
  }
}

/**
 * The factory the vCPU runner builds its devices with; `vmFd` is the VM's, for the UARTs' interrupt
 * lines; `mapping` the vCPU's kvm_run mapping with the pages after it (KVM's coalesced ring);
 * `outputWaits` is asked whenever a UART's output waits for its reader, and says whether to
 * drop the byte (the VM is going down); `writeOnce` is the UARTs' write call (FdOutput).
 */
export function workerDeviceFactory(vmFd: number, mapping: Uint8Array, outputWaits: () => boolean, writeOnce?: (fd: number, bytes: Uint8Array) => number): WorkerDeviceFactory {
  const lines = new IrqLineSetter(vmFd);
  const irqErrors = new RateLimitedLog("error");
  return (view: WorkerView, _space: AddressSpace, remote: BusDevice): BusDevice => {
    switch (view.kind) {
      case "sink":
        return remote; // never asked for: sinks have no view index
      case "registers":
        return new RegistersBusDevice(view.buffer, remote);
      case "serial": {
        const gsi = view.gsi;
        const irq = {
          setLevel: (level: boolean): void => {
            try {
              lines.set(gsi, level);
            } catch (e) {
              irqErrors.log(`${view.label}: ${describeError(e)}`);
            }
          },
        };
        const output = view.outputFd === null ? null : new FdOutput(view.outputFd, false, outputWaits, writeOnce);
        return new Serial(view.label, irq, output, view.state);
      }
      case "pci_config":
        return new PciConfigIo(new WorkerPciConfigTarget(view.images, remote), view.latch, null, view.coalesced ? new CoalescedRing(mapping, view.coalesced) : null);
    }
  };
}
