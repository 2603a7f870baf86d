// run_vm.ts - runs a VM from a Config: builds it, wires devices to the buses, starts vCPU Workers,
// and serves the control loop until the guest exits, a vCPU fails, or tsvm is told to stop.
import { readFileSync } from "node:fs";
import { sys, vcpu as vcpuFfi, event as eventFfi, term } from "../ffi/mod.ts";
import { EventFd } from "./base/event_fd.ts";
import { log, logOnce, setLogLevel } from "./base/log.ts";
import { WaitContext } from "./base/wait_context.ts";
import { buildVm, type BuiltVm } from "./arch/x86_64/build_vm.ts";
import { pciSlotPin } from "./arch/x86_64/mptable.ts";
import { FOUR_GIB, lowMemoryEnd, PCI_MMIO_END, PCI_MMIO_START } from "./arch/x86_64/layout.ts";
import { type Config, ConfigError, kernelCmdline, type NetConfig, type SerialConfig } from "./config.ts";
import { Console } from "./devices/virtio/console.ts";
import { KernelLoaderError } from "./arch/x86_64/kernel_image.ts";
import { Bus } from "./devices/bus.ts";
import { Cmos, CMOS_INDEX_PORT } from "./devices/cmos.ts";
import { I8042, I8042_COMMAND_PORT, I8042_DATA_PORT } from "./devices/i8042.ts";
import { GsiLine } from "./devices/interrupt.ts";
import { Serial, SERIAL_PORT_SIZE, SERIAL_PORTS } from "./devices/serial.ts";
import { FdOutput } from "./devices/serial_output.ts";
import { DEBUG_PORT } from "./devices/sink.ts";
import { AddressAllocator, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_SIZE, PciConfigIo, PciRoot } from "./devices/pci/mod.ts";
import { IrqRouter } from "./devices/irq_router.ts";
import { Rng } from "./devices/virtio/rng.ts";
import { Balloon, memfdReleaser } from "./devices/virtio/balloon.ts";
import { Block, SECTOR_SIZE } from "./devices/virtio/block/block.ts";
import type { VmRequest, VmResponse } from "./vm_control/messages.ts";
import { ControlServer, ControlSocketError } from "./vm_control/server.ts";
import type { DiskImage } from "./devices/virtio/block/disk_file.ts";
import { openDiskImage, Qcow2Error } from "./devices/virtio/block/qcow2.ts";
import { Net, parseMac, randomMac } from "./devices/virtio/net/net.ts";
import { Tap } from "./devices/virtio/net/tap.ts";
import type { DeviceEventLoop, VirtioDevice } from "./devices/virtio/virtio_device.ts";
import { VirtioPciDevice } from "./devices/virtio/virtio_pci_device.ts";
import { ProxyDevice } from "./devices/proxy/proxy_device.ts";
import { loadPolicies, policyFileFor } from "./sandbox/policies.ts";
import { Kvm } from "./kvm/kvm.ts";
import { type AddressSpace, BusMailbox } from "./vcpu/bus_mailbox.ts";
import type { VcpuWorkerInit, WorkerRange } from "./vcpu/vcpu_worker.ts";
import { VCPU_OUTCOME, VCPU_STATE, VcpuShared } from "./vcpu/vcpu_shared.ts";
import { builtinGuest } from "./builtin_guest.ts";

/** A virtio device to create, before deciding where it runs. */
type VirtioSpec =
  | { readonly kind: "block"; readonly label: string; readonly disk: DiskImage; readonly id: string }
  | { readonly kind: "console"; readonly label: string; readonly output: FdOutput | null; readonly stdin: boolean }
  | { readonly kind: "net"; readonly label: string; readonly tap: Tap; readonly mac: string }
  | { readonly kind: "rng"; readonly label: string }
  | { readonly kind: "balloon"; readonly label: string };

/** Queues per device kind (MSI-X vectors are these plus one for configuration changes). */
const VIRTIO_QUEUES = { block: 1, console: 2, net: 2, rng: 1, balloon: 3 } as const;

function formatMac(mac: Uint8Array): string {
  return Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join(":");
}

/** Exit codes of `tsvm run`. */
export const EXIT_CODE = { GUEST_EXIT: 0, VM_ERROR: 1, USAGE: 2 } as const;

/** Tokens of the control loop's WaitContext. */
type Token =
  | "bus_request" | "vcpu_exit" | "device_exit" | "stdin" | "sigint" | "sigterm" | "control_listen"
  | { readonly device: () => void }
  | { readonly deviceTube: ProxyDevice }
  | { readonly controlClient: number };

