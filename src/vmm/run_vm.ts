// run_vm.ts - runs a VM from a Config: opens what the user named, builds the VM, puts the devices on
// their buses (each virtio device in its home), starts the vCPUs and serves the control loop until the
// guest exits, a vCPU or device fails, or tsvm is told to stop.
import { event as eventFfi } from "../../ffi/mod.ts";
import { runCleanup } from "../base/cleanup.ts";
import { EventFd } from "../base/event_fd.ts";
import { flushLog, log, setLogLevel, useNonBlockingStderr } from "../base/log.ts";
import { readUserFile } from "../base/user_file.ts";
import { buildVm, type BuiltVm } from "../arch/x86_64/build_vm.ts";
import { KernelLoaderError } from "../arch/x86_64/kernel_image.ts";
import { pciWindows } from "../arch/x86_64/layout.ts";
import { type Config, ConfigError, defaultBlockQueues, fsConfig, kernelCmdline, virtioDeviceSpecs } from "../config.ts";
import { Bus } from "../devices/bus.ts";
import { closeResources, type DeviceResources, openResources } from "../devices/device_resources.ts";
import type { DeviceSpec } from "../devices/device_spec.ts";
import { IrqRouter } from "./irq_router.ts";
import { AddressAllocator, PciRoot } from "../devices/pci/mod.ts";
import { DEVICE_TYPES } from "../devices/vhost_user/device_types.ts";
import { randomMac } from "../devices/virtio/net/net.ts";
import { Kvm } from "../kvm/kvm.ts";
import { ControlServer, ControlSocketError, serveControl } from "../vm_control/server.ts";
import { builtinGuest } from "../builtin_guest.ts";
import type { AddressSpace } from "../vcpu/worker_bus.ts";
import { ControlLoop, type Ending } from "./control_loop.ts";
import { ControlRequests } from "./control_requests.ts";
import { attachLegacyDevices } from "./legacy_devices.ts";
import { type InputSink, StdinPump } from "./stdin.ts";
import { EXIT_CODE, Vcpus } from "./vcpus.ts";
import { DEVICE_JSC, VMM_JIT_POLICY, VMM_JSC } from "../base/in_process_jsc.ts";
import { restartWithJsc } from "../base/exec_self.ts";
import { serveHandOff, tapFds } from "./hand_off.ts";
import { loadDeviceKinds } from "../devices/create_device.ts";
import { attachInProcess, attachInVmm, attachSandboxed, attachVhostUser, type DeviceContext, type VirtioHandle } from "./virtio_devices.ts";
import { VhostVsock } from "../devices/virtio/vsock/vhost_vsock.ts";

export { EXIT_CODE } from "./vcpus.ts";

const SIGINT = 2;
const SIGTERM = 15;

/** A device spec with what it works on, opened before the VM is built. */
type OpenedDevice = { readonly spec: DeviceSpec; readonly resources: DeviceResources };

/** Everything opened from the user's names before the VM is built; runBuilt takes ownership. */
type OpenedVm = {
  readonly devices: OpenedDevice[];
  /** Each device kind's compiled seccomp filter (sandboxed runs). */
  readonly filters: ReadonlyMap<string, Uint8Array>;
  readonly control: ControlServer | null;
  /** The kernel's vhost-vsock (--cid), opened and holding the guest's CID. */
  readonly vhostVsock: VhostVsock | null;
};

/**
 * Runs the VM that the program before this exec handed over (hand_off.ts); resolves to the exit
 * code (a state it cannot read is a usage error).
 */
export async function runHandedOff(): Promise<number> {
  return await serveHandOff("run", (state) => runVm(state.config, state.filters));
}

/**
 * Runs the VM described by `config`; resolves to the process exit code. `filters` are the jailed
 * devices' compiled seccomp filters when the caller compiled them already. `inPlace`: this program
 * started with JSC's default settings and runs the VM without restarting (src/main.ts says when),
 * taking VMM_JIT_POLICY at run time instead of VMM_JSC.
 */
export async function runVm(config: Config, filters: ReadonlyMap<string, Uint8Array> | null = null, inPlace = false): Promise<number> {
  // Returns only when the settings are in place (the hand-off has usually put them there already).
  if (inPlace) Bun.unsafe.setJITPolicy(VMM_JIT_POLICY);
  else restartWithJsc(config.sandbox ? VMM_JSC : { ...VMM_JSC, ...DEVICE_JSC }, tapFds({ command: "run", config }));
  setLogLevel(config.logLevel);
  useNonBlockingStderr();
  return await openAndRun(config, filters);
}

