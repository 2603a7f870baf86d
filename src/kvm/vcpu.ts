// vcpu.ts - one KVM vCPU's state ioctls (registers, special registers, FPU, MSRs, CPUID, LAPIC).
import { sys } from "../../ffi/mod.ts";
import { checked } from "../base/errno.ts";
import { OwnedFd } from "../base/owned_fd.ts";
import {
  type CpuidEntry, decodeRegs, decodeSregs, encodeCpuid, encodeMsrs, encodeRegs, encodeSregsInto,
  KVM_FPU, KVM_LAPIC_STATE, KVM_MSR_ENTRY, KVM_MSRS, KVM_REGS, KVM_SREGS, type MsrEntry, type Regs, type Sregs,
} from "./kvm_structs.ts";
import { KVM_IOCTL } from "./kvm_sys.ts";

/** The register state of a vCPU, as set at boot or read for an error report. */
export class Vcpu extends OwnedFd {
  readonly id: number;

  constructor(id: number, fd: number) {
    super(fd);
    this.id = id;
  }

  getRegs(): Regs {
    const bytes = new Uint8Array(KVM_REGS.size);
    checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_GET_REGS, bytes), `get registers of vCPU ${this.id}`);
    return decodeRegs(bytes);
  }

  setRegs(regs: Regs): void {
    checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_SET_REGS, encodeRegs(regs)), `set registers of vCPU ${this.id}`);
  }

  getSregs(): Sregs {
    return decodeSregs(this.#getSregsBytes());
  }

  setSregs(sregs: Sregs): void {
    const bytes = this.#getSregsBytes();
    encodeSregsInto(bytes, sregs);
    checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_SET_SREGS, bytes), `set special registers of vCPU ${this.id}`);
  }

  /** Sets the x87 control word and MXCSR to their reset values, the rest to zero. */
  setFpu(fcw: number, mxcsr: number): void {
    const bytes = new Uint8Array(KVM_FPU.size);
    const view = new DataView(bytes.buffer);
    view.setUint16(KVM_FPU.fcw, fcw, true);
    view.setUint32(KVM_FPU.mxcsr, mxcsr, true);
    checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_SET_FPU, bytes), `set FPU of vCPU ${this.id}`);
  }

  /** Writes `entries` to the vCPU's MSRs; throws unless KVM accepted all of them. */
  setMsrs(entries: readonly MsrEntry[]): void {
    const n = checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_SET_MSRS, encodeMsrs(entries)), `set MSRs of vCPU ${this.id}`);
    if (n !== entries.length) {
      const rejected = entries[n]!;
      throw new Error(`failed to set MSRs of vCPU ${this.id}: KVM rejected MSR 0x${rejected.index.toString(16)}`);
    }
  }

  /** Reads the MSRs at `indices`. */
  getMsrs(indices: readonly number[]): MsrEntry[] {
    const bytes = encodeMsrs(indices.map((index) => ({ index, data: 0n })));
    const n = checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_GET_MSRS, bytes), `get MSRs of vCPU ${this.id}`);
    const view = new DataView(bytes.buffer);
    return indices.slice(0, n).map((index, i) => ({
      index, data: view.getBigUint64(KVM_MSRS.entries + i * KVM_MSR_ENTRY.size + KVM_MSR_ENTRY.data, true),
    }));
  }

  setCpuid(entries: readonly CpuidEntry[]): void {
    checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_SET_CPUID2, encodeCpuid(entries)), `set CPUID of vCPU ${this.id}`);
  }

  /** Reads, changes with `edit`, and writes back the local APIC register page. */
  updateLapic(edit: (regs: DataView) => void): void {
    const bytes = new Uint8Array(KVM_LAPIC_STATE.size);
    checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_GET_LAPIC, bytes), `get LAPIC of vCPU ${this.id}`);
    edit(new DataView(bytes.buffer));
    checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_SET_LAPIC, bytes), `set LAPIC of vCPU ${this.id}`);
  }

  #getSregsBytes(): Uint8Array {
    const bytes = new Uint8Array(KVM_SREGS.size);
    checked(sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_GET_SREGS, bytes), `get special registers of vCPU ${this.id}`);
    return bytes;
  }
}
