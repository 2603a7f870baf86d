// run_loop.ts - what happens at one vCPU exit: dispatch a port or MMIO access to the Bus, or say why
// the vCPU must stop. The exit server (vcpu_worker.ts) calls it for every exit its vCPU threads post.
import { KVM_RUN } from "../kvm/kvm_structs.ts";
import { exitReasonName, KVM_EXIT, KVM_EXIT_IO_OUT, KVM_INTERNAL_ERROR, KVM_SYSTEM_EVENT } from "../kvm/kvm_sys.ts";
import type { Bus } from "../devices/bus.ts";
import type { AddressSpace } from "./worker_bus.ts";

const EINTR = 4;
const EAGAIN = 11;
/** kvm_run.mmio.data holds at most 8 bytes. */
const MMIO_DATA_SIZE = 8;

/** Why a vCPU stops. */
export type VcpuStop =
  | { readonly kind: "error"; readonly message: string }
  | { readonly kind: "guest_exit"; readonly message: string }
  | { readonly kind: "kicked" };

/** What serving one exit came to: run on, look at the flags (a kick), or stop. */
export type ExitOutcome = "served" | "interrupted" | VcpuStop;

/** What serving a vCPU's exits needs: its kvm_run page and the buses. */
export type ExitContext = {
  readonly vcpuId: number;
  readonly kvmRun: Uint8Array;
  readonly io: Bus;
  readonly mmio: Bus;
  /** Brings `io` and `mmio` up to the layout the control loop published (a cheap check when unchanged). */
  readonly refreshBuses?: () => void;
  /** An access no device claims (a read then sees all ones, a write is dropped). */
  readonly unhandled?: ((space: AddressSpace, address: number) => void) | undefined;
};

/**
 * Returns the function that serves one exit of the vCPU: `reason` is what KVM_RUN returned (an exit
 * reason, or -errno). Port and MMIO accesses cost one Bus dispatch and allocate nothing.
 */
export function exitHandler(ctx: ExitContext): (reason: number) => ExitOutcome {
  const { vcpuId, kvmRun, io, mmio } = ctx;
  const refresh = ctx.refreshBuses ?? ((): void => {});
  const view = new DataView(kvmRun.buffer, kvmRun.byteOffset, kvmRun.byteLength);
  const mmioData = Array.from({ length: MMIO_DATA_SIZE + 1 }, (_, n) => kvmRun.subarray(KVM_RUN.mmio_data, KVM_RUN.mmio_data + n));
  const ioViews = new Map<number, Uint8Array>();
  const ioView = (offset: number, size: number): Uint8Array => {
    const key = offset * 16 + size;
    let v = ioViews.get(key);
    if (v === undefined) {
      v = kvmRun.subarray(offset, offset + size);
      ioViews.set(key, v);
    }
    return v;
  };

  return (reason: number): ExitOutcome => {
    if (reason === KVM_EXIT.KVM_EXIT_IO) {
      const out = kvmRun[KVM_RUN.io_direction] === KVM_EXIT_IO_OUT;
      const size = kvmRun[KVM_RUN.io_size]!;
      const port = view.getUint16(KVM_RUN.io_port, true);
      const count = view.getUint32(KVM_RUN.io_count, true);
      const offset = view.getUint32(KVM_RUN.io_data_offset, true);
      if (size === 0 || offset + size * count > kvmRun.byteLength) {
        return { kind: "error", message: `vCPU ${vcpuId}: KVM reported a malformed port access (size ${size}, count ${count})` };
      }
      refresh();
      for (let i = 0; i < count; i++) {
        const data = ioView(offset + i * size, size);
        if (out ? !io.write(port, data, vcpuId) : !io.read(port, data, vcpuId)) {
          if (!out) data.fill(0xff);
          ctx.unhandled?.("io", port);
        }
      }
      return "served";
    }
    if (reason === KVM_EXIT.KVM_EXIT_MMIO) {
      // Two 32-bit reads instead of getBigUint64: no BigInt allocated on the hot path.
      const address = view.getUint32(KVM_RUN.mmio_phys_addr, true) + view.getUint32(KVM_RUN.mmio_phys_addr + 4, true) * 0x1_0000_0000;
      const length = Math.min(MMIO_DATA_SIZE, view.getUint32(KVM_RUN.mmio_len, true));
      const data = mmioData[length]!;
      refresh();
      const write = kvmRun[KVM_RUN.mmio_is_write] !== 0;
      if (write ? !mmio.write(address, data, vcpuId) : !mmio.read(address, data, vcpuId)) {
        if (!write) data.fill(0xff);
        ctx.unhandled?.("mmio", address);
      }
      return "served";
    }
    if (reason === -EINTR || reason === KVM_EXIT.KVM_EXIT_INTR) return "interrupted";
    if (reason === -EAGAIN) return "served";
    if (reason < 0) return { kind: "error", message: `vCPU ${vcpuId}: KVM_RUN failed: errno ${-reason}` };
    return describeStop(vcpuId, reason, view);
  };
}

/** Turns an exit the loop does not service into a stop. */
function describeStop(vcpuId: number, reason: number, view: DataView): VcpuStop {
  const name = exitReasonName(reason);
  switch (reason) {
    case KVM_EXIT.KVM_EXIT_SYSTEM_EVENT: {
      const type = view.getUint32(KVM_RUN.system_event_type, true);
      if (type === KVM_SYSTEM_EVENT.KVM_SYSTEM_EVENT_SHUTDOWN || type === KVM_SYSTEM_EVENT.KVM_SYSTEM_EVENT_RESET) {
        return { kind: "guest_exit", message: `vCPU ${vcpuId}: guest ${type === 1 ? "powered off" : "reset"}` };
      }
      return { kind: "error", message: `vCPU ${vcpuId} stopped: ${name} type ${type}` };
    }
    case KVM_EXIT.KVM_EXIT_SHUTDOWN:
      return { kind: "error", message: `vCPU ${vcpuId} stopped: KVM_EXIT_SHUTDOWN (triple fault)` };
    case KVM_EXIT.KVM_EXIT_FAIL_ENTRY: {
      const hw = view.getBigUint64(KVM_RUN.fail_entry_hardware_entry_failure_reason, true);
      return { kind: "error", message: `vCPU ${vcpuId} stopped: KVM_EXIT_FAIL_ENTRY (hardware entry failure reason 0x${hw.toString(16)})` };
    }
    case KVM_EXIT.KVM_EXIT_INTERNAL_ERROR: {
      const suberror = view.getUint32(KVM_RUN.internal_suberror, true);
      const ndata = Math.min(16, view.getUint32(KVM_RUN.internal_ndata, true));
      const data = Array.from({ length: ndata }, (_, i) => `0x${view.getBigUint64(KVM_RUN.internal_data + i * 8, true).toString(16)}`);
      const what = suberror === KVM_INTERNAL_ERROR.KVM_INTERNAL_ERROR_EMULATION ? " (emulation failure)" : "";
      return { kind: "error", message: `vCPU ${vcpuId} stopped: KVM_EXIT_INTERNAL_ERROR suberror ${suberror}${what}${data.length ? ` data [${data.join(", ")}]` : ""}` };
    }
    case KVM_EXIT.KVM_EXIT_HLT:
      return { kind: "error", message: `vCPU ${vcpuId} stopped: KVM_EXIT_HLT with interrupts the in-kernel irqchip cannot deliver` };
    default:
      return { kind: "error", message: `vCPU ${vcpuId} stopped: unexpected ${name}` };
  }
}