/** Opens everything the user named (each failure a usage error naming it), then builds and runs. */
async function openAndRun(config: Config, compiled: ReadonlyMap<string, Uint8Array> | null): Promise<number> {
  const kernel = config.kernel === null ? await builtinGuest() : readBootFile("kernel", config.kernel, config.memorySize);
  const initrd = config.initrd === null ? null : readBootFile("initrd", config.initrd, config.memorySize);
  const specs = virtioDeviceSpecs(config, () => Array.from(randomMac(), (b) => b.toString(16).padStart(2, "0")).join(":"));
  const filters = !config.sandbox
    ? new Map<string, Uint8Array>()
    : compiled ?? await (await import("./device_filters.ts")).filtersOf(specs.map((s) => s.kind), config.seccompPolicyDir, config.seccompLogFailures);
  const opened: OpenedDevice[] = [];
  let control: ControlServer | null = null;
  let vhostVsock: VhostVsock | null = null;
  try {
    for (const spec of specs) {
      const resources = openResources(spec);
      if (!resources.ok) throw new ConfigError(describeOpenFailure(spec, resources.error));
      opened.push({ spec, resources: resources.value });
    }
    if (config.cid !== null) {
      const device = VhostVsock.open(config.cid);
      if (!device.ok) throw new ConfigError(device.error);
      vhostVsock = device.value;
    }
    control = config.socket === null ? null : listenControl(config.socket);
    let built: BuiltVm;
    try {
      built = buildVm(() => Kvm.open(), { memorySize: config.memorySize, cpus: config.cpus, kernel, initrd, cmdline: kernelCmdline(config) });
    } catch (e) {
      if (!(e instanceof KernelLoaderError)) throw e;
      const what = e.kind === "initrd_does_not_fit" ? `initrd ${config.initrd}` : `kernel ${config.kernel ?? "(built-in)"}`;
      throw new ConfigError(`failed to load ${what}: ${e.message}`, { cause: e });
    }
    log.debug(`VM built at ${performance.now().toFixed(1)} ms`);
    try {
      // The devices own their resources from here.
      const handed: OpenedVm = { devices: opened.splice(0), filters, control, vhostVsock };
      vhostVsock = null;
      return await runBuilt(config, built, handed);
    } finally {
      built.close();
    }
  } finally {
    control?.close();
    vhostVsock?.close();
    for (const o of opened) closeResources(o.resources);
  }
}

function describeOpenFailure(spec: DeviceSpec, error: string): string {
  switch (spec.kind) {
    case "block": return error.startsWith("failed to") ? error : `failed to open disk image ${spec.path}: ${error}`;
    case "console": return `failed to open the virtio-console output: ${error}`;
    default: return error;
  }
}

/** Listens on the control socket; a path a live VM owns is a usage error. */
function listenControl(path: string): ControlServer {
  try {
    return ControlServer.listen(path);
  } catch (e) {
    if (e instanceof ControlSocketError) throw new ConfigError(e.message, { cause: e });
    throw e;
  }
}

/** The largest kernel or initrd read (a larger one could not fit in the guest's memory anyway). */
const MAX_BOOT_FILE = 2 ** 31;

/**
 * Reads a kernel or initrd the user named; a failure is a usage error that names the file
 * (base/user_file.ts). One larger than the guest's memory could never be loaded, so it is refused
 * by its size, before a byte of it is read.
 */
function readBootFile(what: string, path: string, memorySize: number): Uint8Array {
  const read = readUserFile(path, Math.min(MAX_BOOT_FILE, memorySize));
  if (read.ok) return read.value;
  const why = read.error.tooLarge !== null && read.error.tooLarge <= MAX_BOOT_FILE
    ? `${read.error.tooLarge} bytes do not fit in the guest's ${memorySize} bytes of memory (--mem)`
    : read.error.reason;
  throw new ConfigError(`failed to read ${what} ${path}: ${why}`);
}

