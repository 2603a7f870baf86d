// virtio_pci_device.ts - the virtio 1.x modern PCI transport (virtio 1.2 §4.1) around a VirtioDevice.
//
// BAR 0 (32-bit memory, 32 KiB):
//   0x0000 common configuration      0x3000 notifications (4 bytes per queue; ioeventfds)
//   0x1000 ISR status                 0x4000 MSI-X table
//   0x2000 device configuration      0x5000 MSI-X pending bits
//
// The common configuration is also kept as an image in shared memory (`registers`), rendered after
// every change, so vCPU runners serve its reads without a hop; device_feature stays with the device
// (a jailed device's features come from its process), and everything else goes to the transport.
import { EventFd } from "../../base/event_fd.ts";
import { RateLimitedLog } from "../../base/log.ts";
import type { Result } from "../../base/result.ts";
import type { GuestMemory } from "../../memory/mod.ts";
import type { WorkerView } from "../../vcpu/worker_bus.ts";
import type { IrqLine } from "../interrupt.ts";
import { SharedRegisters } from "../shared_registers.ts";
import { PCI, PCI_COMMAND_MEMORY, PciConfiguration } from "../pci/pci_configuration.ts";
import { PCI_INTERRUPT_PIN_INTA, type PciDevice } from "../pci/pci_device.ts";
import { PciInterrupt } from "./interrupt.ts";
import { MsixConfig, type MsiRouter } from "./msix.ts";
import { Queue, VIRTIO_MSI_NO_VECTOR } from "./queue.ts";
import {
  type DeviceEventLoop, hasFeature, VIRTIO_F, VIRTIO_STATUS, type VirtioDevice, type VirtioWorker,
} from "./virtio_device.ts";

const VIRTIO_PCI_VENDOR_ID = 0x1af4;
const VIRTIO_PCI_DEVICE_ID_BASE = 0x1040;
/** Capability types (virtio 1.2 §4.1.4). */
const VIRTIO_PCI_CAP = { COMMON_CFG: 1, NOTIFY_CFG: 2, ISR_CFG: 3, DEVICE_CFG: 4, PCI_CFG: 5 } as const;
const PCI_CAP_ID_VNDR = 0x09;
const PCI_CAP_ID_MSIX = 0x11;
const BAR_SIZE = 0x8000;
const COMMON_OFFSET = 0x0000;
const COMMON_SIZE = 0x38;
const ISR_OFFSET = 0x1000;
const DEVICE_CFG_OFFSET = 0x2000;
const NOTIFY_OFFSET = 0x3000;
const NOTIFY_OFF_MULTIPLIER = 4;
const MSIX_TABLE_OFFSET = 0x4000;
const MSIX_PBA_OFFSET = 0x5000;
const REGION_SIZE = 0x1000;

/** Common configuration registers (struct virtio_pci_common_cfg). */
const COMMON = {
  device_feature_select: 0x00, device_feature: 0x04, driver_feature_select: 0x08, driver_feature: 0x0c,
  config_msix_vector: 0x10, num_queues: 0x12, device_status: 0x14, config_generation: 0x15,
  queue_select: 0x16, queue_size: 0x18, queue_msix_vector: 0x1a, queue_enable: 0x1c, queue_notify_off: 0x1e,
  queue_desc: 0x20, queue_driver: 0x28, queue_device: 0x30,
} as const;

/** What the transport needs from the VM. */
export type VirtioPciResources = {
  readonly memory: GuestMemory;
  readonly router: MsiRouter;
  readonly intx: IrqLine;
  readonly intxLine: number;
  readonly loop: DeviceEventLoop;
  /**
   * Registers (or removes) an ioeventfd that catches writes of any width to a queue's notify
   * address; says why when KVM refuses (an address another device already claimed, say).
   */
  readonly ioeventfd: (fd: number, address: number, assign: boolean) => Result<null>;
};

