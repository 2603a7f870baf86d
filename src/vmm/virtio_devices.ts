// virtio_devices.ts - puts each virtio device on the PCI bus in its home: in the VMM
// (--disable-sandbox), in a jailed device process (the default), or behind another program's
// vhost-user back-end (--vhost-user). The transport is the same VirtioPciDevice in every case, and
// device-specific commands (balloon, disk, console input) go through one `command` per home.
import { OutputRelay } from "../base/stream_output.ts";
import { log } from "../base/log.ts";
import { ERRNO, errnoName, SysError } from "../base/errno.ts";
import { describeError, err, ok, type Result } from "../base/result.ts";
import { sys, socket } from "../../ffi/mod.ts";
import { pciSlotPin } from "../arch/x86_64/mptable.ts";
import type { BuiltVm } from "../arch/x86_64/build_vm.ts";
import { createDevice, type DeviceHost } from "../devices/create_device.ts";
import { closeResources, consoleToStdout, type DeviceResources } from "../devices/device_resources.ts";
import type { DeviceSpec } from "../devices/device_spec.ts";
import { GsiLine } from "../devices/interrupt.ts";
import type { IrqRouter } from "./irq_router.ts";
import type { PciRoot } from "../devices/pci/pci_root.ts";
import { jailIdBase, type JailedProcess } from "../devices/sandbox/jailed_process.ts";
import { SandboxedDevice } from "../devices/sandbox/sandboxed_device.ts";
import type { DeviceTypeInfo } from "../devices/vhost_user/device_types.ts";
import { VhostUserFrontend } from "../devices/vhost_user/frontend.ts";
import { ReconnectingFrontend } from "../devices/vhost_user/reconnecting.ts";
import { type DeviceCommand, type DeviceReply, unsupported } from "../devices/virtio/device_control.ts";
import type { DeviceEventLoop, VirtioDevice } from "../devices/virtio/virtio_device.ts";
import { VirtioPciDevice } from "../devices/virtio/virtio_pci_device.ts";
import { type ControlLoop, DeviceLoop } from "./control_loop.ts";

/** How long another program's vhost-user back-end may take to answer one request. */
const VHOST_USER_TIMEOUT_MS = 5000;
/** How long to wait for a failed back-end's exit status before saying why it failed. */
const DIAGNOSE_DELAY_MS = 200;
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;

/** A virtio device on the bus, wherever it runs. */
export type VirtioHandle = {
  readonly label: string;
  /** The device kind ("block", "rng"...), or the vhost-user type of an external back-end. */
  readonly kind: string;
  readonly pci: VirtioPciDevice;
  /** Whether host input (stdin) goes to this device (a virtio console with stdin=true). */
  readonly readsStdin: boolean;
  /** The jailed process serving it, if any (suspend stops it; its failures end the VM). */
  readonly process: JailedProcess | null;
  /** Sends a device-specific command; `onReply` runs from the control loop. */
  command(command: DeviceCommand, onReply: (reply: DeviceReply) => void): void;
  /** Stops or restarts the device's processing (tsvm suspend/resume). */
  pause(paused: boolean): void;
  close(): void;
};

/** What every home needs from the VM. */
export type DeviceContext = {
  readonly built: BuiltVm;
  readonly loop: ControlLoop;
  readonly router: IrqRouter;
  readonly pciRoot: PciRoot;
  /** Ends the VM (a device process or back-end failed). */
  readonly fail: (message: string) => void;
};

/** Host services in-process devices use. */
export const IN_PROCESS_HOST: DeviceHost = {
  entropy: sys.getrandom,
  punchHole: (fd, offset, length) => sys.fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, offset, length) === 0,
};

