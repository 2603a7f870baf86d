// kvm_structs.ts - byte layouts of the KVM structs tsvm exchanges with the kernel (x86-64, little-endian).
//
// Each layout is a table of named offsets plus `size`; test/kvm/kvm_structs.test.ts compares every
// entry with gcc's sizeof/offsetof on <linux/kvm.h>.

/** struct kvm_regs { __u64 rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8..r15, rip, rflags; } */
export const KVM_REGS = {
  size: 144,
  rax: 0, rbx: 8, rcx: 16, rdx: 24, rsi: 32, rdi: 40, rsp: 48, rbp: 56,
  r8: 64, r9: 72, r10: 80, r11: 88, r12: 96, r13: 104, r14: 112, r15: 120, rip: 128, rflags: 136,
} as const;
export const REGISTER_NAMES = [
  "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
  "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
] as const;
export type RegisterName = (typeof REGISTER_NAMES)[number];
export type Regs = Record<RegisterName, bigint>;

/** struct kvm_segment { __u64 base; __u32 limit; __u16 selector; __u8 type, present, dpl, db, s, l, g, avl, unusable, padding; } */
export const KVM_SEGMENT = {
  size: 24,
  base: 0, limit: 8, selector: 12, type: 14, present: 15, dpl: 16, db: 17, s: 18, l: 19, g: 20,
  avl: 21, unusable: 22,
} as const;
export type Segment = {
  base: bigint; limit: number; selector: number; type: number; present: number; dpl: number;
  db: number; s: number; l: number; g: number; avl: number; unusable: number;
};

/** struct kvm_dtable { __u64 base; __u16 limit; __u16 padding[3]; } */
export const KVM_DTABLE = { size: 16, base: 0, limit: 8 } as const;
export type DescriptorTable = { base: bigint; limit: number };

/** struct kvm_sregs { segments cs..ldt; kvm_dtable gdt, idt; __u64 cr0, cr2, cr3, cr4, cr8, efer, apic_base, interrupt_bitmap[4]; } */
export const KVM_SREGS = {
  size: 312,
  cs: 0, ds: 24, es: 48, fs: 72, gs: 96, ss: 120, tr: 144, ldt: 168, gdt: 192, idt: 208,
  cr0: 224, cr2: 232, cr3: 240, cr4: 248, cr8: 256, efer: 264, apic_base: 272, interrupt_bitmap: 280,
} as const;
export const SEGMENT_NAMES = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const;
export type SegmentName = (typeof SEGMENT_NAMES)[number];
export type Sregs = Record<SegmentName, Segment> & {
  gdt: DescriptorTable; idt: DescriptorTable;
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint; efer: bigint; apic_base: bigint;
};

/** struct kvm_fpu { __u8 fpr[8][16]; __u16 fcw, fsw; __u8 ftwx, pad1; __u16 last_opcode; __u64 last_ip, last_dp; __u8 xmm[16][16]; __u32 mxcsr, pad2; } */
export const KVM_FPU = { size: 416, fpr: 0, fcw: 128, fsw: 130, ftwx: 132, last_opcode: 134, last_ip: 136, last_dp: 144, xmm: 152, mxcsr: 408 } as const;

/** struct kvm_cpuid2 { __u32 nent, padding; struct kvm_cpuid_entry2 entries[]; } */
export const KVM_CPUID2 = { size: 8, nent: 0, entries: 8 } as const;
/** struct kvm_cpuid_entry2 { __u32 function, index, flags, eax, ebx, ecx, edx, padding[3]; } */
export const KVM_CPUID_ENTRY2 = { size: 40, function: 0, index: 4, flags: 8, eax: 12, ebx: 16, ecx: 20, edx: 24 } as const;
export type CpuidEntry = { function: number; index: number; flags: number; eax: number; ebx: number; ecx: number; edx: number };

/** struct kvm_msrs { __u32 nmsrs, pad; struct kvm_msr_entry entries[]; } */
export const KVM_MSRS = { size: 8, nmsrs: 0, entries: 8 } as const;
/** struct kvm_msr_entry { __u32 index, reserved; __u64 data; } */
export const KVM_MSR_ENTRY = { size: 16, index: 0, data: 8 } as const;
export type MsrEntry = { index: number; data: bigint };

