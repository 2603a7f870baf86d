// worker_bus.ts - the bus layout the vCPU runner serves from, published by the control loop.
//
// The control loop owns the Buses (devices are inserted there, BARs move there). The vCPU runner
// keeps its own copy, rebuilt when the layout changes: the control loop writes the ranges into a
// table in shared memory under a sequence counter (odd while it writes), and the runner compares the
// counter with the one it built from at each port or MMIO exit (one atomic load). (It shares the
// thread with the control loop now; the layout and the views date from vCPU Workers, which needed
// shared memory, and are kept until serving the control loop's Buses directly is measured.) A change always happens
// while the control loop serves some access (a BAR write), before it answers, so the vCPU that moved
// a BAR uses the new layout from its next exit on.
//
// Table (Int32 words): [0] sequence  [1] range count  then per range:
//   space (0 io, 1 mmio), base low, base high, length, view (index into the views, or REMOTE/SINK)
//
// A view is how the runner serves a device itself, over state in shared memory (worker_devices.ts);
// the views are fixed when the vCPUs start, so a device added later is served by the control loop's
// Bus.
import type { Bus, BusDevice } from "../devices/bus.ts";
import type { CoalescedRingSpec } from "../kvm/coalesced_ring.ts";

/** The two address spaces a vCPU exit can touch. */
export type AddressSpace = "io" | "mmio";

/** How the vCPU runner serves a device itself; every buffer is shared with the device's own thread. */
export type WorkerView =
  /** Stateless: writes dropped, reads zero (the debug port). */
  | { readonly kind: "sink" }
  /** Reads from a SharedRegisters image where it allows; everything else by the control loop's Bus. */
  | { readonly kind: "registers"; readonly buffer: SharedArrayBuffer }
  /** A 16550A whose whole state is shared (serial.ts); output written by the vCPU itself. */
  | { readonly kind: "serial"; readonly state: SharedArrayBuffer; readonly label: string; readonly outputFd: number | null; readonly gsi: number }
  /** PCI configuration mechanism #1: the shared address latch and the configuration-space images. */
  | { readonly kind: "pci_config"; readonly latch: SharedArrayBuffer; readonly images: SharedArrayBuffer; readonly coalesced: CoalescedRingSpec | null };

const W_SEQUENCE = 0;
const W_COUNT = 1;
const HEADER_WORDS = 2;
const ENTRY_WORDS = 5;
/** Room for the legacy devices and six BARs of every PCI slot, with plenty to spare. */
export const MAX_WORKER_RANGES = 512;
const VIEW_REMOTE = -1;
const VIEW_SINK = -2;

/** One range as the runner reads it back. */
export type WorkerRangeEntry = { readonly space: AddressSpace; readonly base: number; readonly length: number; readonly view: number };

/** Control-loop side: the views the runner knows and the table they read the layout from. */
export class WorkerBusLayout {
  readonly table = new SharedArrayBuffer((HEADER_WORDS + MAX_WORKER_RANGES * ENTRY_WORDS) * 4);
  readonly #words = new Int32Array(this.table);
  readonly #views: WorkerView[] = [];
  readonly #index = new Map<SharedArrayBuffer, number>();
  #frozen = false;

  /** The views, for the runner; no view is added after this. */
  freezeViews(): readonly WorkerView[] {
    this.#frozen = true;
    return this.#views;
  }