/** Puts `device` on the bus behind a VirtioPciDevice at the next slot; returns the transport. */
function attach(ctx: DeviceContext, device: VirtioDevice, loop: DeviceEventLoop): VirtioPciDevice {
  const vm = ctx.built.vm;
  const pin = pciSlotPin(ctx.pciRoot.nextSlot()); // wired as the MP table says for that slot
  const pci = new VirtioPciDevice(device, {
    memory: ctx.built.memory,
    router: ctx.router,
    intx: new GsiLine(pin, (gsi, level) => vm.setIrqLine(gsi, level)),
    intxLine: pin,
    loop,
    ioeventfd: (fd, address, assign): Result<null> => {
      try {
        vm.setIoeventfd(fd, "mmio", address, 0, assign); // length 0: writes of any width
        return ok(null);
      } catch (e) {
        return err(e instanceof SysError ? e.message : describeError(e));
      }
    },
  });
  ctx.pciRoot.add(pci);
  return pci;
}

/** A device running on the VMM's own loop (--disable-sandbox). */
export function attachInProcess(ctx: DeviceContext, spec: DeviceSpec, resources: DeviceResources): VirtioHandle {
  const device = createDevice(spec, resources, IN_PROCESS_HOST);
  const loop = new DeviceLoop(ctx.loop, spec.label);
  const pci = attach(ctx, device, loop);
  loop.onError = (message) => pci.needsReset(message);
  if (resources.kind === "vsock") resources.broker?.start(loop, (host, port) => device.acceptHost?.(host, port));
  return {
    label: spec.label, kind: spec.kind, pci, process: null, readsStdin: spec.kind === "console" && spec.stdin,
    command: (command, onReply) => onReply(device.control ? device.control(command) : unsupported(spec.kind, command)),
    pause: (paused) => (paused ? loop.pause() : loop.resume()),
    close: () => {
      pci.close();
      closeResources(resources);
    },
  };
}

/** A device the VMM serves itself that takes no commands (the kernel's vhost-vsock). */
export function attachInVmm(ctx: DeviceContext, device: VirtioDevice & { close(): void; pause?(paused: boolean): void }, kind: string): VirtioHandle {
  const pci = attach(ctx, device, ctx.loop);
  return {
    label: device.debugLabel, kind, pci, process: null, readsStdin: false,
    command: (command, onReply) => onReply(unsupported(device.debugLabel, command)),
    pause: (paused) => device.pause?.(paused),
    close: () => {
      pci.close();
      device.close();
    },
  };
}

/** What a sandboxed device needs beside its spec and resources. */
export type SandboxSettings = { readonly filter: Uint8Array; readonly logLevel: string; readonly index: number };

/** Starts a device in its own jailed process (without waiting for it) and puts it on the bus. */
export function attachSandboxed(ctx: DeviceContext, spec: DeviceSpec, resources: DeviceResources, settings: SandboxSettings): Result<VirtioHandle> {
  // A console writing to stdout gets a pipe instead: the VMM copies it out, so the device never
  // holds the terminal (which it could read, too).
  const piped = consoleToStdout(resources);
  const given = piped?.given ?? resources;
  const broker = resources.kind === "vsock" ? resources.broker : null;
  const started = SandboxedDevice.spawn(spec, given, {
    filter: settings.filter, logLevel: settings.logLevel, idBase: jailIdBase(process.pid, settings.index), loop: ctx.loop,
    onFailure: (message) => ctx.fail(`stopping: ${message}`),
    ...(broker ? { hostConnect: (port: number) => broker.connect(port) } : {}),
  });
  // The process holds its own copies of the resources now; the VMM keeps what it needs to flush.
  if (given !== resources) closeResources(given);
  if (!started.ok) {
    if (piped) sys.close(piped.read);
    return err(started.error);
  }
  const device = started.value;
  const pci = attach(ctx, device, ctx.loop);
  broker?.start(ctx.loop, (host, port) => device.process.sendHostConnection(host, port));
  const relay = piped && resources.kind === "console" ? new OutputRelay(ctx.loop, piped.read, resources.output!) : null;
  return ok({
    label: spec.label, kind: spec.kind, pci, process: device.process, readsStdin: spec.kind === "console" && spec.stdin,
    command: (command, onReply) => device.command(command, onReply),
    pause: (paused) => device.process.pause(paused),
    close: () => {
      pci.close();
      device.close();
      relay?.close();
      closeResources(resources);
    },
  });
}

