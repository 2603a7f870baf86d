// proxy_device.ts - the VMM's side of a device process: a PciDevice whose accesses are requests on a tube.
import { jail, socket, sys } from "../../../ffi/mod.ts";
import { log } from "../../base/log.ts";
import { Tube } from "../../base/tube.ts";
import { PciConfiguration } from "../pci/pci_configuration.ts";
import { PCI, type PciDevice } from "../pci/mod.ts";
import { type DeviceSetup, MessageReader, MessageWriter, NOTICE, REQUEST } from "./messages.ts";

/** What a device process asks the VMM to do with the VM fd. */
export type VmOperations = {
  msiRoute(gsi: number, addressLo: number, addressHi: number, data: number): void;
  irqfd(fd: number, gsi: number): void;
  ioeventfd(fd: number, address: number, length: number, assign: boolean): void;
  irqLine(gsi: number, level: boolean): void;
};

/** How long a device process may take to answer one request, or to start. */
const CALL_TIMEOUT_MS = 5000;
const START_TIMEOUT_MS = 10_000;
/** Host ids the jailed processes' ids 0 and 1 map to. */
const JAIL_ID_BASE = 100_000;
const SIGSYS = 31;
const EPERM = 1;

/** A virtio-pci function running in its own jailed process. */
export class ProxyDevice implements PciDevice {
  readonly debugLabel: string;
  /** A mirror of the device's BARs and command register, for PciRoot's bookkeeping. */
  readonly config: PciConfiguration;
  #dead: string | null = null;

  /** What this device may ask of the VM: its own GSIs and INTx pin, ioeventfds inside its own BAR. */
  #gsis: ReadonlySet<number> = new Set();
  #ready = false;
  #pendingSync = false;
  #intxGsi = -1;
  #refused = 0;

  private constructor(readonly label: string, readonly pid: number, readonly tube: Tube, readonly vm: VmOperations) {
    this.debugLabel = `virtio-${label} (pid ${pid})`;
    this.config = new PciConfiguration({ vendorId: 0x1af4, deviceId: 0x1040, classCode: 0xff0000 });
    this.config.addBar({ index: 0, size: 0x8000, kind: "memory32" }); // VirtioPciDevice's one BAR
  }

  /** Starts the device process for `setup` with the guest memfd and its own fd; `waitReady` before use. */
  static spawn(setup: DeviceSetup, memoryFd: number, deviceFd: number | null, vm: VmOperations): ProxyDevice {
    const [ours, theirs] = socket.seqpacketPair();
    const command = Bun.isStandaloneExecutable ? [process.execPath, "device"] : [process.execPath, Bun.main, "device"];
    const fds = deviceFd === null ? [theirs, memoryFd] : [theirs, memoryFd, deviceFd];
    const pid = jail.spawnJailed(command[0]!, command, ["BUN_RUNTIME_TRANSPILER_CACHE_PATH=0"], fds, JAIL_ID_BASE);
    sys.close(theirs);
    const tube = new Tube(ours);
    if (pid < 0) {
      tube.close();
      const why = -pid === EPERM
        ? "jailing device processes needs root (to create their namespaces and map their ids); run as root or with --disable-sandbox"
        : `errno ${-pid}`;
      throw new Error(`failed to start the ${setup.label} device process: ${why}`);
    }
    const proxy = new ProxyDevice(setup.label, pid, tube, vm);
    proxy.#gsis = new Set(setup.gsis);
    proxy.#intxGsi = setup.intxGsi;
    tube.send(new MessageWriter(REQUEST.SETUP).text(JSON.stringify(setup)).done());
    return proxy;
  }

  /** Waits until the device process has locked itself down; throws if it fails to. Several device
   * processes start in parallel: spawn them all, then wait for each. */
  waitReady(): void {
    const tube = this.tube;
    const label = this.label;
    while (!this.#ready) {
      let m: ReturnType<Tube["receive"]>;
      try {
        m = tube.receive(START_TIMEOUT_MS);
      } catch {
        m = { kind: "closed" };
      }
      if (m.kind !== "message") {
        const status = this.reap(true);
        throw new Error(`the ${label} device process did not start (${status})`);
      }
      const r = new MessageReader(m.bytes);
      if (r.kind === NOTICE.FAILED) throw new Error(`the ${label} device process failed to start: ${r.text()}`);
      this.#notice(r, m.fds);
    }
  }

  /** Why the process is gone, or null while it runs. */
  get dead(): string | null {
    return this.#dead;
  }

  /** Tells the device, before its first request, where PciRoot put its BAR and that decoding is on. */
  syncConfig(): void {
    this.#pendingSync = true;
  }

  readConfig(offset: number, length: number): number {
    return this.#call(new MessageWriter(REQUEST.CONFIG_READ).u16(offset).u8(length))?.u32() ?? 0xffffffff;
  }

  writeConfig(offset: number, length: number, value: number): void {
    this.config.write(offset, length, value);
    this.#call(new MessageWriter(REQUEST.CONFIG_WRITE).u16(offset).u8(length).u32(value));
  }

  readBar(index: number, offset: number, data: Uint8Array): void {
    const reply = this.#call(new MessageWriter(REQUEST.BAR_READ).u8(index).u32(offset).u8(data.byteLength));
    if (reply === null) data.fill(0xff);
    else data.set(reply.rest().subarray(0, data.byteLength));
  }

  writeBar(index: number, offset: number, data: Uint8Array): void {
    this.#call(new MessageWriter(REQUEST.BAR_WRITE).u8(index).u32(offset).u8(data.byteLength).bytes(data));
  }

  /** Console input; returns the bytes the device accepted. */
  input(bytes: Uint8Array): number {
    return this.#call(new MessageWriter(REQUEST.INPUT).bytes(bytes.subarray(0, 3000)))?.u32() ?? 0;
  }