/** Puts the devices on the buses, starts the vCPUs and serves until the VM ends; returns the exit code. */
async function runBuilt(config: Config, built: BuiltVm, opened: OpenedVm): Promise<number> {
  const { filters, control } = opened;
  const cleanup: (() => void)[] = [];
  const loop = new ControlLoop();
  cleanup.push(() => loop.close());
  loop.everyTick(flushLog);
  try {
    const buses: Record<AddressSpace, Bus> = { io: new Bus(), mmio: new Bus() };
    const pciRoot = createPciRoot(buses, built);
    const legacy = attachLegacyDevices(buses.io, built, config.serials, config.memorySize, pciRoot, () => {
      log.info("guest requested a reset through the i8042");
      loop.end({ code: EXIT_CODE.GUEST_EXIT, message: null });
    });
    cleanup.push(() => legacy.close());

    const ctx: DeviceContext = {
      built, loop, router: new IrqRouter(built.vm), pciRoot,
      fail: (message) => loop.end({ code: EXIT_CODE.VM_ERROR, message }),
    };
    const devices: VirtioHandle[] = [];
    cleanup.push(() => {
      for (const d of devices) d.close();
    });
    if (!config.sandbox) await loadDeviceKinds(opened.devices.map((d) => d.spec.kind));
    // Device processes start in parallel: each is spawned here (by the C library's spawner thread,
    // while this thread goes on) and waited for on first use.
    for (const [index, { spec, resources }] of opened.devices.splice(0).entries()) {
      if (!config.sandbox) {
        devices.push(attachInProcess(ctx, spec, resources));
        continue;
      }
      const handle = attachSandboxed(ctx, spec, resources, { filter: filters.get(spec.kind)!, logLevel: config.logLevel, index });
      if (!handle.ok) {
        closeResources(resources);
        throw new Error(handle.error);
      }
      devices.push(handle.value);
    }
    for (const [i, v] of config.vhostUser.entries()) {
      const type = DEVICE_TYPES[v.type];
      const handle = attachVhostUser(ctx, {
        label: `vhost-user-${v.type}${i}`, kind: v.type, type, path: v.socket, localConfig: v.localConfig, reconnect: v.reconnect,
        ...(v.type === "block" ? { queues: defaultBlockQueues(config.cpus) } : {}),
      });
      if (!handle.ok) throw new ConfigError(handle.error);
      devices.push(handle.value);
    }
    if (opened.vhostVsock) devices.push(attachInVmm(ctx, opened.vhostVsock, "vsock"));
    if (config.sharedDirs.length > 0) {
      // Only for --shared-dir: it is the one part of the VMM that needs node:fs, node:os and node:path.
      const { findVirtiofsd, startVirtiofsd } = await import("./virtiofsd.ts");
      const program = findVirtiofsd(config.virtiofsd);
      if (!program.ok) throw new ConfigError(program.error);
      for (const [i, shared] of config.sharedDirs.entries()) {
        const daemon = startVirtiofsd(program.value, shared.path);
        if (!daemon.ok) throw new ConfigError(daemon.error);
        cleanup.push(() => daemon.value.stop());
        const handle = attachVhostUser(ctx, {
          label: `fs${i}`, kind: "fs", type: DEVICE_TYPES.fs, path: daemon.value.socket, localConfig: fsConfig(shared.tag), reconnect: false,
          diagnose: () => daemon.value.ended(),
        });
        if (!handle.ok) throw new ConfigError(handle.error);
        devices.push(handle.value);
      }
    }

    const stdin = stdinSink(legacy.stdinSerial, devices);
    if (stdin) {
      const pump = new StdinPump(loop, stdin);
      cleanup.push(() => pump.close());
    }
    watchSignals(loop, cleanup);
    loop.everyTick(() => {
      const now = performance.now();
      for (const d of devices) d.process?.checkDeadlines(now);
    });

    const vcpus = new Vcpus(built, loop, buses, config.sandbox);
    cleanup.push(() => vcpus.close());
    const requests = new ControlRequests({ built, loop, vcpus, devices, memorySize: config.memorySize });
    if (control) serveControl(loop, control, (request, respond) => requests.handle(request, respond));
    vcpus.start();
    log.debug(`vCPUs started at ${performance.now().toFixed(1)} ms`);

    const ending: Ending = await vcpus.serve();
    await vcpus.stop();
    if (!vcpus.stopped) log.warn("some vCPUs did not stop in time");
    if (ending.message) log.error(ending.message);
    return ending.code;
  } finally {
    runCleanup(cleanup);
  }
}

function createPciRoot(buses: Record<AddressSpace, Bus>, built: BuiltVm): PciRoot {
  const w = pciWindows(built.memory.end); // the windows the ACPI tables describe
  return new PciRoot(buses, {
    mmio32: new AddressAllocator(...w.mmio32),
    mmio64: new AddressAllocator(...w.mmio64),
    io: new AddressAllocator(...w.io),
  });
}

/** Where stdin goes: the UART with stdin=true, or the virtio console with it. */
function stdinSink(serial: { queueInput(bytes: Uint8Array): number } | null, devices: readonly VirtioHandle[]): InputSink | null {
  if (serial) return { send: (bytes, done) => done(serial.queueInput(bytes)) };
  const console = devices.find((d) => d.kind === "console" && d.readsStdin);
  if (!console) return null;
  return {
    send: (bytes, done) => console.command({ kind: "console_input", bytes: bytes.slice() }, (reply) => done(reply.kind === "console_accepted" ? reply.count : bytes.byteLength)),
  };
}

/** Turns SIGINT and SIGTERM into clean stops (exit 130 and 143). */
function watchSignals(loop: ControlLoop, cleanup: (() => void)[]): void {
  for (const [signal, name] of [[SIGINT, "SIGINT"], [SIGTERM, "SIGTERM"]] as const) {
    const fd = new EventFd();
    eventFfi.notifySignal(signal, fd.fd);
    loop.watch(fd.fd, () => loop.end({ code: 128 + signal, message: `stopping: tsvm received ${name}` }));
    cleanup.push(() => {
      eventFfi.defaultSignal(signal);
      loop.unwatch(fd.fd);
      fd.close();
    });
  }
}