/** A virtio device on PCI. Guest mistakes set DEVICE_NEEDS_RESET; nothing the guest writes throws. */
export class VirtioPciDevice implements PciDevice {
  readonly debugLabel: string;
  readonly config: PciConfiguration;
  readonly queues: Queue[];
  readonly kicks: EventFd[];
  readonly interrupt: PciInterrupt;
  readonly #device: VirtioDevice;
  readonly #res: VirtioPciResources;
  readonly #msix: MsixConfig;
  readonly #msixCapOffset: number;
  readonly #pciCfgCapOffset: number;
  #deviceFeatureSelect = 0;
  #driverFeatureSelect = 0;
  #driverFeatures = 0n;
  #status = 0;
  #configGeneration = 0;
  #queueSelect = 0;
  #worker: VirtioWorker | null = null;
  /** Where the notify ioeventfds are registered now (the VMM's own record, not the guest's BAR). */
  #ioeventfdBase: number | null = null;
  readonly #guestErrors = new RateLimitedLog("warn");
  /** BAR 0 as vCPU runners read it: the common configuration's image. */
  readonly registers = new SharedRegisters(BAR_SIZE);
  readonly #commonImage = new Uint8Array(COMMON_SIZE);
  readonly liveConfigDwords: readonly number[];

  constructor(device: VirtioDevice, resources: VirtioPciResources) {
    this.#device = device;
    this.#res = resources;
    this.debugLabel = `virtio-${device.debugLabel}`;
    this.queues = device.queueMaxSizes.map((max, index) => new Queue(max, index, device.maxChainBytes));
    this.kicks = this.queues.map(() => new EventFd());
    this.#msix = new MsixConfig(this.queues.length + 1, resources.router);
    this.interrupt = new PciInterrupt(this.#msix, resources.intx, (queue) => this.queues[queue]?.config.vector ?? VIRTIO_MSI_NO_VECTOR, this.queues.length);
    this.config = new PciConfiguration({
      vendorId: VIRTIO_PCI_VENDOR_ID,
      deviceId: VIRTIO_PCI_DEVICE_ID_BASE + device.deviceType,
      classCode: 0xff0000, // "device does not fit any defined class"; drivers match on IDs
      revision: 1,
      subsystemVendorId: VIRTIO_PCI_VENDOR_ID,
      subsystemId: VIRTIO_PCI_DEVICE_ID_BASE + device.deviceType,
    });
    this.config.addBar({ index: 0, size: BAR_SIZE, kind: "memory32" });
    this.config.setInterrupt(PCI_INTERRUPT_PIN_INTA, resources.intxLine);
    this.config.addCapability(virtioCap(VIRTIO_PCI_CAP.COMMON_CFG, COMMON_OFFSET, COMMON_SIZE));
    this.config.addCapability(virtioCap(VIRTIO_PCI_CAP.NOTIFY_CFG, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER * this.queues.length, NOTIFY_OFF_MULTIPLIER));
    this.config.addCapability(virtioCap(VIRTIO_PCI_CAP.ISR_CFG, ISR_OFFSET, 1));
    if (device.configSize > 0) this.config.addCapability(virtioCap(VIRTIO_PCI_CAP.DEVICE_CFG, DEVICE_CFG_OFFSET, device.configSize));
    const msix = new Uint8Array(12);
    const mv = new DataView(msix.buffer);
    msix[0] = PCI_CAP_ID_MSIX;
    mv.setUint16(2, this.#msix.count - 1, true);
    mv.setUint32(4, MSIX_TABLE_OFFSET, true); // BIR 0
    mv.setUint32(8, MSIX_PBA_OFFSET, true);
    this.#msixCapOffset = this.config.addCapability(msix, Uint8Array.of(0, 0, 0, 0xc0)); // enable + function mask
    // PCI configuration access: bar, offset and length are writable, then the data window.
    this.#pciCfgCapOffset = this.config.addCapability(
      virtioCap(VIRTIO_PCI_CAP.PCI_CFG, 0, 0, undefined, 4),
      Uint8Array.of(0, 0, 0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
    );
    // A change the device makes on its own: a driver that has started it hears it at once; one that
    // has not reads the new values (and a new config_generation) when it gets there.
    device.onConfigChanged?.(() => {
      if (this.#status & VIRTIO_STATUS.DRIVER_OK) this.notifyConfigChanged();
      else this.#configGeneration = (this.#configGeneration + 1) & 0xff;
      this.#publish();
    });
    // The PCI configuration access window reaches into BAR 0: always read by the transport.
    this.liveConfigDwords = [(this.#pciCfgCapOffset + 16) / 4];
    this.registers.setLocal(COMMON_OFFSET, COMMON_SIZE, true);
    this.registers.setLocal(COMMON.device_feature, 4, false);
    this.#publish();
  }

  barView(index: number): WorkerView | null {
    return index === 0 ? { kind: "registers", buffer: this.registers.buffer } : null;
  }

  /**
   * Renders the common configuration's image; called after everything that changes it. It never
   * asks the device (device_feature is left out): a jailed device may still be starting.
   */
  #publish(): void {
    this.#readCommon(COMMON_OFFSET, this.#commonImage, false);
    this.registers.set(COMMON_OFFSET, this.#commonImage);
  }

  get status(): number {
    return this.#status;
  }

  readConfig(offset: number, length: number): number {
    const data = this.#pciCfgCapOffset + 16;
    if (offset >= data && offset < data + 4) {
      const bytes = new Uint8Array(length);
      this.#pciCfgAccess(false, bytes);
      let value = 0;
      for (let i = 0; i < length; i++) value |= bytes[i]! << (i * 8);
      return value >>> 0;
    }
    return this.config.read(offset, length);
  }

  writeConfig(offset: number, length: number, value: number): void {
    const data = this.#pciCfgCapOffset + 16;
    if (offset >= data && offset < data + 4) {
      const bytes = new Uint8Array(length);
      for (let i = 0; i < length; i++) bytes[i] = (value >>> (i * 8)) & 0xff;
      this.#pciCfgAccess(true, bytes);
      return;
    }
    this.config.write(offset, length, value);
    if (offset <= this.#msixCapOffset + 3 && offset + length > this.#msixCapOffset + 2) {
      this.#msix.setControl(this.config.read(this.#msixCapOffset + 2, 2));
    }
    const touchesBar0 = offset < PCI.BAR0 + 4 && offset + length > PCI.BAR0;
    const touchesCommand = offset < PCI.COMMAND + 2 && offset + length > PCI.COMMAND;
    if ((touchesBar0 || touchesCommand) && this.#worker !== null) this.#syncIoeventfds();
  }

  readBar(index: number, offset: number, data: Uint8Array): void {
    data.fill(0);
    if (index !== 0) return;
    if (offset < COMMON_OFFSET + REGION_SIZE) this.#readCommon(offset, data);
    else if (offset < ISR_OFFSET + REGION_SIZE) data[0] = offset === ISR_OFFSET ? this.interrupt.readIsr() : 0;
    else if (offset < DEVICE_CFG_OFFSET + REGION_SIZE) this.#deviceConfig(offset - DEVICE_CFG_OFFSET, data, false);
    else if (offset >= MSIX_TABLE_OFFSET && offset < MSIX_TABLE_OFFSET + REGION_SIZE) this.#msix.readTable(offset - MSIX_TABLE_OFFSET, data);
    else if (offset >= MSIX_PBA_OFFSET && offset < MSIX_PBA_OFFSET + REGION_SIZE) this.#msix.readPba(offset - MSIX_PBA_OFFSET, data);
  }

  writeBar(index: number, offset: number, data: Uint8Array): void {
    if (index !== 0) return;
    if (offset < COMMON_OFFSET + REGION_SIZE) this.#writeCommon(offset, data);
    else if (offset >= DEVICE_CFG_OFFSET && offset < DEVICE_CFG_OFFSET + REGION_SIZE) this.#deviceConfig(offset - DEVICE_CFG_OFFSET, data, true);
    else if (offset >= NOTIFY_OFFSET && offset < NOTIFY_OFFSET + REGION_SIZE) {
      // Reached only when no ioeventfd caught the write (BAR moved, odd width): forward it by hand.
      const queue = (offset - NOTIFY_OFFSET) / NOTIFY_OFF_MULTIPLIER;
      if (Number.isInteger(queue)) this.kicks[queue]?.signal();
    } else if (offset >= MSIX_TABLE_OFFSET && offset < MSIX_TABLE_OFFSET + REGION_SIZE) this.#msix.writeTable(offset - MSIX_TABLE_OFFSET, data);
    this.#publish();
  }

  /** Increments config_generation and raises a configuration-change interrupt (disk resize, say). */
  notifyConfigChanged(): void {
    this.#configGeneration = (this.#configGeneration + 1) & 0xff;
    // The image vCPUs read must show the change before the interrupt that announces it: a driver
    // that reads device_status or config_generation in its handler would otherwise see the old value.
    this.#publish();
    this.interrupt.signalConfigChanged();
  }

  /** Stops the worker and releases eventfds and irqfds. */
  close(): void {
    this.#device.onConfigChanged?.(null);
    this.#reset();
    this.#msix.close();
    this.interrupt.close();
    for (const k of this.kicks) k.close();
  }

  #selectedQueue(): Queue | null {
    return this.queues[this.#queueSelect] ?? null;
  }

  #readCommon(offset: number, data: Uint8Array, withDeviceFeatures = true): void {
    const regs = new DataView(new ArrayBuffer(COMMON_SIZE));
    const q = this.#selectedQueue();
    const featureWord = (features: bigint, select: number): number => (select > 1 ? 0 : Number((features >> BigInt(select * 32)) & 0xffffffffn));
    regs.setUint32(COMMON.device_feature_select, this.#deviceFeatureSelect, true);
    // Only a read that covers device_feature asks the device (a jailed one may make it wait).
    const wantsFeatures = withDeviceFeatures && offset < COMMON.device_feature + 4 && offset + data.byteLength > COMMON.device_feature;
    if (wantsFeatures) regs.setUint32(COMMON.device_feature, featureWord(this.#device.features, this.#deviceFeatureSelect), true);
    regs.setUint32(COMMON.driver_feature_select, this.#driverFeatureSelect, true);
    regs.setUint32(COMMON.driver_feature, featureWord(this.#driverFeatures, this.#driverFeatureSelect), true);
    regs.setUint16(COMMON.config_msix_vector, this.interrupt.configVector, true);
    regs.setUint16(COMMON.num_queues, this.queues.length, true);
    regs.setUint8(COMMON.device_status, this.#status);
    regs.setUint8(COMMON.config_generation, this.#configGeneration);
    regs.setUint16(COMMON.queue_select, this.#queueSelect, true);
    if (q) {
      regs.setUint16(COMMON.queue_size, q.config.size, true);
      regs.setUint16(COMMON.queue_msix_vector, q.config.vector, true);
      regs.setUint16(COMMON.queue_enable, q.config.ready ? 1 : 0, true);
      regs.setUint16(COMMON.queue_notify_off, this.#queueSelect, true);
      regs.setBigUint64(COMMON.queue_desc, q.config.desc, true);
      regs.setBigUint64(COMMON.queue_driver, q.config.driver, true);
      regs.setBigUint64(COMMON.queue_device, q.config.device, true);
    }
    for (let i = 0; i < data.byteLength; i++) data[i] = offset + i < COMMON_SIZE ? regs.getUint8(offset + i) : 0;
  }

  #writeCommon(offset: number, data: Uint8Array): void {
    let value = 0;
    for (let i = 0; i < Math.min(4, data.byteLength); i++) value |= data[i]! << (i * 8);
    value >>>= 0;
    const q = this.#selectedQueue();
    const queueWritable = q !== null && !(this.#status & VIRTIO_STATUS.DRIVER_OK);
    const setHalf = (field: "desc" | "driver" | "device", high: boolean): void => {
      if (!queueWritable) return;
      const current = q.config[field];
      q.config[field] = high ? (BigInt(value) << 32n) | (current & 0xffffffffn) : (current & ~0xffffffffn) | BigInt(value);
    };
    switch (offset) {
      case COMMON.device_feature_select: this.#deviceFeatureSelect = value; break;
      case COMMON.driver_feature_select: this.#driverFeatureSelect = value; break;
      case COMMON.driver_feature:
        if (this.#driverFeatureSelect <= 1 && !(this.#status & VIRTIO_STATUS.FEATURES_OK)) {
          const shift = BigInt(this.#driverFeatureSelect * 32);
          this.#driverFeatures = (this.#driverFeatures & ~(0xffffffffn << shift)) | (BigInt(value) << shift);
        }
        break;
      case COMMON.config_msix_vector: this.interrupt.configVector = this.#vectorOrNone(value & 0xffff); break;
      case COMMON.device_status: this.#setStatus(value & 0xff); break;
      case COMMON.queue_select: this.#queueSelect = value & 0xffff; break;
      case COMMON.queue_size: if (queueWritable) q.config.size = value & 0xffff; break;
      case COMMON.queue_msix_vector:
        if (q) q.config.vector = this.#vectorOrNone(value & 0xffff);
        this.interrupt.notifiersChanged();
        break;
      case COMMON.queue_enable: if (queueWritable && (value & 1)) q.config.ready = true; break;
      case COMMON.queue_desc: setHalf("desc", false); break;
      case COMMON.queue_desc + 4: setHalf("desc", true); break;
      case COMMON.queue_driver: setHalf("driver", false); break;
      case COMMON.queue_driver + 4: setHalf("driver", true); break;
      case COMMON.queue_device: setHalf("device", false); break;
      case COMMON.queue_device + 4: setHalf("device", true); break;
      default: break; // read-only or reserved
    }
    if (data.byteLength === 8 && (offset === COMMON.queue_desc || offset === COMMON.queue_driver || offset === COMMON.queue_device)) {
      const high = (data[4]! | (data[5]! << 8) | (data[6]! << 16) | (data[7]! << 24)) >>> 0;
      const prev = value;
      value = high;
      setHalf(offset === COMMON.queue_desc ? "desc" : offset === COMMON.queue_driver ? "driver" : "device", true);
      value = prev;
    }
  }

  /** A vector the device does not have reads back as NO_VECTOR, which tells the driver it failed. */
  #vectorOrNone(vector: number): number {
    return vector < this.#msix.count ? vector : VIRTIO_MSI_NO_VECTOR;
  }

  #setStatus(value: number): void {
    if (value === 0) {
      this.#reset();
      return;
    }
    let next = this.#status | value; // the driver never clears bits except by resetting
    if (value & VIRTIO_STATUS.FEATURES_OK && !(this.#status & VIRTIO_STATUS.FEATURES_OK)) {
      const unknown = this.#driverFeatures & ~this.#device.features;
      if (unknown !== 0n || !hasFeature(this.#driverFeatures, VIRTIO_F.VIRTIO_F_VERSION_1)) {
        next &= ~VIRTIO_STATUS.FEATURES_OK; // refused: the driver sees the bit clear when it re-reads
      }
    }
    const becomingReady = next & VIRTIO_STATUS.DRIVER_OK && !(this.#status & VIRTIO_STATUS.DRIVER_OK);
    this.#status = next;
    if (becomingReady) {
      if (next & VIRTIO_STATUS.FEATURES_OK) this.#activate();
      else this.#needsReset("DRIVER_OK without FEATURES_OK");
    }
  }

  #activate(): void {
    const features = this.#driverFeatures;
    const ringFeatures = {
      eventIdx: hasFeature(features, VIRTIO_F.VIRTIO_RING_F_EVENT_IDX),
      indirect: hasFeature(features, VIRTIO_F.VIRTIO_RING_F_INDIRECT_DESC),
    };
    const active: (Queue | null)[] = [];
    for (const [i, q] of this.queues.entries()) {
      if (!q.config.ready) {
        active.push(null);
        continue;
      }
      const started = q.activate(this.#res.memory, ringFeatures);
      if (!started.ok) {
        this.#needsReset(`queue ${i}: ${started.error}`);
        return;
      }
      active.push(q);
    }
    this.interrupt.watchFallbacks(this.#res.loop);
    if (!this.#syncIoeventfds()) return;
    try {
      const worker = this.#device.activate({
        memory: this.#res.memory, queues: active, kicks: this.kicks, interrupt: this.interrupt, features,
        loop: this.#res.loop, needsReset: (reason) => this.#needsReset(reason),
      });
      // A device that met a broken ring while activating (its first drain) asked for a reset before
      // there was a worker to stop: stop it now.
      if (this.#status & VIRTIO_STATUS.DEVICE_NEEDS_RESET) worker.stop();
      else this.#worker = worker;
    } catch (e) {
      this.#needsReset(`activation failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  /**
   * Puts the notify ioeventfds where BAR 0 decodes now (or removes them while decoding is off), so a
   * BAR the guest moves keeps its fast path and leaves nothing behind at the old address. A refusal
   * (the guest put this BAR over another device's) makes the device need a reset; returns false then.
   */
  #syncIoeventfds(): boolean {
    const decoding = (this.config.command & PCI_COMMAND_MEMORY) !== 0;
    const base = decoding ? this.config.barAddress(0) : 0;
    const wanted = base === 0 ? null : base;
    if (wanted === this.#ioeventfdBase) return true;
    this.#removeIoeventfds();
    if (wanted === null) return true;
    const notifyAddress = (queue: number): number => wanted + NOTIFY_OFFSET + queue * NOTIFY_OFF_MULTIPLIER;
    for (const [i, k] of this.kicks.entries()) {
      const added = this.#res.ioeventfd(k.fd, notifyAddress(i), true);
      if (added.ok) continue;
      for (let earlier = 0; earlier < i; earlier++) this.#res.ioeventfd(this.kicks[earlier]!.fd, notifyAddress(earlier), false);
      this.#needsReset(`cannot catch notifications at BAR 0 0x${wanted.toString(16)}: ${added.error}`);
      return false;
    }
    this.#ioeventfdBase = wanted;
    return true;
  }

  #removeIoeventfds(): void {
    const base = this.#ioeventfdBase;
    if (base === null) return;
    this.kicks.forEach((k, i) => this.#res.ioeventfd(k.fd, base + NOTIFY_OFFSET + i * NOTIFY_OFF_MULTIPLIER, false));
    this.#ioeventfdBase = null;
  }

  #needsReset(reason: string): void {
    this.#guestErrors.log(`${this.debugLabel}: ${reason}; the device needs a reset`);
    this.#worker?.stop();
    this.#worker = null;
    this.#removeIoeventfds();
    this.#status |= VIRTIO_STATUS.DEVICE_NEEDS_RESET;
    this.notifyConfigChanged();
  }

  /** Marks the device broken from outside the transport (its backend failed, say). */
  needsReset(reason: string): void {
    this.#needsReset(reason);
  }

  #reset(): void {
    this.#worker?.stop();
    this.#worker = null;
    this.#removeIoeventfds();
    this.interrupt.unwatchFallbacks(this.#res.loop);
    for (const k of this.kicks) k.read(); // drop notifications from before the reset
    for (const q of this.queues) q.reset();
    this.interrupt.reset();
    this.#status = 0;
    this.#driverFeatures = 0n;
    this.#deviceFeatureSelect = 0;
    this.#driverFeatureSelect = 0;
    this.#queueSelect = 0;
    this.#publish();
  }

  #deviceConfig(offset: number, data: Uint8Array, write: boolean): void {
    if (offset < 0 || offset + data.byteLength > this.#device.configSize) {
      if (!write) data.fill(0);
      return;
    }
    if (write) this.#device.writeConfig(offset, data);
    else this.#device.readConfig(offset, data);
  }

  /** VIRTIO_PCI_CAP_PCI_CFG: access BAR `cap.bar` at `cap.offset` through the data window. */
  #pciCfgAccess(write: boolean, bytes: Uint8Array): void {
    const cap = this.#pciCfgCapOffset;
    const bar = this.config.getByte(cap + 4);
    const offset = this.config.read(cap + 8, 4);
    const length = this.config.read(cap + 12, 4);
    if (bar !== 0 || ![1, 2, 4].includes(length) || length > bytes.byteLength || offset % length !== 0 || offset + length > BAR_SIZE) {
      if (!write) bytes.fill(0);
      return;
    }
    if (write) this.writeBar(0, offset, bytes.subarray(0, length));
    else this.readBar(0, offset, bytes.subarray(0, length));
  }
}

/** Builds a struct virtio_pci_cap (16 bytes, or 20 with a trailing dword). */
function virtioCap(type: number, offset: number, length: number, multiplier?: number, extraBytes = 0): Uint8Array {
  const size = 16 + (multiplier !== undefined ? 4 : extraBytes);
  const cap = new Uint8Array(size);
  const v = new DataView(cap.buffer);
  cap[0] = PCI_CAP_ID_VNDR;
  cap[2] = size; // cap_len
  cap[3] = type;
  cap[4] = 0; // bar
  v.setUint32(8, offset, true);
  v.setUint32(12, length, true);
  if (multiplier !== undefined) v.setUint32(16, multiplier, true);
  return cap;
}

