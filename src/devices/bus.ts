// bus.ts - the address bus (port I/O or MMIO) that routes vCPU accesses to BusDevices.
//
// One device per range; a device may hold several ranges. Lookup uses only the access's base
// address, so a 4-byte access at the last byte of a range still goes to that range's device.
// The control loop's Bus owns the devices; the vCPU runner serves from its own Bus built from the
// layout the control loop publishes (src/vcpu/worker_bus.ts): a device with a `workerView` is served
// over shared state, any other one by the control loop's Bus, called directly (one thread).
import { hex } from "../memory/mod.ts";
import type { WorkerView } from "../vcpu/worker_bus.ts";

/** Where an access landed: `offset` is relative to the range start, or the full address when the range was inserted with `fullAddress`. */
export type BusAccess = { offset: number; address: number; vcpuId: number };

/** A device on a Bus. `data` is the access's bytes (1, 2, 4 or 8), little-endian. */
export interface BusDevice {
  readonly debugLabel: string;
  read(access: BusAccess, data: Uint8Array): void;
  write(access: BusAccess, data: Uint8Array): void;
  /** How a vCPU runner may serve this device itself; absent or null: through the control loop's Bus. */
  readonly workerView?: WorkerView | null;
}

/** A range of the bus and its device. */
export type BusRange = { readonly base: number; readonly length: number; readonly fullAddress: boolean; readonly device: BusDevice };

export type BusErrorKind = "empty_range" | "overflow" | "overlap";

/** An insertion the bus refused. */
export class BusError extends Error {
  override readonly name = "BusError";
  constructor(readonly kind: BusErrorKind, message: string) {
    super(message);
  }
}

/** A sorted set of non-overlapping ranges, each owned by one BusDevice. */
export class Bus {
  readonly #ranges: BusRange[] = [];
  /** Reused for every access so the dispatch path allocates nothing. */
  readonly #access: BusAccess = { offset: 0, address: 0, vcpuId: 0 };
  /** Called after every insert and remove (the vCPUs' copies of the layout follow it). */
  onChange: (() => void) | null = null;

  /** Adds `device` at [base, base + length); throws on an empty, overflowing or overlapping range. */
  insert(device: BusDevice, base: number, length: number, fullAddress = false): void {
    if (!(length > 0) || !Number.isSafeInteger(length)) {
      throw new BusError("empty_range", `failed to insert ${device.debugLabel}: range at ${hex(base)} has length ${length}`);
    }
    if (!Number.isSafeInteger(base) || base < 0 || !Number.isSafeInteger(base + length)) {
      throw new BusError("overflow", `failed to insert ${device.debugLabel}: range ${hex(base)}+${hex(length)} overflows`);
    }
    const clash = this.#ranges.find((r) => base < r.base + r.length && r.base < base + length);
    if (clash) {
      throw new BusError("overlap", `failed to insert ${device.debugLabel} at ${hex(base)}+${hex(length)}: overlaps ${clash.device.debugLabel} at ${hex(clash.base)}+${hex(clash.length)}`);
    }
    const at = this.#ranges.findIndex((r) => r.base > base);
    this.#ranges.splice(at < 0 ? this.#ranges.length : at, 0, { base, length, fullAddress, device });
    this.onChange?.();
  }

  /** Removes the range starting at `base`; returns whether there was one. */
  remove(base: number): boolean {
    const at = this.#ranges.findIndex((r) => r.base === base);
    if (at < 0) return false;
    this.#ranges.splice(at, 1);
    this.onChange?.();
    return true;
  }

  /** Removes every range. */
  clear(): void {
    this.#ranges.length = 0;
    this.onChange?.();
  }

  /** Returns the range holding `address`, or null. */
  rangeOf(address: number): BusRange | null {
    const ranges = this.#ranges;
    let lo = 0;
    let hi = ranges.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = ranges[mid]!;
      if (address < r.base) hi = mid - 1;
      else if (address >= r.base + r.length) lo = mid + 1;
      else return r;
    }
    return null;
  }

  /** The ranges in address order. */
  get ranges(): readonly BusRange[] {
    return this.#ranges;
  }

  /** Reads from the device at `address` into `data`; returns false (data untouched) when none is there. */
  read(address: number, data: Uint8Array, vcpuId: number): boolean {
    const range = this.rangeOf(address);
    if (range === null) return false;
    range.device.read(this.#accessFor(range, address, vcpuId), data);
    return true;
  }

  /** Writes `data` to the device at `address`; returns false when none is there. */
  write(address: number, data: Uint8Array, vcpuId: number): boolean {
    const range = this.rangeOf(address);
    if (range === null) return false;
    range.device.write(this.#accessFor(range, address, vcpuId), data);
    return true;
  }

  #accessFor(range: BusRange, address: number, vcpuId: number): BusAccess {
    const access = this.#access;
    access.address = address;
    access.offset = range.fullAddress ? address : address - range.base;
    access.vcpuId = vcpuId;
    return access;
  }
}
