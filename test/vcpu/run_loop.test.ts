import { describe, expect, test } from "bun:test";
import { Bus, type BusAccess, type BusDevice } from "../../src/devices/bus.ts";
import { KVM_RUN } from "../../src/kvm/kvm_structs.ts";
import { KVM_EXIT } from "../../src/kvm/kvm_sys.ts";
import { type ExitContext, exitHandler, type VcpuStop } from "../../src/vcpu/run_loop.ts";

const EINTR = 4;
const DATA_OFFSET = 0x1000;

class Port implements BusDevice {
  readonly debugLabel = "port";
  readonly writes: number[] = [];
  read(_a: BusAccess, data: Uint8Array): void {
    data.fill(0x42);
  }
  write(_a: BusAccess, data: Uint8Array): void {
    this.writes.push(data[0]!);
  }
}

/** Replays `exits` through a fake kvm_run page; each step fills the page, then returns the reason. */
function fakeVcpu(steps: ((view: DataView) => number)[]) {
  const kvmRun = new Uint8Array(0x2000);
  const view = new DataView(kvmRun.buffer);
  let i = 0;
  const run = (): number => steps[i++]!(view);
  return { kvmRun, view, run };
}

const ioExit = (port: number, out: boolean, value: number, count = 1) => (v: DataView): number => {
  v.setUint8(KVM_RUN.io_direction, out ? 1 : 0);
  v.setUint8(KVM_RUN.io_size, 1);
  v.setUint16(KVM_RUN.io_port, port, true);
  v.setUint32(KVM_RUN.io_count, count, true);
  v.setBigUint64(KVM_RUN.io_data_offset, BigInt(DATA_OFFSET), true);
  for (let k = 0; k < Math.min(count, 16); k++) v.setUint8(DATA_OFFSET + k, value + k);
  return KVM_EXIT.KVM_EXIT_IO;
};
const reason = (r: number) => (): number => r;

/** Serves the fake vCPU's exits as the main thread serves a vCPU thread's, until one stops it (a kick stops it once exit is requested). */
function drive(f: { run: () => number }, ctx: ExitContext, exitRequested: () => boolean): VcpuStop {
  const serve = exitHandler(ctx);
  for (;;) {
    const outcome = serve(f.run());
    if (outcome === "served") continue;
    if (outcome === "interrupted") {
      if (exitRequested()) return { kind: "kicked" };
      continue;
    }
    return outcome;
  }
}

describe("exitHandler", () => {
  test("port writes reach the Bus device, string I/O one element at a time", () => {
    const port = new Port();
    const io = new Bus();
    io.insert(port, 0x3f8, 8);
    const f = fakeVcpu([ioExit(0x3f8, true, 0x41), ioExit(0x3f8, true, 0x61, 3), reason(KVM_EXIT.KVM_EXIT_SHUTDOWN)]);
    const stop = drive(f, { vcpuId: 0, kvmRun: f.kvmRun, io, mmio: new Bus() }, () => false);
    expect(port.writes).toEqual([0x41, 0x61, 0x62, 0x63]);
    expect(stop).toEqual({ kind: "error", message: "vCPU 0 stopped: KVM_EXIT_SHUTDOWN (triple fault)" });
  });

  test("every port exit first brings the buses up to the published layout", () => {
    const port = new Port();
    const io = new Bus();
    let refreshes = 0;
    const refreshBuses = (): void => {
      // The control loop mapped the port while the vCPU was in the guest: the exit must see it.
      if (refreshes++ === 0) io.insert(port, 0x3f8, 8);
    };
    const f = fakeVcpu([ioExit(0x3f8, true, 0x41), ioExit(0x3f8, true, 0x42), reason(KVM_EXIT.KVM_EXIT_SHUTDOWN)]);
    drive(f, { vcpuId: 0, kvmRun: f.kvmRun, io, mmio: new Bus(), refreshBuses }, () => false);
    expect(port.writes).toEqual([0x41, 0x42]);
    expect(refreshes).toBe(2);
  });

  test("reads of unclaimed ports and MMIO return all ones", () => {
    const f = fakeVcpu([
      ioExit(0x1234, false, 0),
      (v) => {
        v.setBigUint64(KVM_RUN.mmio_phys_addr, 0xd000_0000n, true);
        v.setUint32(KVM_RUN.mmio_len, 4, true);
        v.setUint8(KVM_RUN.mmio_is_write, 0);
        return KVM_EXIT.KVM_EXIT_MMIO;
      },
      reason(-EINTR),
    ]);
    drive(f, { vcpuId: 1, kvmRun: f.kvmRun, io: new Bus(), mmio: new Bus() }, () => true);
    expect([f.view.getUint8(DATA_OFFSET), f.view.getUint32(KVM_RUN.mmio_data, true)]).toEqual([0xff, 0xffff_ffff]);
  });

  test("a kick stops the loop only when exit was requested", () => {
    let requested = false;
    const f = fakeVcpu([reason(-EINTR), () => { requested = true; return -EINTR; }]);
    const stop = drive(f, { vcpuId: 0, kvmRun: f.kvmRun, io: new Bus(), mmio: new Bus() }, () => requested);
    expect(stop).toEqual({ kind: "kicked" });
  });

  test("a power-off system event is a guest exit", () => {
    const f = fakeVcpu([(v) => { v.setUint32(KVM_RUN.system_event_type, 1, true); return KVM_EXIT.KVM_EXIT_SYSTEM_EVENT; }]);
    const stop = drive(f, { vcpuId: 2, kvmRun: f.kvmRun, io: new Bus(), mmio: new Bus() }, () => false);
    expect(stop).toEqual({ kind: "guest_exit", message: "vCPU 2: guest powered off" });
  });

  test("an emulation failure is reported with its suberror and data", () => {
    const f = fakeVcpu([(v) => {
      v.setUint32(KVM_RUN.internal_suberror, 1, true);
      v.setUint32(KVM_RUN.internal_ndata, 1, true);
      v.setBigUint64(KVM_RUN.internal_data, 0xabcn, true);
      return KVM_EXIT.KVM_EXIT_INTERNAL_ERROR;
    }]);
    const stop = drive(f, { vcpuId: 0, kvmRun: f.kvmRun, io: new Bus(), mmio: new Bus() }, () => false);
    expect(stop).toEqual({ kind: "error", message: "vCPU 0 stopped: KVM_EXIT_INTERNAL_ERROR suberror 1 (emulation failure) data [0xabc]" });
  });

  test("a malformed port exit from KVM is an error, not an out-of-bounds access", () => {
    const f = fakeVcpu([ioExit(0x80, true, 0, 0x10000)]);
    const stop = drive(f, { vcpuId: 0, kvmRun: f.kvmRun, io: new Bus(), mmio: new Bus() }, () => false);
    expect(stop.kind).toBe("error");
  });
});