/** Where another program's vhost-user back-end listens, and what it serves. */
export type VhostUserTarget = {
  readonly label: string;
  readonly kind: string;
  readonly type: DeviceTypeInfo;
  readonly path: string;
  readonly localConfig: Uint8Array | undefined;
  /** For a multiqueue type (block): the queues wanted; the back-end may have fewer. */
  readonly queues?: number;
  /** Whether to wait for a failed back-end to come back instead of stopping the VM. */
  readonly reconnect: boolean;
  /** What more tsvm knows when the back-end fails (a virtiofsd it started: how that ended). */
  readonly diagnose?: () => string | null;
};

/** Why connecting to the Unix socket `path` failed with `errno`, in words where the errno's name misleads. */
function whyNoConnection(path: string, errno: number): string {
  if (errno !== ERRNO.ECONNREFUSED) return errnoName(errno);
  const stat = sys.lstat(path);
  if (typeof stat !== "number" && (stat.mode & sys.S_IFMT) !== sys.S_IFSOCK) return "not a socket";
  return "ECONNREFUSED (no program listens on it)";
}

/** Puts a device served by the vhost-user back-end at `target.path` on the bus. */
export function attachVhostUser(ctx: DeviceContext, target: VhostUserTarget): Result<VirtioHandle> {
  const { label, path } = target;
  // The queue count is settled by the first back-end; one that comes back must give the same.
  let settledQueues: number | null = null;
  const connect = (onFailure: (reason: string) => void): Result<VhostUserFrontend> => {
    const fd = socket.unixConnect(path, socket.SOCK_STREAM);
    if (fd < 0) return err(`failed to connect to the vhost-user back-end at ${path}: ${whyNoConnection(path, -fd)}`);
    const queues = settledQueues ?? target.queues;
    const connected = VhostUserFrontend.connect(fd, {
      label, type: target.type, loop: ctx.loop, timeoutMs: VHOST_USER_TIMEOUT_MS, onFailure,
      ...(queues === undefined ? {} : { queues }),
      ...(target.localConfig ? { localConfig: target.localConfig } : {}),
    });
    if (!connected.ok) return connected;
    const count = connected.value.queueMaxSizes.length;
    if (settledQueues !== null && count !== settledQueues) {
      connected.value.close();
      return err(`the vhost-user back-end of ${label} came back with ${count} queues instead of ${settledQueues}`);
    }
    settledQueues = count;
    return connected;
  };
  const stop = (reason: string): void => {
    const fail = (): void => {
      const more = target.diagnose?.() ?? null;
      ctx.fail(`stopping: the vhost-user back-end of ${label} at ${path} failed: ${reason}${more ? ` (${more})` : ""}`);
    };
    // A back-end tsvm started itself may be a moment from exiting: give its exit and last words
    // time to arrive (the event loop collects both), then stop.
    if (target.diagnose) setTimeout(fail, DIAGNOSE_DELAY_MS);
    else fail();
  };
  let device: VhostUserFrontend | ReconnectingFrontend;
  if (target.reconnect) {
    const connected = ReconnectingFrontend.connect(connect, { onEvent: (message) => log.warn(`${label} (${path}): ${message}`), onFailure: stop });
    if (!connected.ok) return connected;
    const reconnecting = connected.value;
    ctx.loop.everyTick(() => reconnecting.poll(performance.now()));
    device = reconnecting;
  } else {
    const connected = connect(stop);
    if (!connected.ok) return connected;
    device = connected.value;
  }
  const pci = attach(ctx, device, ctx.loop);
  return ok({
    label, kind: target.kind, pci, process: null, readsStdin: false,
    command: (command, onReply) => onReply({ kind: "error", message: `${label} is served by another program's vhost-user back-end, which takes no ${command.kind.replace("_", " ")} requests` }),
    pause: () => {},
    close: () => {
      pci.close();
      device.close();
    },
  });
}