const SIGINT = 2;
const SIGTERM = 15;
/** Real-time signal offset used to kick vCPU threads out of KVM_RUN. */
const KICK_SIGNAL_OFFSET = 2;
/** The loop returns to Bun's event loop this often so Worker error events are delivered. */
const EVENT_LOOP_SLICE_MS = 100;
/** How long stopping vCPUs may take before their Workers are terminated. */
const VCPU_STOP_DEADLINE_MS = 1000;
const STDIN_CHUNK = 4096;
/** The balloon counts 4 KiB pages. */
const BALLOON_PAGE_SIZE = 4096;
/** How long vCPUs get to park for tsvm suspend. */
const SUSPEND_DEADLINE_MS = 2000;
const GIB = 1024 * 1024 * 1024;
/** 64-bit BARs go in a 64 GiB window from the first GiB boundary above RAM and 4 GiB. */
const PCI_MMIO64_SIZE = 64 * GIB;
/** I/O port window for I/O BARs, above the legacy ISA ports. */
const PCI_IO_START = 0xc000;
const PCI_IO_END = 0x10000;


/** Why the control loop ended. */
type Ending = { readonly code: number; readonly message: string | null };

const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Runs the VM described by `config`; resolves to the process exit code. */
export async function runVm(config: Config): Promise<number> {
  setLogLevel(config.logLevel);
  // Workers take a while to load their code: start them first, and hand them their vCPU once built.
  const workers = Array.from({ length: config.cpus }, () => new Worker(new URL("./vcpu/vcpu_worker.ts", import.meta.url).href));
  try {
    return await buildAndRun(config, workers);
  } finally {
    for (const w of workers) w.terminate();
  }
}

