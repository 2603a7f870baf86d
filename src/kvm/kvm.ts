// kvm.ts - the /dev/kvm system handle: API version, capabilities, supported CPUID and MSRs.
import { sys } from "../../ffi/mod.ts";
import { checked, SysError } from "../base/errno.ts";
import { OwnedFd } from "../base/owned_fd.ts";
import { type CpuidEntry, decodeCpuid, KVM_CPUID_ENTRY2, KVM_CPUID2 } from "./kvm_structs.ts";
import { KVM_API_VERSION, KVM_IOCTL, KVM_MAX_CPUID_ENTRIES } from "./kvm_sys.ts";

const O_RDWR = 2;
const E2BIG = 7;

/** An open /dev/kvm. */
export class Kvm extends OwnedFd {

  /** Opens `path` (default /dev/kvm) and checks the API version. */
  static open(path = "/dev/kvm"): Kvm {
    const fd = sys.open(path, O_RDWR);
    const kvm = new Kvm(fd);
    const version = sys.ioctlVal(fd, KVM_IOCTL.KVM_GET_API_VERSION, 0);
    if (version !== KVM_API_VERSION) {
      kvm.close();
      throw new Error(`failed to open ${path}: KVM API version is ${version}, tsvm needs ${KVM_API_VERSION}`);
    }
    return kvm;
  }

  /** Returns KVM_CHECK_EXTENSION's answer for `cap` (0 when unsupported). */
  checkExtension(cap: number): number {
    return Math.max(0, sys.ioctlVal(this.fd, KVM_IOCTL.KVM_CHECK_EXTENSION, cap));
  }

  /** Returns the size of the kvm_run mapping of each vCPU. */
  vcpuMmapSize(): number {
    return checked(sys.ioctlVal(this.fd, KVM_IOCTL.KVM_GET_VCPU_MMAP_SIZE, 0), "get vCPU mmap size");
  }

  /** Returns the CPUID leaves KVM can virtualize on this host. */
  supportedCpuid(): CpuidEntry[] {
    for (let capacity = KVM_MAX_CPUID_ENTRIES; capacity <= 4 * KVM_MAX_CPUID_ENTRIES; capacity *= 2) {
      const bytes = new Uint8Array(KVM_CPUID2.size + capacity * KVM_CPUID_ENTRY2.size);
      new DataView(bytes.buffer).setUint32(KVM_CPUID2.nent, capacity, true);
      const r = sys.ioctlPtr(this.fd, KVM_IOCTL.KVM_GET_SUPPORTED_CPUID, bytes);
      if (r === -E2BIG) continue;
      checked(r, "get supported CPUID");
      return decodeCpuid(bytes);
    }
    throw new SysError("get supported CPUID", E2BIG);
  }

  /** Creates a VM and returns its fd. */
  createVmFd(): number {
    return checked(sys.ioctlVal(this.fd, KVM_IOCTL.KVM_CREATE_VM, 0), "create VM");
  }
}