  balloonTarget(pages: number): void {
    this.#call(new MessageWriter(REQUEST.BALLOON_TARGET).u32(pages));
  }

  balloonStats(): { target: number; actual: number; stats: Record<string, number> | null } | null {
    const text = this.#call(new MessageWriter(REQUEST.BALLOON_STATS))?.text();
    return text ? JSON.parse(text) : null;
  }

  /** Resizes the disk; returns why it could not, or null. */
  diskResize(bytes: number): string | null {
    const reply = this.#call(new MessageWriter(REQUEST.DISK_RESIZE).f64(bytes));
    if (reply === null) return this.#dead ?? "the device process is gone";
    const problem = reply.text();
    return problem === "" ? null : problem;
  }

  flush(): boolean {
    return this.#call(new MessageWriter(REQUEST.FLUSH))?.u8() === 0;
  }

  /** Handles what the device sent while no request was waiting; returns false when it has gone. */
  drainNotices(): boolean {
    for (;;) {
      const m = this.tube.receive(0);
      if (m.kind === "timeout") return true;
      if (m.kind === "closed") {
        this.#died();
        return false;
      }
      this.#notice(new MessageReader(m.bytes), m.fds);
    }
  }

  /** Waits for (or polls) the process and describes how it ended. */
  reap(block: boolean): string {
    const [r, status] = jail.waitpid(this.pid, !block);
    if (r <= 0) return "still running";
    const signal = status & 0x7f;
    if (signal === 0) return `exited with status ${(status >> 8) & 0xff}`;
    return signal === SIGSYS ? "was killed by SIGSYS: a system call its seccomp policy does not allow" : `was killed by signal ${signal}`;
  }

  /** Ends the process (its tube closing makes it exit; a stuck one is killed). */
  close(): void {
    this.tube.close();
    if (this.#dead === null) {
      try {
        process.kill(this.pid, "SIGKILL");
      } catch {
        // already gone
      }
      this.reap(true);
    }
  }

  #refuse(what: string): void {
    if (++this.#refused <= 5) log.warn(`${this.debugLabel} asked for ${what}, which is not its to have; refused`);
  }

  #died(): void {
    if (this.#dead !== null) return;
    this.#dead = `device process ${this.label} (pid ${this.pid}) ${this.reap(true)}`;
  }

  /** Sends a request and waits for its result, carrying out VM operations that arrive meanwhile. */
  #call(request: MessageWriter): MessageReader | null {
    if (this.#dead !== null) return null;
    try {
      // Device processes finish starting while the VM already runs; the first request waits for that.
      if (!this.#ready) this.waitReady();
      if (this.#pendingSync) {
        this.#pendingSync = false;
        this.#call(new MessageWriter(REQUEST.CONFIG_WRITE).u16(PCI.BAR0).u8(4).u32(this.config.read(PCI.BAR0, 4)));
        this.#call(new MessageWriter(REQUEST.CONFIG_WRITE).u16(PCI.COMMAND).u8(2).u32(this.config.command));
      }
      this.tube.send(request.done());
      for (;;) {
        const m = this.tube.receive(CALL_TIMEOUT_MS);
        if (m.kind !== "message") {
          if (m.kind === "timeout") process.kill(this.pid, "SIGKILL");
          this.#died();
          return null;
        }
        const r = new MessageReader(m.bytes);
        if (r.kind === NOTICE.RESULT) return r;
        this.#notice(r, m.fds);
      }
    } catch (e) {
      if (this.#dead === null && e instanceof Error && e.message.includes("failed to start")) this.#dead = e.message;
      this.#died();
      return null;
    }
  }

  /** Carries out a VM operation the device asked for, if it is the device's to ask (a compromised
   * device must not reach other devices' interrupts or notification addresses). */
  #notice(r: MessageReader, fds: readonly number[]): void {
    switch (r.kind) {
      case NOTICE.MSI_ROUTE: {
        const gsi = r.u32();
        if (this.#gsis.has(gsi)) this.vm.msiRoute(gsi, r.u32(), r.u32(), r.u32());
        else this.#refuse(`an MSI route for GSI ${gsi}`);
        break;
      }
      case NOTICE.IRQFD: {
        const gsi = r.u32();
        if (fds[0] !== undefined && this.#gsis.has(gsi)) this.vm.irqfd(fds[0], gsi);
        else this.#refuse(`an irqfd for GSI ${gsi}`);
        break;
      }
      case NOTICE.IOEVENTFD: {
        const address = r.f64();
        const length = r.u32();
        const assign = r.u8() === 1;
        const bar = this.config.barAddress(0);
        const inside = Number.isSafeInteger(address) && bar !== 0 && address >= bar && address + length <= bar + (this.config.bar(0)?.size ?? 0);
        if (fds[0] !== undefined && inside && [0, 1, 2, 4, 8].includes(length)) this.vm.ioeventfd(fds[0], address, length, assign);
        else this.#refuse(`an ioeventfd at 0x${address.toString(16)}`);
        break;
      }
      case NOTICE.READY:
        this.#ready = true;
        break;
      case NOTICE.FAILED:
        this.#dead ??= `the ${this.label} device process failed to start: ${r.text()}`;
        break;
      case NOTICE.IRQ_LINE: {
        const gsi = r.u32();
        if (gsi === this.#intxGsi) this.vm.irqLine(gsi, r.u8() === 1);
        else this.#refuse(`INTx on GSI ${gsi}`);
        break;
      }
      default:
        this.#refuse(`message kind ${r.kind}`);
    }
    // The VM keeps its own references (KVM holds irqfds and ioeventfds); our copies can go.
    for (const fd of fds) sys.close(fd);
  }
}