/** struct kvm_userspace_memory_region { __u32 slot, flags; __u64 guest_phys_addr, memory_size, userspace_addr; } */
export const KVM_USERSPACE_MEMORY_REGION = { size: 32, slot: 0, flags: 4, guest_phys_addr: 8, memory_size: 16, userspace_addr: 24 } as const;

/** struct kvm_pit_config { __u32 flags, pad[15]; } */
export const KVM_PIT_CONFIG = { size: 64, flags: 0 } as const;

/** struct kvm_irq_level { __u32 irq; __u32 level; } */
export const KVM_IRQ_LEVEL = { size: 8, irq: 0, level: 4 } as const;

/** struct kvm_irq_routing { __u32 nr, flags; struct kvm_irq_routing_entry entries[]; } */
export const KVM_IRQ_ROUTING = { size: 8, nr: 0, flags: 4, entries: 8 } as const;
/** struct kvm_irq_routing_entry { __u32 gsi, type, flags, pad; union { irqchip{irqchip,pin}; msi{address_lo,address_hi,data}; __u32 pad[8]; } u; } */
export const KVM_IRQ_ROUTING_ENTRY = {
  size: 48, gsi: 0, type: 4, flags: 8, u: 16,
  irqchip_irqchip: 16, irqchip_pin: 20, msi_address_lo: 16, msi_address_hi: 20, msi_data: 24,
} as const;

/** struct kvm_irqfd { __u32 fd, gsi, flags, resamplefd; __u8 pad[16]; } */
export const KVM_IRQFD = { size: 32, fd: 0, gsi: 4, flags: 8, resamplefd: 12 } as const;
export const KVM_IRQFD_FLAG_DEASSIGN = 1;
export const KVM_IRQFD_FLAG_RESAMPLE = 2;

/** struct kvm_clock_data { __u64 clock; __u32 flags, pad0; __u64 realtime, host_tsc; __u32 pad[4]; } */
export const KVM_CLOCK_DATA = { size: 48, clock: 0, flags: 8 } as const;

/** struct kvm_ioeventfd { __u64 datamatch, addr; __u32 len; __s32 fd; __u32 flags; __u8 pad[36]; } */
export const KVM_IOEVENTFD = { size: 64, datamatch: 0, addr: 8, len: 16, fd: 20, flags: 24 } as const;
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1;
export const KVM_IOEVENTFD_FLAG_PIO = 2;
export const KVM_IOEVENTFD_FLAG_DEASSIGN = 4;

/** struct kvm_coalesced_mmio_zone { __u64 addr; __u32 size; union { __u32 pad; __u32 pio; }; } */
export const KVM_COALESCED_MMIO_ZONE = { size: 16, addr: 0, zone_size: 8, pio: 12 } as const;
/**
 * The ring of coalesced writes, one page at KVM_CAP_COALESCED_MMIO's page offset in every vCPU's
 * mapping: struct kvm_coalesced_mmio_ring { __u32 first, last; struct kvm_coalesced_mmio
 * coalesced_mmio[]; }, each entry { __u64 phys_addr; __u32 len; union { __u32 pad; __u32 pio; };
 * __u8 data[8]; }. KVM appends at `last`; userspace consumes from `first`.
 */
export const KVM_COALESCED_MMIO_RING = { first: 0, last: 4, entries: 8 } as const;
export const KVM_COALESCED_MMIO = { size: 24, phys_addr: 0, len: 8, pio: 12, data: 16 } as const;

/** struct kvm_lapic_state { char regs[1024]; } with the LVT registers tsvm programs. */
export const KVM_LAPIC_STATE = { size: 1024 } as const;
export const APIC_LVT_LINT0 = 0x350;
export const APIC_LVT_LINT1 = 0x360;

/** struct kvm_run, the page shared with KVM_RUN, and the exit-specific members of its union. */
export const KVM_RUN = {
  request_interrupt_window: 0,
  immediate_exit: 1,
  exit_reason: 8,
  ready_for_interrupt_injection: 12,
  if_flag: 13,
  flags: 14,
  cr8: 16,
  apic_base: 24,
  // union at 32
  io_direction: 32,
  io_size: 33,
  io_port: 34,
  io_count: 36,
  io_data_offset: 40,
  mmio_phys_addr: 32,
  mmio_data: 40,
  mmio_len: 48,
  mmio_is_write: 52,
  fail_entry_hardware_entry_failure_reason: 32,
  fail_entry_cpu: 40,
  internal_suberror: 32,
  internal_ndata: 36,
  internal_data: 40,
  system_event_type: 32,
  system_event_ndata: 36,
  system_event_data: 40,
  hw_hardware_exit_reason: 32,
  ex_exception: 32,
  ex_error_code: 36,
} as const;

