// The bus layout the vCPU runner serves from: published by the control loop, followed by the runner.
import { describe, expect, test } from "bun:test";
import { Bus, type BusAccess, type BusDevice } from "../../src/devices/bus.ts";
import { SharedRegisters } from "../../src/devices/shared_registers.ts";
import { Sink } from "../../src/devices/sink.ts";
import type { AddressSpace } from "../../src/vcpu/worker_bus.ts";
import { readWorkerLayout, WorkerBuses, WorkerBusLayout, type WorkerView } from "../../src/vcpu/worker_bus.ts";
import { RegistersBusDevice } from "../../src/vcpu/worker_devices.ts";
import type { LayoutJob } from "../support/layout_worker.ts";

/** Stands for the mailbox: records what reached the control loop. */
class Recorder implements BusDevice {
  readonly debugLabel = "remote";
  readonly seen: string[] = [];
  read(access: BusAccess, data: Uint8Array): void {
    this.seen.push(`read ${access.address.toString(16)}`);
    data.fill(0xee);
  }
  write(access: BusAccess): void {
    this.seen.push(`write ${access.address.toString(16)}`);
  }
}

class Plain implements BusDevice {
  constructor(readonly debugLabel: string, readonly workerView: WorkerView | null = null) {}
  read(): void {}
  write(): void {}
}

function worker(buses: Record<AddressSpace, Bus>) {
  const layout = new WorkerBusLayout();
  layout.publish(buses);
  const views = layout.freezeViews();
  for (const b of Object.values(buses)) b.onChange = () => layout.publish(buses);
  const remote = { io: new Recorder(), mmio: new Recorder() };
  const wb = new WorkerBuses({ io: new Bus(), mmio: new Bus() }, layout.table, views, remote, new Sink("sink"), (view, _space, r) => {
    if (view.kind === "registers") return new RegistersBusDevice(view.buffer, r);
    throw new Error(`no ${view.kind} here`);
  });
  const read = (space: AddressSpace, address: number, size = 4): number[] => {
    const d = new Uint8Array(size);
    if (!wb[space].read(address, d, 0)) return [];
    return [...d];
  };
  return { layout, views, remote, wb, read };
}

describe("WorkerBusLayout and WorkerBuses", () => {
  test("a Worker's buses have the control loop's ranges: sinks and images served there, the rest remote", () => {
    const registers = new SharedRegisters(16);
    registers.set(0, Uint8Array.of(1, 2, 3, 4));
    registers.setLocal(0, 4, true);
    const buses = { io: new Bus(), mmio: new Bus() };
    buses.io.insert(new Sink("debug"), 0x80, 1);
    buses.io.insert(new Plain("i8042"), 0x60, 1, true);
    buses.mmio.insert(new Plain("bar", { kind: "registers", buffer: registers.buffer }), 0xd000_0000, 16);
    const w = worker(buses);
    expect(w.wb.io.ranges.map((r) => [r.base, r.length])).toEqual([[0x60, 1], [0x80, 1]]);
    expect(w.read("io", 0x80, 1)).toEqual([0]);
    expect(w.read("io", 0x60, 1)).toEqual([0xee]);
    expect(w.read("mmio", 0xd000_0000)).toEqual([1, 2, 3, 4]);
    expect(w.read("mmio", 0xd000_0004)).toEqual([0xee, 0xee, 0xee, 0xee]); // not flagged: to the device
    w.wb.mmio.write(0xd000_0000, Uint8Array.of(5), 0);
    expect(w.remote.io.seen).toEqual(["read 60"]);
    expect(w.remote.mmio.seen).toEqual(["read d0000004", "write d0000000"]);
  });

  test("a range the control loop moves is followed at the Worker's next refresh", () => {
    const registers = new SharedRegisters(16);
    registers.setLocal(0, 16, true);
    const bar = new Plain("bar", { kind: "registers", buffer: registers.buffer });
    const buses = { io: new Bus(), mmio: new Bus() };
    buses.mmio.insert(bar, 0xd000_0000, 16);
    const w = worker(buses);
    buses.mmio.remove(0xd000_0000);
    buses.mmio.insert(bar, 0x1_2000_0000, 16); // above 4 GiB
    expect(w.wb.mmio.rangeOf(0x1_2000_0000)).toBeNull(); // not yet
    w.wb.refresh();
    expect(w.wb.mmio.rangeOf(0xd000_0000)).toBeNull();
    expect(w.read("mmio", 0x1_2000_0000)).toEqual([0, 0, 0, 0]);
    expect(w.remote.mmio.seen).toEqual([]);
  });

  test("the same view on two ranges is one device; a view first seen after the vCPUs started is served remotely", () => {
    const a = new SharedRegisters(16);
    const b = new SharedRegisters(16);
    b.setLocal(0, 16, true);
    const buses = { io: new Bus(), mmio: new Bus() };
    buses.mmio.insert(new Plain("a", { kind: "registers", buffer: a.buffer }), 0x1000, 16);
    buses.mmio.insert(new Plain("a again", { kind: "registers", buffer: a.buffer }), 0x2000, 16);
    const w = worker(buses);
    expect(w.views.length).toBe(1);
    buses.mmio.insert(new Plain("late", { kind: "registers", buffer: b.buffer }), 0x3000, 16);
    w.wb.refresh();
    expect(w.read("mmio", 0x3000)).toEqual([0xee, 0xee, 0xee, 0xee]);
    expect(w.wb.mmio.rangeOf(0x1000)!.device).toBe(w.wb.mmio.rangeOf(0x2000)!.device);
  });

  test("a Worker reading the table while it is rewritten only ever sees whole layouts", async () => {
    const layout = new WorkerBusLayout();
    const buses = { io: new Bus(), mmio: new Bus() };
    const many = (base: number): void => {
      buses.mmio.clear();
      for (let i = 0; i < 200; i++) buses.mmio.insert(new Plain(`r${i}`), base + i * 0x1000, 0x1000);
    };
    many(0x1000_0000);
    layout.publish(buses);
    const stop = new Int32Array(new SharedArrayBuffer(4));
    const w = new Worker(new URL("../support/layout_worker.ts", import.meta.url).href);
    const result = new Promise<{ seen: string[]; reads: number }>((resolve) => {
      w.onmessage = (e) => resolve(e.data);
    });
    w.postMessage({ table: layout.table, stop: stop.buffer } satisfies LayoutJob);
    const published = new Set<string>();
    const describe = (): string => buses.mmio.ranges.map((r) => `mmio:${r.base.toString(16)}+${r.length}`).join(" ");
    published.add(describe());
    const deadline = performance.now() + 300;
    for (let n = 0; performance.now() < deadline; n++) {
      many(n % 2 ? 0x1000_0000 : 0x2000_0000);
      layout.publish(buses);
      published.add(describe());
      await Promise.resolve();
    }
    Atomics.store(stop, 0, 1);
    const { seen, reads } = await result;
    w.terminate();
    expect(reads).toBeGreaterThan(0);
    for (const s of seen) expect(published.has(s)).toBe(true);
    expect(readWorkerLayout(new Int32Array(layout.table)).ranges.length).toBe(200);
  });

  test("more ranges than the table holds is an error, not a silent truncation", () => {
    const layout = new WorkerBusLayout();
    const buses = { io: new Bus(), mmio: new Bus() };
    for (let i = 0; i < 513; i++) buses.mmio.insert(new Plain(`r${i}`), i * 16, 16);
    expect(() => layout.publish(buses)).toThrow(/at most 512/);
  });
});
