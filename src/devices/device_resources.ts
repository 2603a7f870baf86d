// device_resources.ts - the host objects a device spec names: opened by a process allowed to open
// them (the VMM, `tsvm devices`), passed as fds to a jailed device process, rebuilt there from fds.
import { sys } from "../../ffi/mod.ts";
import { FdOutput } from "../base/fd_output.ts";
import { StreamOutput } from "../base/stream_output.ts";
import { describeError, err, ok, type Result } from "../base/result.ts";
import { Tap } from "../base/tap.ts";
import type { DeviceSpec, OutputSpec, TapSpec } from "./device_spec.ts";
import type { DiskImage } from "../disk/disk_file.ts";
import { openDiskImage } from "../disk/qcow2.ts";
import { VsockBroker } from "./vsock_broker.ts";

const O_NONBLOCK = 0o4000;

/** What a device works on, by kind. */
export type DeviceResources =
  | { readonly kind: "block"; readonly image: DiskImage }
  | { readonly kind: "console"; readonly output: StreamOutput | null }
  | { readonly kind: "net"; readonly tap: Tap }
  | { readonly kind: "rng" }
  | { readonly kind: "balloon" }
  /** The host side stays with the process that opened it (a jailed device gets none of it). */
  | { readonly kind: "vsock"; readonly broker: VsockBroker | null };

/** Opens what `spec` names; the error says which file or tap failed and why. */
export function openResources(spec: DeviceSpec): Result<DeviceResources> {
  try {
    switch (spec.kind) {
      case "block":
        return ok({ kind: "block", image: openDiskImage(spec.path, spec.readOnly, spec.format, { direct: spec.direct, backingFiles: spec.backingFiles }) });
      case "console":
        return ok({ kind: "console", output: openStreamOutput(spec.output) });
      case "net":
        return ok({ kind: "net", tap: openTap(spec.tap) });
      case "rng":
      case "balloon":
        return ok({ kind: spec.kind });
      case "vsock": {
        const broker = VsockBroker.listen(spec.uds);
        return broker.ok ? ok({ kind: "vsock", broker: broker.value }) : broker;
      }
    }
  } catch (e) {
    return err(describeError(e));
  }
}

/**
 * For a console whose output is tsvm's stdout: the resources a jailed device gets instead (the write
 * end of a pipe, non-blocking, so the device holds the guest's buffers while the pipe is full) and
 * the read end, for an OutputRelay to stdout. Null for anything else.
 */
export function consoleToStdout(resources: DeviceResources): { readonly given: DeviceResources; readonly read: number } | null {
  if (resources.kind !== "console" || !resources.output?.stdout) return null;
  const [read, write] = sys.pipe();
  sys.addFileFlags(read, O_NONBLOCK);
  sys.addFileFlags(write, O_NONBLOCK);
  return { given: { kind: "console", output: new StreamOutput(write, true) }, read };
}

/**
 * Opens a UART's output (null for a sink): the vCPU that prints waits for it, and since the main
 * thread runs or serves the vCPUs, it is written non-blocking (stdout reopened as StreamOutput does),
 * so that a reader that stopped holds up the printing vCPU and never the control loop.
 */
export function openOutput(output: OutputSpec): FdOutput | null {
  switch (output.type) {
    case "stdout": {
      const stdout = StreamOutput.reopen(1, true);
      return new FdOutput(stdout.fd, stdout.owned);
    }
    case "file": return FdOutput.file(output.path);
    case "sink": return null;
  }
}

/** Opens a virtio console's output (null for a sink): written from a loop, which must never wait for it. */
export function openStreamOutput(output: OutputSpec): StreamOutput | null {
  switch (output.type) {
    case "stdout": return StreamOutput.openStdout();
    case "file": return StreamOutput.file(output.path);
    case "sink": return null;
  }
}

function openTap(tap: TapSpec): Tap {
  switch (tap.kind) {
    case "tap-name": return Tap.open(tap.name);
    case "tap-fd": return Tap.fromFd(tap.fd);
    case "create": {
      const octets = (ip: string): Uint8Array => Uint8Array.from(ip.split(".").map(Number));
      return Tap.create(octets(tap.hostIp), octets(tap.netmask));
    }
  }
}

/** The fds a jailed device process needs, in the order create_device.ts's `resourcesFromFds` takes them. */
export function resourceFds(resources: DeviceResources): number[] {
  switch (resources.kind) {
    case "block": return [...resources.image.chainFds];
    case "console": return resources.output === null ? [] : [resources.output.fd];
    case "net": return [resources.tap.fd];
    case "rng":
    case "balloon":
    case "vsock":
      return [];
  }
}

/** Closes what `resources` holds. */
export function closeResources(resources: DeviceResources): void {
  switch (resources.kind) {
    case "block": resources.image.close(); break;
    case "console": resources.output?.close(); break;
    case "net": resources.tap.close(); break;
    case "vsock": resources.broker?.close(); break;
    default: break;
  }
}