/** Writes a kvm_segment at `offset` of `view`. */
export function writeSegment(view: DataView, offset: number, s: Segment): void {
  view.setBigUint64(offset + KVM_SEGMENT.base, s.base, true);
  view.setUint32(offset + KVM_SEGMENT.limit, s.limit, true);
  view.setUint16(offset + KVM_SEGMENT.selector, s.selector, true);
  for (const key of ["type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable"] as const) {
    view.setUint8(offset + KVM_SEGMENT[key], s[key]);
  }
}

/** Reads a kvm_segment at `offset` of `view`. */
export function readSegment(view: DataView, offset: number): Segment {
  return {
    base: view.getBigUint64(offset + KVM_SEGMENT.base, true),
    limit: view.getUint32(offset + KVM_SEGMENT.limit, true),
    selector: view.getUint16(offset + KVM_SEGMENT.selector, true),
    type: view.getUint8(offset + KVM_SEGMENT.type),
    present: view.getUint8(offset + KVM_SEGMENT.present),
    dpl: view.getUint8(offset + KVM_SEGMENT.dpl),
    db: view.getUint8(offset + KVM_SEGMENT.db),
    s: view.getUint8(offset + KVM_SEGMENT.s),
    l: view.getUint8(offset + KVM_SEGMENT.l),
    g: view.getUint8(offset + KVM_SEGMENT.g),
    avl: view.getUint8(offset + KVM_SEGMENT.avl),
    unusable: view.getUint8(offset + KVM_SEGMENT.unusable),
  };
}

/** Decodes a kvm_regs buffer. */
export function decodeRegs(bytes: Uint8Array): Regs {
  const view = new DataView(bytes.buffer, bytes.byteOffset, KVM_REGS.size);
  const regs = {} as Regs;
  for (const name of REGISTER_NAMES) regs[name] = view.getBigUint64(KVM_REGS[name], true);
  return regs;
}

/** Encodes `regs` into a kvm_regs buffer. */
export function encodeRegs(regs: Regs): Uint8Array {
  const bytes = new Uint8Array(KVM_REGS.size);
  const view = new DataView(bytes.buffer);
  for (const name of REGISTER_NAMES) view.setBigUint64(KVM_REGS[name], regs[name], true);
  return bytes;
}

const CONTROL_NAMES = ["cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base"] as const;

/** Decodes a kvm_sregs buffer (the interrupt bitmap is left out). */
export function decodeSregs(bytes: Uint8Array): Sregs {
  const view = new DataView(bytes.buffer, bytes.byteOffset, KVM_SREGS.size);
  const sregs = {} as Sregs;
  for (const name of SEGMENT_NAMES) sregs[name] = readSegment(view, KVM_SREGS[name]);
  for (const name of ["gdt", "idt"] as const) {
    sregs[name] = {
      base: view.getBigUint64(KVM_SREGS[name] + KVM_DTABLE.base, true),
      limit: view.getUint16(KVM_SREGS[name] + KVM_DTABLE.limit, true),
    };
  }
  for (const name of CONTROL_NAMES) sregs[name] = view.getBigUint64(KVM_SREGS[name], true);
  return sregs;
}

/** Writes `sregs` over a kvm_sregs buffer, keeping its interrupt bitmap. */
export function encodeSregsInto(bytes: Uint8Array, sregs: Sregs): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, KVM_SREGS.size);
  for (const name of SEGMENT_NAMES) writeSegment(view, KVM_SREGS[name], sregs[name]);
  for (const name of ["gdt", "idt"] as const) {
    view.setBigUint64(KVM_SREGS[name] + KVM_DTABLE.base, sregs[name].base, true);
    view.setUint16(KVM_SREGS[name] + KVM_DTABLE.limit, sregs[name].limit, true);
  }
  for (const name of CONTROL_NAMES) view.setBigUint64(KVM_SREGS[name], sregs[name], true);
}

