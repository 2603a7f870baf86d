// kvm_sys.ts - KVM API constants and ioctl request numbers (linux/kvm.h, Documentation/virt/kvm/api.rst).

const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;
const KVMIO = 0xae;

/** Encodes an ioctl request number the way the kernel's _IOC macro does. */
function ioc(dir: number, type: number, nr: number, size: number): number {
  // bits: nr 0-7, type 8-15, size 16-29, dir 30-31; >>> 0 keeps it unsigned
  return ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0;
}
const io = (nr: number): number => ioc(IOC_NONE, KVMIO, nr, 0);
const ior = (nr: number, size: number): number => ioc(IOC_READ, KVMIO, nr, size);
const iow = (nr: number, size: number): number => ioc(IOC_WRITE, KVMIO, nr, size);
const iowr = (nr: number, size: number): number => ioc(IOC_READ | IOC_WRITE, KVMIO, nr, size);

/** ioctl request numbers; sizes are the sizeof of each argument struct (checked against gcc in tests). */
export const KVM_IOCTL = {
  KVM_GET_API_VERSION: io(0x00),
  KVM_CREATE_VM: io(0x01),
  KVM_GET_MSR_INDEX_LIST: iowr(0x02, 4),
  KVM_CHECK_EXTENSION: io(0x03),
  KVM_GET_VCPU_MMAP_SIZE: io(0x04),
  KVM_GET_SUPPORTED_CPUID: iowr(0x05, 8),
  KVM_CREATE_VCPU: io(0x41),
  KVM_SET_USER_MEMORY_REGION: iow(0x46, 32),
  KVM_SET_TSS_ADDR: io(0x47),
  KVM_SET_IDENTITY_MAP_ADDR: iow(0x48, 8),
  KVM_CREATE_IRQCHIP: io(0x60),
  KVM_IRQ_LINE: iow(0x61, 8),
  KVM_SET_GSI_ROUTING: iow(0x6a, 8),
  KVM_IRQFD: iow(0x76, 32),
  KVM_CREATE_PIT2: iow(0x77, 64),
  KVM_IOEVENTFD: iow(0x79, 64),
  KVM_REGISTER_COALESCED_MMIO: iow(0x67, 16),
  KVM_SET_CLOCK: iow(0x7b, 48),
  KVM_GET_CLOCK: ior(0x7c, 48),
  KVM_RUN: io(0x80),
  KVM_GET_REGS: ior(0x81, 144),
  KVM_SET_REGS: iow(0x82, 144),
  KVM_GET_SREGS: ior(0x83, 312),
  KVM_SET_SREGS: iow(0x84, 312),
  KVM_GET_MSRS: iowr(0x88, 8),
  KVM_SET_MSRS: iow(0x89, 8),
  KVM_GET_FPU: ior(0x8c, 416),
  KVM_SET_FPU: iow(0x8d, 416),
  KVM_GET_LAPIC: ior(0x8e, 1024),
  KVM_SET_LAPIC: iow(0x8f, 1024),
  KVM_SET_CPUID2: iow(0x90, 8),
  KVM_GET_MP_STATE: ior(0x98, 4),
  KVM_SET_MP_STATE: iow(0x99, 4),
} as const;

/** The API version this code is written against (KVM_GET_API_VERSION). */
export const KVM_API_VERSION = 12;

/** Capabilities tsvm checks with KVM_CHECK_EXTENSION. */
export const KVM_CAP = {
  KVM_CAP_IRQCHIP: 0,
  KVM_CAP_HLT: 1,
  KVM_CAP_USER_MEMORY: 3,
  KVM_CAP_SET_TSS_ADDR: 4,
  KVM_CAP_EXT_CPUID: 7,
  KVM_CAP_NR_VCPUS: 9,
  KVM_CAP_NR_MEMSLOTS: 10,
  KVM_CAP_PIT2: 33,
  KVM_CAP_SET_IDENTITY_MAP_ADDR: 37,
  KVM_CAP_IMMEDIATE_EXIT: 136,
  KVM_CAP_MAX_VCPUS: 66,
  KVM_CAP_COALESCED_MMIO: 15,
  KVM_CAP_COALESCED_PIO: 162,
} as const;

/** kvm_run.exit_reason values. */
export const KVM_EXIT = {
  KVM_EXIT_UNKNOWN: 0,
  KVM_EXIT_EXCEPTION: 1,
  KVM_EXIT_IO: 2,
  KVM_EXIT_HYPERCALL: 3,
  KVM_EXIT_DEBUG: 4,
  KVM_EXIT_HLT: 5,
  KVM_EXIT_MMIO: 6,
  KVM_EXIT_IRQ_WINDOW_OPEN: 7,
  KVM_EXIT_SHUTDOWN: 8,
  KVM_EXIT_FAIL_ENTRY: 9,
  KVM_EXIT_INTR: 10,
  KVM_EXIT_SET_TPR: 11,
  KVM_EXIT_TPR_ACCESS: 12,
  KVM_EXIT_NMI: 16,
  KVM_EXIT_INTERNAL_ERROR: 17,
  KVM_EXIT_SYSTEM_EVENT: 24,
} as const;
export type KvmExitReason = (typeof KVM_EXIT)[keyof typeof KVM_EXIT];

/** Returns the name of an exit reason (`KVM_EXIT_IO`), or `exit N`. */
export function exitReasonName(reason: number): string {
  for (const [name, value] of Object.entries(KVM_EXIT)) if (value === reason) return name;
  return `exit ${reason}`;
}

/** kvm_run.io.direction */
export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

/** kvm_run.internal.suberror values. */
export const KVM_INTERNAL_ERROR = {
  KVM_INTERNAL_ERROR_EMULATION: 1,
  KVM_INTERNAL_ERROR_SIMUL_EX: 2,
  KVM_INTERNAL_ERROR_DELIVERY_EV: 3,
  KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: 4,
} as const;

/** kvm_run.system_event.type values. */
export const KVM_SYSTEM_EVENT = {
  KVM_SYSTEM_EVENT_SHUTDOWN: 1,
  KVM_SYSTEM_EVENT_RESET: 2,
  KVM_SYSTEM_EVENT_CRASH: 3,
} as const;

/** kvm_mp_state values. */
export const KVM_MP_STATE = {
  KVM_MP_STATE_RUNNABLE: 0,
  KVM_MP_STATE_UNINITIALIZED: 1,
  KVM_MP_STATE_INIT_RECEIVED: 2,
  KVM_MP_STATE_HALTED: 3,
  KVM_MP_STATE_SIPI_RECEIVED: 4,
} as const;

/** KVM_PIT_SPEAKER_DUMMY: the PIT's speaker port (0x61) is emulated in the kernel. */
export const KVM_PIT_SPEAKER_DUMMY = 1;

/** kvm_cpuid_entry2.flags */
export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;

/** KVM_SET_GSI_ROUTING entry types and the irqchip numbers of the in-kernel chips. */
export const KVM_IRQ_ROUTING_IRQCHIP = 1;
export const KVM_IRQ_ROUTING_MSI = 2;
export const KVM_IRQCHIP_PIC_MASTER = 0;
export const KVM_IRQCHIP_PIC_SLAVE = 1;
export const KVM_IRQCHIP_IOAPIC = 2;
/** Most CPUID entries tsvm asks KVM for (KVM itself returns about 50 on current CPUs). */
export const KVM_MAX_CPUID_ENTRIES = 256;