  /** Writes the layout of `buses` into the table. */
  publish(buses: Readonly<Record<AddressSpace, Bus>>): void {
    const w = this.#words;
    const entries: number[] = [];
    for (const space of ["io", "mmio"] as const) {
      for (const r of buses[space].ranges) {
        entries.push(space === "io" ? 0 : 1, r.base >>> 0, Math.floor(r.base / 0x1_0000_0000), r.length, this.#viewOf(r.device));
      }
    }
    const count = entries.length / ENTRY_WORDS;
    if (count > MAX_WORKER_RANGES) throw new Error(`the bus has ${count} ranges; the vCPU runner can follow at most ${MAX_WORKER_RANGES}`);
    const sequence = Atomics.load(w, W_SEQUENCE);
    Atomics.store(w, W_SEQUENCE, sequence + 1); // odd: being written
    for (let i = 0; i < entries.length; i++) Atomics.store(w, HEADER_WORDS + i, entries[i]!);
    Atomics.store(w, W_COUNT, count);
    Atomics.store(w, W_SEQUENCE, sequence + 2);
  }

  #viewOf(device: BusDevice): number {
    const view = device.workerView ?? null;
    if (view === null) return VIEW_REMOTE;
    if (view.kind === "sink") return VIEW_SINK;
    const key = view.kind === "registers" ? view.buffer : view.kind === "serial" ? view.state : view.latch;
    const known = this.#index.get(key);
    if (known !== undefined) return known;
    if (this.#frozen) return VIEW_REMOTE;
    this.#views.push(view);
    this.#index.set(key, this.#views.length - 1);
    return this.#views.length - 1;
  }
}

/** Reads a consistent copy of the table; returns its sequence and ranges. */
export function readWorkerLayout(table: Int32Array): { sequence: number; ranges: WorkerRangeEntry[] } {
  for (;;) {
    const sequence = Atomics.load(table, W_SEQUENCE);
    if (sequence & 1) continue; // the control loop is writing it: it takes a few microseconds
    const count = Math.min(MAX_WORKER_RANGES, Atomics.load(table, W_COUNT));
    const ranges: WorkerRangeEntry[] = [];
    for (let i = 0; i < count; i++) {
      const at = HEADER_WORDS + i * ENTRY_WORDS;
      ranges.push({
        space: Atomics.load(table, at) === 0 ? "io" : "mmio",
        base: (Atomics.load(table, at + 1) >>> 0) + (Atomics.load(table, at + 2) >>> 0) * 0x1_0000_0000,
        length: Atomics.load(table, at + 3) >>> 0,
        view: Atomics.load(table, at + 4),
      });
    }
    if (Atomics.load(table, W_SEQUENCE) === sequence) return { sequence, ranges };
  }
}

/** How the runner makes the device for a view (built once per view and address space). */
export type WorkerDeviceFactory = (view: WorkerView, space: AddressSpace, remote: BusDevice) => BusDevice;

/** Runner side: the Buses one vCPU dispatches to, kept equal to the published layout. */
export class WorkerBuses {
  readonly io: Bus;
  readonly mmio: Bus;
  readonly #table: Int32Array;
  readonly #views: readonly WorkerView[];
  readonly #make: WorkerDeviceFactory;
  readonly #remote: Readonly<Record<AddressSpace, BusDevice>>;
  readonly #sink: BusDevice;
  readonly #devices = new Map<string, BusDevice>();
  #sequence = -1;

  constructor(
    buses: { io: Bus; mmio: Bus },
    table: SharedArrayBuffer,
    views: readonly WorkerView[],
    remote: Readonly<Record<AddressSpace, BusDevice>>,
    sink: BusDevice,
    make: WorkerDeviceFactory,
  ) {
    this.io = buses.io;
    this.mmio = buses.mmio;
    this.#table = new Int32Array(table);
    this.#views = views;
    this.#remote = remote;
    this.#sink = sink;
    this.#make = make;
    this.refresh();
  }

  /** Rebuilds the Buses if the layout changed since they were built. */
  refresh(): void {
    if (Atomics.load(this.#table, W_SEQUENCE) === this.#sequence) return;
    const { sequence, ranges } = readWorkerLayout(this.#table);
    this.io.clear();
    this.mmio.clear();
    for (const r of ranges) {
      const bus = r.space === "io" ? this.io : this.mmio;
      bus.insert(this.#deviceFor(r.view, r.space), r.base, r.length);
    }
    this.#sequence = sequence;
  }

  #deviceFor(index: number, space: AddressSpace): BusDevice {
    if (index === VIEW_SINK) return this.#sink;
    const view = this.#views[index];
    if (view === undefined) return this.#remote[space];
    const key = `${space}:${index}`;
    let device = this.#devices.get(key);
    if (device === undefined) {
      device = this.#make(view, space, this.#remote[space]);
      this.#devices.set(key, device);
    }
    return device;
  }
}