/** Encodes a kvm_cpuid2 with its entries. */
export function encodeCpuid(entries: readonly CpuidEntry[]): Uint8Array {
  const bytes = new Uint8Array(KVM_CPUID2.size + entries.length * KVM_CPUID_ENTRY2.size);
  const view = new DataView(bytes.buffer);
  view.setUint32(KVM_CPUID2.nent, entries.length, true);
  entries.forEach((e, i) => {
    const at = KVM_CPUID2.entries + i * KVM_CPUID_ENTRY2.size;
    for (const key of ["function", "index", "flags", "eax", "ebx", "ecx", "edx"] as const) {
      view.setUint32(at + KVM_CPUID_ENTRY2[key], e[key] >>> 0, true);
    }
  });
  return bytes;
}

/** Decodes the entries of a kvm_cpuid2 buffer. */
export function decodeCpuid(bytes: Uint8Array): CpuidEntry[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = view.getUint32(KVM_CPUID2.nent, true);
  const entries: CpuidEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = KVM_CPUID2.entries + i * KVM_CPUID_ENTRY2.size;
    const read = (key: keyof typeof KVM_CPUID_ENTRY2): number => view.getUint32(at + KVM_CPUID_ENTRY2[key], true);
    entries.push({
      function: read("function"), index: read("index"), flags: read("flags"),
      eax: read("eax"), ebx: read("ebx"), ecx: read("ecx"), edx: read("edx"),
    });
  }
  return entries;
}

/** Encodes a kvm_msrs with its entries. */
export function encodeMsrs(entries: readonly MsrEntry[]): Uint8Array {
  const bytes = new Uint8Array(KVM_MSRS.size + entries.length * KVM_MSR_ENTRY.size);
  const view = new DataView(bytes.buffer);
  view.setUint32(KVM_MSRS.nmsrs, entries.length, true);
  entries.forEach((e, i) => {
    const at = KVM_MSRS.entries + i * KVM_MSR_ENTRY.size;
    view.setUint32(at + KVM_MSR_ENTRY.index, e.index, true);
    view.setBigUint64(at + KVM_MSR_ENTRY.data, e.data, true);
  });
  return bytes;
}

/** Encodes a kvm_userspace_memory_region. */
export function encodeMemoryRegion(slot: number, guestPhysAddr: number, size: number, hostAddr: number): Uint8Array {
  const bytes = new Uint8Array(KVM_USERSPACE_MEMORY_REGION.size);
  const view = new DataView(bytes.buffer);
  view.setUint32(KVM_USERSPACE_MEMORY_REGION.slot, slot, true);
  view.setBigUint64(KVM_USERSPACE_MEMORY_REGION.guest_phys_addr, BigInt(guestPhysAddr), true);
  view.setBigUint64(KVM_USERSPACE_MEMORY_REGION.memory_size, BigInt(size), true);
  view.setBigUint64(KVM_USERSPACE_MEMORY_REGION.userspace_addr, BigInt(hostAddr), true);
  return bytes;
}

/** Every layout above, by C struct name, for the layout test. */
export const LAYOUTS = {
  kvm_regs: KVM_REGS,
  kvm_segment: KVM_SEGMENT,
  kvm_dtable: KVM_DTABLE,
  kvm_sregs: KVM_SREGS,
  kvm_fpu: KVM_FPU,
  kvm_cpuid2: KVM_CPUID2,
  kvm_cpuid_entry2: KVM_CPUID_ENTRY2,
  kvm_msrs: KVM_MSRS,
  kvm_msr_entry: KVM_MSR_ENTRY,
  kvm_userspace_memory_region: KVM_USERSPACE_MEMORY_REGION,
  kvm_pit_config: KVM_PIT_CONFIG,
  kvm_irq_level: KVM_IRQ_LEVEL,
  kvm_irq_routing: KVM_IRQ_ROUTING,
  kvm_irq_routing_entry: KVM_IRQ_ROUTING_ENTRY,
  kvm_lapic_state: KVM_LAPIC_STATE,
  kvm_irqfd: KVM_IRQFD,
  kvm_ioeventfd: KVM_IOEVENTFD,
  kvm_coalesced_mmio_zone: KVM_COALESCED_MMIO_ZONE,
  kvm_coalesced_mmio: KVM_COALESCED_MMIO,
  kvm_coalesced_mmio_ring: KVM_COALESCED_MMIO_RING,
  kvm_clock_data: KVM_CLOCK_DATA,
} as const;
