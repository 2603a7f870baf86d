// virtio_pci_driver.ts - drives a VirtioPciDevice through its BAR, as a guest driver would, for tests.
import { EPOLLOUT } from "../../src/base/wait_context.ts";
import { err, ok, type Result } from "../../src/base/result.ts";
import { RecordingIrqLine } from "../../src/devices/interrupt.ts";
import type { MsiRouter } from "../../src/devices/virtio/msix.ts";
import type { DeviceEventLoop, VirtioDevice } from "../../src/devices/virtio/virtio_device.ts";
import { VirtioPciDevice } from "../../src/devices/virtio/virtio_pci_device.ts";
import type { GuestMemory } from "../../src/memory/mod.ts";

export const COMMON = { DFSEL: 0x00, DF: 0x04, GFSEL: 0x08, GF: 0x0c, MSIX_CFG: 0x10, NUMQ: 0x12, STATUS: 0x14, CFG_GENERATION: 0x15, QSEL: 0x16, QSIZE: 0x18, QMSIX: 0x1a, QEN: 0x1c, QDESC: 0x20, QDRV: 0x28, QDEV: 0x30 } as const;

/** Records routes and counts signals instead of talking to KVM. */
export class FakeRouter implements MsiRouter {
  next = 24;
  routes = new Map<number, number[]>();
  allocateGsi(): number {
    return this.next++;
  }
  setMsiRoute(gsi: number, lo: number, hi: number, data: number): void {
    this.routes.set(gsi, [lo, hi, data]);
  }
  attachIrqfd(): void {}
  detachIrqfd(): void {}
}

/** A loop that remembers handlers; `kick(fd)` runs one as the control loop would. Like WaitContext, it
 * refuses to watch an fd twice. */
export class FakeLoop implements DeviceEventLoop {
  readonly handlers = new Map<number, () => void>();
  /** The fds watched for room to write (EPOLLOUT) rather than input. */
  readonly writable = new Set<number>();
  watch(fd: number, handler: () => void, events?: number): void {
    if (this.handlers.has(fd)) throw new Error(`fd ${fd} is watched already`);
    this.handlers.set(fd, handler);
    if (events !== undefined && (events & EPOLLOUT) !== 0) this.writable.add(fd);
  }
  unwatch(fd: number): void {
    this.handlers.delete(fd);
    this.writable.delete(fd);
  }
}

/** Records ioeventfds by address, refusing one at an address already taken (as KVM does, EEXIST). */
export class FakeIoeventfds {
  readonly byAddress = new Map<number, number>();
  register(fd: number, address: number, assign: boolean): Result<null> {
    if (assign) {
      if (this.byAddress.has(address)) return err(`failed to register ioeventfd at 0x${address.toString(16)}: EEXIST`);
      this.byAddress.set(address, fd);
    } else if (this.byAddress.get(address) === fd) this.byAddress.delete(address);
    return ok(null);
  }
}

/** A VirtioPciDevice plus register helpers. */
export class VirtioPciDriver<L extends DeviceEventLoop = FakeLoop> {
  readonly loop: L;
  readonly router = new FakeRouter();
  readonly intx = new RecordingIrqLine();
  readonly ioeventfds = new FakeIoeventfds();
  readonly pci: VirtioPciDevice;

  /** `loop` defaults to a FakeLoop whose handlers `kick` runs; with a real loop, pump it instead. */
  constructor(device: VirtioDevice, readonly memory: GuestMemory, loop?: L) {
    this.loop = loop ?? (new FakeLoop() as unknown as L);
    this.pci = new VirtioPciDevice(device, {
      memory, router: this.router, intx: this.intx, intxLine: 16, loop: this.loop,
      ioeventfd: (fd, address, assign) => this.ioeventfds.register(fd, address, assign),
    });
  }

  write(offset: number, value: number, size: 1 | 2 | 4): void {
    const data = new Uint8Array(size);
    for (let i = 0; i < size; i++) data[i] = (value >>> (i * 8)) & 0xff;
    this.pci.writeBar(0, offset, data);
  }

  /**
   * Reads a BAR 0 register. Where the register image lets the vCPU runner read it (shared_registers.ts),
   * the image must say the same as the transport: every test driving a device through here checks it.
   */
  read(offset: number, size: 1 | 2 | 4): number {
    const data = new Uint8Array(size);
    this.pci.readBar(0, offset, data);
    const image = new Uint8Array(size);
    if (this.pci.registers.read(offset, image) && image.some((b, i) => b !== data[i])) {
      throw new Error(`the register image says [${image.join(", ")}] at BAR 0 offset 0x${offset.toString(16)}, the transport [${data.join(", ")}]`);
    }
    let v = 0;
    for (let i = 0; i < size; i++) v |= data[i]! << (i * 8);
    return v >>> 0;
  }

  /** Negotiates `features` (a 64-bit mask); returns whether FEATURES_OK stuck. */
  negotiate(features: bigint): boolean {
    this.write(COMMON.STATUS, 0, 1);
    this.write(COMMON.STATUS, 3, 1);
    this.write(COMMON.GFSEL, 0, 4);
    this.write(COMMON.GF, Number(features & 0xffffffffn), 4);
    this.write(COMMON.GFSEL, 1, 4);
    this.write(COMMON.GF, Number(features >> 32n), 4);
    this.write(COMMON.STATUS, 3 | 8, 1);
    return (this.read(COMMON.STATUS, 1) & 8) !== 0;
  }

  /** Programs queue `index` with the given ring addresses and enables it. */
  setupQueue(index: number, size: number, desc: number, avail: number, used: number): void {
    this.write(COMMON.QSEL, index, 2);
    this.write(COMMON.QSIZE, size, 2);
    this.write(COMMON.QDESC, desc, 4);
    this.write(COMMON.QDESC + 4, 0, 4);
    this.write(COMMON.QDRV, avail, 4);
    this.write(COMMON.QDRV + 4, 0, 4);
    this.write(COMMON.QDEV, used, 4);
    this.write(COMMON.QDEV + 4, 0, 4);
    this.write(COMMON.QEN, 1, 2);
  }

  driverOk(): void {
    this.write(COMMON.STATUS, this.read(COMMON.STATUS, 1) | 4, 1);
  }

  /** Signals queue `index`'s kick eventfd and runs its handler. */
  kick(index: number): void {
    const k = this.pci.kicks[index]!;
    k.signal();
    if (this.loop instanceof FakeLoop) this.loop.handlers.get(k.fd)?.();
  }
}
