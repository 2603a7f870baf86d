// legacy_devices.ts - the PC devices on the port-I/O bus: four 16550A UARTs, the i8042, the CMOS RTC,
// the PCI configuration ports and the debug port. The vCPU runner serves the UARTs, the PCI
// configuration reads and the debug port itself (worker_bus.ts); the i8042 and CMOS through the
// control loop's Bus (rare accesses, and the i8042's reset ends the VM on the control loop).
import { FdOutput, OutputFileError } from "../base/fd_output.ts";
import { log } from "../base/log.ts";
import type { BuiltVm } from "../arch/x86_64/build_vm.ts";
import { lowMemoryEnd } from "../arch/x86_64/layout.ts";
import type { SerialConfig } from "../config.ts";
import { ConfigError, outputSpec } from "../config.ts";
import { openOutput } from "../devices/device_resources.ts";
import type { Bus } from "../devices/bus.ts";
import { Cmos, CMOS_INDEX_PORT } from "../devices/cmos.ts";
import { I8042, I8042_COMMAND_PORT, I8042_DATA_PORT } from "../devices/i8042.ts";
import { PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_SIZE, PciConfigIo, type PciRoot } from "../devices/pci/mod.ts";
import { Serial, SERIAL_PORT_SIZE, SERIAL_PORTS } from "../devices/serial.ts";
import { DEBUG_PORT, Sink } from "../devices/sink.ts";

/** The legacy devices of one VM. */
export type LegacyDevices = {
  /** The UART that reads stdin, if one does. */
  readonly stdinSerial: Serial | null;
  close(): void;
};

/** Puts the legacy devices on `io`; `onReset` runs when the guest resets through the i8042. */
export function attachLegacyDevices(io: Bus, built: BuiltVm, serials: readonly SerialConfig[], memorySize: number, pciRoot: PciRoot, onReset: () => void): LegacyDevices {
  const outputs: FdOutput[] = [];
  let stdinSerial: Serial | null = null;
  /** A serial port's output; a file that cannot be opened is a usage error that names the port. */
  const openPortOutput = (cfg: SerialConfig): FdOutput | null => {
    try {
      return openOutput(outputSpec(cfg));
    } catch (e) {
      if (!(e instanceof OutputFileError)) throw e;
      for (const o of outputs) o.close();
      throw new ConfigError(`--serial num=${cfg.num}: ${e.message}`, { cause: e });
    }
  };
  SERIAL_PORTS.forEach((port, index) => {
    const cfg = serials.find((s) => s.hardware === "serial" && s.num === index + 1);
    const output = cfg ? openPortOutput(cfg) : null;
    if (output) outputs.push(output);
    // The UART drives its line only when the level it shares with the vCPUs changes.
    const serial = new Serial(`serial COM${index + 1}`, { setLevel: (level) => built.vm.setIrqLine(port.irq, level) }, output);
    serial.shareWithVcpus(port.irq);
    io.insert(serial, port.base, SERIAL_PORT_SIZE);
    if (cfg?.stdin) stdinSerial = serial;
  });
  const i8042 = new I8042(onReset);
  io.insert(i8042, I8042_DATA_PORT, 1, true);
  io.insert(i8042, I8042_COMMAND_PORT, 1, true);
  io.insert(new Cmos({ belowHole: lowMemoryEnd(memorySize), aboveFourGib: memorySize - lowMemoryEnd(memorySize) }), CMOS_INDEX_PORT, 2, true);
  const pciConfig = new PciConfigIo(pciRoot, undefined, pciRoot.configImages);
  // Address writes that do not exit: the vCPU runners apply them before any access to these ports.
  const ringPage = built.vm.coalescePortWrites(PCI_CONFIG_IO_BASE, 4);
  if (ringPage !== null) pciConfig.coalesced = { page: ringPage, lock: new SharedArrayBuffer(4) };
  log.debug(ringPage !== null ? `PCI configuration address writes are coalesced by KVM (ring at page ${ringPage} of each vCPU mapping)` : "KVM cannot coalesce port writes: PCI configuration address writes exit");
  io.insert(pciConfig, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_SIZE);
  io.insert(new Sink("debug port"), DEBUG_PORT, 1);
  return {
    stdinSerial,
    close: () => {
      for (const o of outputs) o.close();
    },
  };
}