async function buildAndRun(config: Config, workers: readonly Worker[]): Promise<number> {
  const kernel = config.kernel === null ? builtinGuest() : readUserFile("kernel", config.kernel);
  const initrd = config.initrd === null ? null : readUserFile("initrd", config.initrd);
  const disks: DiskImage[] = [];
  const taps: Tap[] = [];
  let control: ControlServer | null = null;
  try {
    for (const b of config.blocks) disks.push(openDisk(b.path, b.ro));
    for (const n of config.nets) taps.push(openTap(n));
    control = config.socket === null ? null : listenControl(config.socket);
    return await buildAndRunWithDisks(config, workers, kernel, initrd, disks, taps, control);
  } finally {
    control?.close();
    for (const d of disks) d.close();
    for (const t of taps) t.close();
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

/** Opens or creates the tap a --net asks for; a failure is a usage error naming it. */
function openTap(n: NetConfig): Tap {
  try {
    if (n.kind === "tap-name") return Tap.open(n.name);
    if (n.kind === "tap-fd") return Tap.fromFd(n.fd);
    const octets = (ip: string): Uint8Array => Uint8Array.from(ip.split(".").map(Number));
    return Tap.create(octets(n.hostIp), octets(n.netmask));
  } catch (e) {
    throw new ConfigError(e instanceof Error ? e.message : String(e), { cause: e });
  }
}

async function buildAndRunWithDisks(
  config: Config, workers: readonly Worker[], kernel: Uint8Array, initrd: Uint8Array | null, disks: readonly DiskImage[],
  taps: readonly Tap[], control: ControlServer | null,
): Promise<number> {
  using kvm = Kvm.open();
  let built: BuiltVm;
  try {
    built = buildVm(kvm, { memorySize: config.memorySize, cpus: config.cpus, kernel, initrd, cmdline: kernelCmdline(config) });
  } catch (e) {
    if (!(e instanceof KernelLoaderError)) throw e;
    const what = e.kind === "initrd_does_not_fit" ? `initrd ${config.initrd}` : `kernel ${config.kernel ?? "(built-in)"}`;
    throw new ConfigError(`failed to load ${what}: ${e.message}`, { cause: e });
  }
  log.debug(`VM built at ${performance.now().toFixed(1)} ms`);
  try {
    return await new VmRunner(config, built, workers, disks, taps, control).run();
  } finally {
    built.close();
  }
}

/** Opens and locks a disk image the user named; a failure is a usage error that names the file. */
function openDisk(path: string, readOnly: boolean): DiskImage {
  try {
    return openDiskImage(path, readOnly);
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    if (e instanceof Qcow2Error) throw new ConfigError(`failed to open disk image ${message}`, { cause: e });
    throw new ConfigError(message.startsWith("failed to lock") ? message : `failed to open disk image ${path}: ${message}`, { cause: e });
  }
}

/** Reads a file the user named; a failure is a usage error that names the file. */
function readUserFile(what: string, path: string): Uint8Array {
  try {
    const bytes = readFileSync(path);
    return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  } catch (e) {
    const reason = (e as NodeJS.ErrnoException).code ?? (e instanceof Error ? e.message : String(e));
    throw new ConfigError(`failed to read ${what} ${path}: ${reason}`, { cause: e });
  }
}

/** The running VM's devices, Workers and control loop. */
class VmRunner {
  readonly #config: Config;
  readonly #built: BuiltVm;
  readonly #wait = new WaitContext<Token>();
  readonly #busRequest = new EventFd();
  readonly #vcpuExit = new EventFd();
  readonly #deviceExit = new EventFd();
  readonly #sigint = new EventFd();
  readonly #sigterm = new EventFd();
  readonly #shared: VcpuShared;
  readonly #mailboxes: BusMailbox[];
  readonly #buses: Record<AddressSpace, Bus> = { io: new Bus(), mmio: new Bus() };
  readonly #localRanges: Record<AddressSpace, WorkerRange[]> = { io: [], mmio: [] };
  readonly #outputs: FdOutput[] = [];
  readonly #workers: readonly Worker[];
  readonly #unhandled = new Set<string>();
  /** Whichever port reads stdin: a UART or the virtio console. */
  #stdinSerial: { queueInput(bytes: Uint8Array): number } | null = null;
  #savedTerminal: Uint8Array | null = null;
  #guestExit: string | null = null;
  #workerFailure: string | null = null;
  #kickSignal = 0;
  #stdinIsFile = false;
  #stdinCarry = new Uint8Array(0);
  #pciRoot: PciRoot | null = null;
  readonly #virtio: { close(): void }[] = [];
  readonly #proxies: ProxyDevice[] = [];
  readonly #diskControls: { flush(): boolean; resize(bytes: number): string | null }[] = [];
  #balloonControl: {
    setTarget(pages: number): void;
    stats(): { target: number; actual: number; stats: Readonly<Record<string, number>> | null; refresh(): void };
  } | null = null;
  #control: ControlServer | null = null;
  #irqRouter!: IrqRouter;

  readonly #disks: readonly DiskImage[];
  readonly #taps: readonly Tap[];

  constructor(config: Config, built: BuiltVm, workers: readonly Worker[], disks: readonly DiskImage[], taps: readonly Tap[], control: ControlServer | null) {
    this.#control = control;
    this.#disks = disks;
    this.#taps = taps;
    this.#config = config;
    this.#built = built;
    this.#workers = workers;
    this.#shared = new VcpuShared(config.cpus);
    this.#mailboxes = built.vcpus.map((v) => new BusMailbox(this.#shared, v.id));
    this.#irqRouter = new IrqRouter(built.vm);
  }

  async run(): Promise<number> {
    try {
      this.#createDevices();
      this.#watch();
      this.#startVcpus();
      log.debug(`vCPU Workers started at ${performance.now().toFixed(1)} ms`);
      const ending = await this.#controlLoop();
      await this.#stopVcpus();
      if (ending.message) log.error(ending.message);
      return ending.code;
    } finally {
      this.#release();
    }
  }

  #createDevices(): void {
    const { io } = this.#buses;
    const vm = this.#built.vm;
    const raise = (gsi: number, level: boolean): void => vm.setIrqLine(gsi, level);
    SERIAL_PORTS.forEach((port, index) => {
      const cfg = this.#config.serials.find((s) => s.hardware === "serial" && s.num === index + 1);
      const output = cfg ? this.#outputFor(cfg) : null;
      const serial = new Serial(`serial COM${index + 1}`, new GsiLine(port.irq, raise), output);
      io.insert(serial, port.base, SERIAL_PORT_SIZE);
      if (cfg?.stdin) this.#stdinSerial = serial;
    });
    const i8042 = new I8042(() => this.#requestGuestExit("guest requested a reset through the i8042"));
    io.insert(i8042, I8042_DATA_PORT, 1, true);
    io.insert(i8042, I8042_COMMAND_PORT, 1, true);
    const memory = this.#config.memorySize;
    io.insert(new Cmos({ belowHole: lowMemoryEnd(memory), aboveFourGib: memory - lowMemoryEnd(memory) }), CMOS_INDEX_PORT, 2, true);
    this.#pciRoot = this.#createPciRoot();
    io.insert(new PciConfigIo(this.#pciRoot), PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_SIZE);
    const specs = this.#virtioSpecs();
    if (this.#config.sandbox) {
      // Start every device process first, so they boot in parallel; then put each on the bus in order.
      const started = specs.map((spec, i) => this.#startSandboxed(spec, i));
      for (const [i, proxy] of started.entries()) this.#attachSandboxed(specs[i]!, proxy);
    } else {
      for (const spec of specs) this.#addLocal(spec);
    }
    // The debug port is stateless: each vCPU keeps its own sink instead of calling the control loop.
    this.#localRanges.io.push({ base: DEBUG_PORT, length: 1, label: "debug port", kind: "sink" });
  }

  #createPciRoot(): PciRoot {
    const highStart = Math.max(FOUR_GIB, this.#built.memory.end);
    const mmio64Start = Math.ceil(highStart / GIB) * GIB;
    return new PciRoot(this.#buses, {
      mmio32: new AddressAllocator(PCI_MMIO_START, PCI_MMIO_END),
      mmio64: new AddressAllocator(mmio64Start, mmio64Start + PCI_MMIO64_SIZE),
      io: new AddressAllocator(PCI_IO_START, PCI_IO_END),
    });
  }

  /** The virtio devices the configuration asks for, in PCI slot order. */
  #virtioSpecs(): VirtioSpec[] {
    const specs: VirtioSpec[] = this.#disks.map((disk, i) => ({ kind: "block", label: `block${i}`, disk, id: this.#config.blocks[i]!.id }));
    const consoleCfg = this.#config.serials.find((s) => s.hardware === "virtio-console");
    if (consoleCfg) specs.push({ kind: "console", label: "console", output: this.#outputFor(consoleCfg), stdin: consoleCfg.stdin });
    this.#taps.forEach((tap, i) => {
      const mac = this.#config.nets[i]!.mac;
      specs.push({ kind: "net", label: `net${i}`, tap, mac: mac === undefined ? formatMac(randomMac()) : mac });
    });
    if (this.#config.rng) specs.push({ kind: "rng", label: "rng" });
    if (this.#config.balloon) specs.push({ kind: "balloon", label: "balloon" });
    return specs;
  }

  /** Creates a device in this process (--disable-sandbox). */
  #addLocal(spec: VirtioSpec): void {
    const FALLOC_FL_PUNCH_HOLE_KEEP_SIZE = 0x03;
    let device: VirtioDevice;
    switch (spec.kind) {
      case "block": device = new Block(spec.disk, spec.id, spec.label); break;
      case "console": {
        const console = new Console(spec.output);
        if (spec.stdin) this.#stdinSerial = console;
        device = console;
        break;
      }
      case "net": device = new Net(spec.tap, parseMac(spec.mac)!); break;
      case "rng": device = new Rng(); break;
      case "balloon": {
        const balloon = new Balloon(memfdReleaser(this.#built.memory, (fd, offset, length) => sys.fallocate(fd, FALLOC_FL_PUNCH_HOLE_KEEP_SIZE, offset, length) === 0));
        this.#balloonControl = {
          setTarget: (pages) => balloon.setTarget(pages),
          stats: () => ({ target: balloon.targetPages, actual: balloon.actualPages, stats: balloon.stats, refresh: () => balloon.requestStats() }),
        };
        device = balloon;
        break;
      }
    }
    const vm = this.#built.vm;
    const pin = pciSlotPin(this.#virtio.length + 1); // the slot PciRoot.add gives it, wired as the MP table says
    const pci = new VirtioPciDevice(device, {
      memory: this.#built.memory,
      router: this.#irqRouter,
      intx: new GsiLine(pin, (gsi, level) => vm.setIrqLine(gsi, level)),
      intxLine: pin,
      loop: this.#deviceLoop,
      ioeventfd: (fd, address, length, assign) => vm.setIoeventfd(fd, "mmio", address, length, assign),
    });
    const slot = this.#pciRoot!.add(pci);
    if (pciSlotPin(slot) !== pin) throw new Error(`${pci.debugLabel} got slot ${slot}, not the one its INTx pin assumed`);
    this.#virtio.push(pci);
    if (device instanceof Block) {
      const block = device;
      this.#diskControls.push({
        flush: () => block.disk.flush(),
        resize: (bytes) => {
          const problem = block.disk.resize(bytes);
          if (problem) return problem;
          block.refreshCapacity();
          pci.notifyConfigChanged();
          return null;
        },
      });
    }
  }

  #policiesCache: Record<string, string> | null = null;
  get #policies(): Record<string, string> {
    if (this.#policiesCache === null) {
      try {
        this.#policiesCache = loadPolicies(this.#config.seccompPolicyDir);
      } catch (e) {
        throw new ConfigError(`--seccomp-policy-dir: cannot read ${this.#config.seccompPolicyDir} (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
      }
    }
    return this.#policiesCache;
  }

  /** Starts a device in its own jailed process (index = its place among the virtio devices). */
  #startSandboxed(spec: VirtioSpec, index: number): ProxyDevice {
    const vm = this.#built.vm;
    const pin = pciSlotPin(index + 1);
    const gsis = Array.from({ length: VIRTIO_QUEUES[spec.kind] + 1 }, () => this.#irqRouter.allocateGsi());
    if (spec.kind === "block" && spec.disk.backed) throw new ConfigError(`disk ${spec.label} has a backing file, which a sandboxed device cannot open; use --disable-sandbox`);
    const deviceFd = spec.kind === "block" ? spec.disk.fd : spec.kind === "net" ? spec.tap.fd : spec.kind === "console" ? (spec.output?.fd ?? null) : null;
    if (spec.kind === "console" && deviceFd === null) throw new ConfigError("a sandboxed virtio-console needs an output: type=stdout or type=file (or --disable-sandbox)");
    const proxy = ProxyDevice.spawn({
      kind: spec.kind,
      label: spec.label,
      memory: this.#built.memory.regions.map((r) => ({ base: r.guestBase, size: r.size })),
      gsis,
      intxGsi: pin,
      policy: policyFileFor(spec.label),
      policies: this.#policies,
      logFailures: this.#config.seccompLogFailures,
      logLevel: this.#config.logLevel,
      ...(spec.kind === "block" ? { block: { readOnly: spec.disk.readOnly, id: spec.id } } : {}),
      ...(spec.kind === "net" ? { net: { mac: spec.mac } } : {}),
    }, this.#built.memory.fd, deviceFd, {
      msiRoute: (gsi, lo, hi, data) => this.#irqRouter.setMsiRoute(gsi, lo, hi, data),
      irqfd: (fd, gsi) => this.#irqRouter.attachIrqfd(fd, gsi),
      ioeventfd: (fd, address, length, assign) => vm.setIoeventfd(fd, "mmio", address, length, assign),
      irqLine: (gsi, level) => vm.setIrqLine(gsi, level),
    });
    this.#proxies.push(proxy);
    this.#virtio.push(proxy);
    return proxy;
  }

  /** Waits for a started device process and puts its proxy on the PCI bus. */
  #attachSandboxed(spec: VirtioSpec, proxy: ProxyDevice): void {
    const pin = pciSlotPin(this.#proxies.indexOf(proxy) + 1);
    const slot = this.#pciRoot!.add(proxy);
    if (pciSlotPin(slot) !== pin) throw new Error(`${proxy.debugLabel} got slot ${slot}, not the one its INTx pin assumed`);
    proxy.syncConfig();
    this.#wait.add(proxy.tube.fd, { deviceTube: proxy });
    if (spec.kind === "console" && spec.stdin) this.#stdinSerial = { queueInput: (bytes) => proxy.input(bytes) };
    if (spec.kind === "balloon") {
      this.#balloonControl = {
        setTarget: (pages) => proxy.balloonTarget(pages),
        stats: () => {
          const s = proxy.balloonStats() ?? { target: 0, actual: 0, stats: null };
          return { ...s, refresh: () => {} };
        },
      };
    }
    if (spec.kind === "block") this.#diskControls.push({ flush: () => proxy.flush(), resize: (bytes) => proxy.diskResize(bytes) });
  }

  /** Runs device workers on the control loop: their eventfds are watched like any other. */
  readonly #deviceLoop: DeviceEventLoop = {
    watch: (fd, onReadable) => {
      this.#deviceFds.set(fd, onReadable);
      if (!this.#suspended) this.#wait.add(fd, { device: onReadable });
    },
    unwatch: (fd) => {
      if (this.#deviceFds.delete(fd) && !this.#suspended) this.#wait.delete(fd);
    },
  };
  /** Every fd a device worker watches; while suspended none of them is in the WaitContext. */
  readonly #deviceFds = new Map<number, () => void>();
  #suspended = false;
  #savedClock: bigint | null = null;
  #stopRequested = false;

  /** Opens where a port's output goes (null for a sink). */
  #outputFor(cfg: SerialConfig): FdOutput | null {
    const output = cfg.type === "stdout" ? new FdOutput(1, false) : cfg.type === "file" ? FdOutput.file(cfg.path!) : null;
    if (output) this.#outputs.push(output);
    return output;
  }

  #requestGuestExit(message: string): void {
    this.#guestExit ??= message;
    this.#deviceExit.signal();
  }

  #watch(): void {
    this.#wait.add(this.#busRequest.fd, "bus_request");
    this.#wait.add(this.#vcpuExit.fd, "vcpu_exit");
    this.#wait.add(this.#deviceExit.fd, "device_exit");
    this.#wait.add(this.#sigint.fd, "sigint");
    this.#wait.add(this.#sigterm.fd, "sigterm");
    if (this.#control) this.#wait.add(this.#control.fd, "control_listen");
    eventFfi.notifySignal(SIGINT, this.#sigint.fd);
    eventFfi.notifySignal(SIGTERM, this.#sigterm.fd);
    if (this.#stdinSerial) {
      try {
        this.#wait.add(0, "stdin");
        if (term.isatty(0)) {
          this.#savedTerminal = new Uint8Array(term.TERMIOS_SAVE_SIZE);
          term.termRaw(0, this.#savedTerminal);
        }
      } catch (e) {
        // A regular file cannot be polled (EPERM) but is always readable: read it as the guest takes it.
        log.debug(`stdin is not pollable (${e instanceof Error ? e.message : String(e)}); reading it as a file`);
        this.#stdinIsFile = true;
      }
    }
  }

  /** Describes the buses to a Worker: ranges of the control loop's devices are forwarded. */
  #workerRanges(): Record<AddressSpace, WorkerRange[]> {
    const describe = (space: AddressSpace): WorkerRange[] => [
      ...this.#localRanges[space],
      ...this.#buses[space].ranges.map((r): WorkerRange => ({ base: r.base, length: r.length, label: r.device.debugLabel, kind: "remote" })),
    ];
    return { io: describe("io"), mmio: describe("mmio") };
  }

  #startVcpus(): void {
    const kickSignal = vcpuFfi.sigrtmin() + KICK_SIGNAL_OFFSET;
    vcpuFfi.installKickHandler(kickSignal);
    const mmapSize = this.#built.vm.kvm.vcpuMmapSize();
    const ranges = this.#workerRanges();
    for (const vcpu of this.#built.vcpus) {
      const worker = this.#workers[vcpu.id]!;
      worker.addEventListener("error", (e) => this.#onWorkerFailure(vcpu.id, e.message));
      worker.addEventListener("close", () => {
        if (this.#shared.state(vcpu.id) !== VCPU_STATE.STOPPED) this.#onWorkerFailure(vcpu.id, "Worker exited before its vCPU stopped");
      });
      const init: VcpuWorkerInit = {
        vcpuId: vcpu.id, vcpuFd: vcpu.fd, mmapSize, shared: this.#shared.buffer, kickSignal,
        busRequestFd: this.#busRequest.fd, exitFd: this.#vcpuExit.fd, ranges,
      };
      worker.postMessage(init);
    }
    this.#kickSignal = kickSignal;
  }

  #onWorkerFailure(id: number, message: string): void {
    this.#workerFailure ??= `vCPU ${id} Worker failed: ${message}`;
    this.#vcpuExit.signal();
  }

  async #controlLoop(): Promise<Ending> {
    let sliceStart = performance.now();
    for (;;) {
      const events = this.#wait.wait(EVENT_LOOP_SLICE_MS);
      for (const { token } of events) {
        switch (token) {
          case "bus_request":
            this.#busRequest.read();
            this.#serveMailboxes();
            break;
          case "stdin":
            this.#readStdin();
            break;
          case "sigint":
            return { code: 128 + SIGINT, message: "stopping: tsvm received SIGINT" };
          case "sigterm":
            return { code: 128 + SIGTERM, message: "stopping: tsvm received SIGTERM" };
          case "device_exit":
          case "vcpu_exit":
            this.#deviceExit.read();
            this.#vcpuExit.read();
            break;
          case "control_listen": {
            const client = this.#control?.accept();
            if (client != null) this.#wait.add(client, { controlClient: client });
            break;
          }
          default:
            if ("device" in token) token.device();
            else if ("deviceTube" in token) {
              if (!token.deviceTube.drainNotices()) this.#wait.delete(token.deviceTube.tube.fd);
            }
            else if (!this.#control?.serve(token.controlClient, (r) => this.#handleControl(r))) this.#wait.delete(token.controlClient);
        }
      }
      const ending = this.#ending();
      if (ending) return ending;
      this.#pumpStdinFile();
      if (events.length === 0 || performance.now() - sliceStart >= EVENT_LOOP_SLICE_MS) {
        await yieldToEventLoop();
        sliceStart = performance.now();
        const late = this.#ending();
        if (late) return late;
      }
    }
  }

  /** Carries out one control-socket request (tsvm stop, suspend, resume, balloon, disk resize). */
  #handleControl(request: VmRequest): VmResponse {
    try {
      switch (request.kind) {
        case "stop":
          if (this.#suspended) this.#resume(); // devices must run to flush
          for (const d of this.#diskControls) d.flush();
          this.#stopRequested = true;
          return { kind: "ok" };
        case "suspend":
          return this.#suspend();
        case "resume":
          return this.#resume();
        case "balloon": {
          if (this.#suspended) return { kind: "error", message: "the VM is suspended; resume it first" };
          if (!this.#balloonControl) return { kind: "error", message: "this VM has no balloon device (--no-balloon)" };
          if (request.bytes > this.#config.memorySize) return { kind: "error", message: `balloon size ${request.bytes} is larger than guest memory (${this.#config.memorySize})` };
          this.#balloonControl.setTarget(Math.floor(request.bytes / BALLOON_PAGE_SIZE));
          return { kind: "ok" };
        }
        case "balloon_stats": {
          if (this.#suspended) return { kind: "error", message: "the VM is suspended; resume it first" };
          if (!this.#balloonControl) return { kind: "error", message: "this VM has no balloon device (--no-balloon)" };
          const b = this.#balloonControl.stats();
          b.refresh(); // the next call sees fresher figures
          const json = JSON.stringify({ target_bytes: b.target * BALLOON_PAGE_SIZE, actual_bytes: b.actual * BALLOON_PAGE_SIZE, stats: b.stats });
          return { kind: "balloon_stats", json };
        }
        case "disk_resize":
          if (this.#suspended) return { kind: "error", message: "the VM is suspended; resume it first" };
          return this.#resizeDisk(request.index, request.bytes);
      }
    } catch (e) {
      return { kind: "error", message: e instanceof Error ? e.message : String(e) };
    }
  }

  #resizeDisk(index: number, bytes: number): VmResponse {
    const disk = this.#diskControls[index];
    if (!disk) return { kind: "error", message: `no disk ${index} (this VM has ${this.#diskControls.length})` };
    if (this.#disks[index]!.readOnly) return { kind: "error", message: `disk ${index} is read-only` };
    if (bytes % SECTOR_SIZE !== 0 || bytes === 0) return { kind: "error", message: `size ${bytes} is not a positive multiple of ${SECTOR_SIZE} bytes` };
    const problem = disk.resize(bytes);
    if (problem) return { kind: "error", message: `failed to resize disk ${index}: ${problem}` };
    return { kind: "ok" };
  }

  /** Parks every vCPU outside KVM_RUN and stops device processing; kvmclock is held still. */
  #suspend(): VmResponse {
    if (this.#suspended) return { kind: "ok" };
    this.#shared.requestPause();
    const pid = sys.getpid();
    const deadline = performance.now() + SUSPEND_DEADLINE_MS;
    const settled = (): boolean => this.#built.vcpus.every((v) => [VCPU_STATE.PARKED, VCPU_STATE.STOPPED].includes(this.#shared.state(v.id) as 2 | 3));
    while (!settled()) {
      if (performance.now() > deadline) {
        this.#shared.resume();
        return { kind: "error", message: "vCPUs did not park in time" };
      }
      for (const v of this.#built.vcpus) {
        const tid = this.#shared.tid(v.id);
        if (this.#shared.state(v.id) === VCPU_STATE.RUNNING && tid > 0) vcpuFfi.kickThread(pid, tid, this.#kickSignal);
      }
      this.#busRequest.read();
      this.#serveMailboxes(); // a vCPU waiting on a device finishes its exit, then parks
      this.#wait.wait(1);
    }
    this.#savedClock = this.#built.vm.getClock();
    for (const fd of this.#deviceFds.keys()) this.#wait.delete(fd);
    // Device processes stop entirely: no queue is served while the VM is suspended.
    for (const p of this.#proxies) if (p.dead === null) process.kill(p.pid, "SIGSTOP");
    this.#suspended = true;
    return { kind: "ok" };
  }

  #resume(): VmResponse {
    if (!this.#suspended) return { kind: "ok" };
    if (this.#savedClock !== null) this.#built.vm.setClock(this.#savedClock);
    for (const p of this.#proxies) if (p.dead === null) process.kill(p.pid, "SIGCONT");
    for (const [fd, handler] of this.#deviceFds) this.#wait.add(fd, { device: handler });
    this.#suspended = false;
    this.#shared.resume();
    // Notifications that came while suspended are still counted in their eventfds: serve them now.
    for (const handler of this.#deviceFds.values()) handler();
    return { kind: "ok" };
  }

  /** Returns how the VM ends if it should end now. */
  #ending(): Ending | null {
    const deadDevice = this.#proxies.find((p) => p.dead !== null);
    if (deadDevice) return { code: EXIT_CODE.VM_ERROR, message: `stopping: ${deadDevice.dead}` };
    if (this.#stopRequested) return { code: EXIT_CODE.GUEST_EXIT, message: null };
    if (this.#workerFailure) return { code: EXIT_CODE.VM_ERROR, message: this.#workerFailure };
    for (const vcpu of this.#built.vcpus) {
      if (this.#shared.state(vcpu.id) !== VCPU_STATE.STOPPED) continue;
      const outcome = this.#shared.outcome(vcpu.id);
      if (outcome === VCPU_OUTCOME.ERROR) return { code: EXIT_CODE.VM_ERROR, message: this.#shared.report(vcpu.id) };
      if (outcome === VCPU_OUTCOME.GUEST_EXIT) return { code: EXIT_CODE.GUEST_EXIT, message: null };
    }
    if (this.#guestExit) {
      log.info(this.#guestExit);
      return { code: EXIT_CODE.GUEST_EXIT, message: null };
    }
    return null;
  }

  #serveMailboxes(): void {
    const onUnhandled = (space: AddressSpace, address: number): void =>
      logOnce(this.#unhandled, `${space}:${address}`, "debug", `unhandled ${space === "io" ? "port" : "MMIO"} access at 0x${address.toString(16)}`);
    // Keep serving while requests arrive so a vCPU is never left waiting on a coalesced wake-up.
    let served = true;
    while (served) {
      served = false;
      this.#mailboxes.forEach((m, id) => {
        if (m.serve(this.#buses, id, onUnhandled)) served = true;
      });
    }
  }

  #readStdin(): void {
    const buf = new Uint8Array(STDIN_CHUNK);
    const n = sys.readRaw(0, buf);
    if (n <= 0) {
      this.#wait.delete(0); // end of input: stop watching
      return;
    }
    this.#stdinSerial?.queueInput(buf.subarray(0, n));
  }

  /** Feeds stdin that is a regular file to the guest, a chunk at a time, keeping what it refused. */
  #pumpStdinFile(): void {
    if (!this.#stdinIsFile || !this.#stdinSerial) return;
    if (this.#stdinCarry.byteLength === 0) {
      const buf = new Uint8Array(STDIN_CHUNK);
      const n = sys.readRaw(0, buf);
      if (n < 0) {
        this.#stdinIsFile = false;
        return;
      }
      if (n === 0) return; // end of file for now; a file can still grow, so look again next time
      this.#stdinCarry = buf.subarray(0, n);
    }
    this.#stdinCarry = this.#stdinCarry.subarray(this.#stdinSerial.queueInput(this.#stdinCarry));
  }

  async #stopVcpus(): Promise<void> {
    this.#shared.requestExit();
    const pid = sys.getpid();
    const deadline = performance.now() + VCPU_STOP_DEADLINE_MS;
    const allStopped = (): boolean => this.#built.vcpus.every((v) => this.#shared.state(v.id) === VCPU_STATE.STOPPED);
    while (!allStopped() && performance.now() < deadline) {
      for (const v of this.#built.vcpus) {
        const tid = this.#shared.tid(v.id);
        if (this.#shared.state(v.id) === VCPU_STATE.RUNNING && tid > 0) vcpuFfi.kickThread(pid, tid, this.#kickSignal);
      }
      this.#mailboxes.forEach((m) => m.cancel());
      this.#wait.wait(10);
      this.#vcpuExit.read();
      await yieldToEventLoop();
    }
    if (!allStopped()) log.warn("some vCPUs did not stop in time; terminating their Workers");
  }

  #release(): void {
    for (const d of this.#virtio) d.close();
    if (this.#savedTerminal) term.termRestore(0, this.#savedTerminal);
    eventFfi.defaultSignal(SIGINT);
    eventFfi.defaultSignal(SIGTERM);
    for (const o of this.#outputs) o.close();
    for (const fd of [this.#wait, this.#busRequest, this.#vcpuExit, this.#deviceExit, this.#sigint, this.#sigterm]) fd.close();
  }
}
