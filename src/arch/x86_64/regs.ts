// regs.ts - the boot state of a vCPU for the Linux 64-bit boot protocol: registers, segments, MSRs, FPU, LAPIC.
import { type GuestMemory, guestAddress } from "../../memory/mod.ts";
import { APIC_LVT_LINT0, APIC_LVT_LINT1, REGISTER_NAMES, type MsrEntry, type Regs } from "../../kvm/kvm_structs.ts";
import type { Vcpu } from "../../kvm/vcpu.ts";
import { BOOT_CS, BOOT_DS, BOOT_GDT, BOOT_TSS, segmentFromEntry } from "./gdt.ts";
import { BOOT_STACK_POINTER, GDT_ADDRESS } from "./layout.ts";

/** Control register and EFER bits (Intel SDM vol. 3, 2.5). */
const X86_CR0_PE = 0x1n;
const X86_CR0_ET = 0x10n;
const X86_CR0_PG = 0x8000_0000n;
const X86_CR4_PAE = 0x20n;
const EFER_LME = 0x100n;
const EFER_LMA = 0x400n;
/** IDT placed right after the GDT, empty: an exception before the kernel loads its own is a triple fault. */
const IDT_ADDRESS = guestAddress(GDT_ADDRESS + BOOT_GDT.length * 8);

/** MSR numbers (Intel SDM vol. 4). */
export const MSR = {
  MSR_IA32_SYSENTER_CS: 0x174,
  MSR_IA32_SYSENTER_ESP: 0x175,
  MSR_IA32_SYSENTER_EIP: 0x176,
  MSR_IA32_MISC_ENABLE: 0x1a0,
  MSR_MTRR_DEF_TYPE: 0x2ff,
  MSR_STAR: 0xc0000081,
  MSR_LSTAR: 0xc0000082,
  MSR_CSTAR: 0xc0000083,
  MSR_SYSCALL_MASK: 0xc0000084,
  MSR_KERNEL_GS_BASE: 0xc0000102,
  MSR_IA32_TSC: 0x10,
} as const;
const MISC_ENABLE_FAST_STRING = 1n;
/** MTRRs enabled (bit 11), default memory type write-back (6). */
const MTRR_DEF_TYPE_ENABLED_WB = (1n << 11n) | 6n;
/** FPU control word and MXCSR after FNINIT / reset. */
const FPU_CONTROL_WORD = 0x37f;
const MXCSR_DEFAULT = 0x1f80;
/** LVT delivery modes (bits 8-10). */
const APIC_MODE_NMI = 0x4;
const APIC_MODE_EXTINT = 0x7;

/** Writes the boot GDT and empty IDT into guest memory. */
export function writeGdt(memory: GuestMemory): void {
  BOOT_GDT.forEach((entry, i) => memory.writeU64(guestAddress(GDT_ADDRESS + i * 8), entry));
  memory.writeU64(IDT_ADDRESS, 0n);
}

/** Puts the boot vCPU in 64-bit mode with paging on `cr3`, the boot segments, and interrupts off. */
export function setupLongMode(vcpu: Vcpu, cr3: number): void {
  const sregs = vcpu.getSregs();
  const code = segmentFromEntry(BOOT_GDT[BOOT_CS / 8]!, BOOT_CS);
  const data = segmentFromEntry(BOOT_GDT[BOOT_DS / 8]!, BOOT_DS);
  const tss = segmentFromEntry(BOOT_GDT[BOOT_TSS / 8]!, BOOT_TSS);
  sregs.cs = code;
  sregs.ds = data;
  sregs.es = data;
  sregs.fs = data;
  sregs.gs = data;
  sregs.ss = data;
  sregs.tr = tss;
  sregs.gdt = { base: BigInt(GDT_ADDRESS), limit: BOOT_GDT.length * 8 - 1 };
  sregs.idt = { base: BigInt(IDT_ADDRESS), limit: 7 };
  sregs.cr0 = sregs.cr0 | X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
  sregs.cr3 = BigInt(cr3);
  sregs.cr4 = sregs.cr4 | X86_CR4_PAE;
  sregs.efer = sregs.efer | EFER_LME | EFER_LMA;
  vcpu.setSregs(sregs);
}

/** Sets the general registers: RIP at the kernel entry, RSI at the zero page (boot.rst, 64-bit protocol). */
export function setupBootRegs(vcpu: Vcpu, entry: number, zeroPage: number): void {
  const regs = Object.fromEntries(REGISTER_NAMES.map((n) => [n, 0n])) as Regs;
  regs.rip = BigInt(entry);
  regs.rsi = BigInt(zeroPage);
  regs.rsp = BigInt(BOOT_STACK_POINTER);
  regs.rbp = BigInt(BOOT_STACK_POINTER);
  regs.rflags = 2n; // bit 1 is reserved and always set
  vcpu.setRegs(regs);
}

/** The MSR values every vCPU starts with. */
export function bootMsrs(): MsrEntry[] {
  return [
    { index: MSR.MSR_IA32_SYSENTER_CS, data: 0n },
    { index: MSR.MSR_IA32_SYSENTER_ESP, data: 0n },
    { index: MSR.MSR_IA32_SYSENTER_EIP, data: 0n },
    { index: MSR.MSR_STAR, data: 0n },
    { index: MSR.MSR_CSTAR, data: 0n },
    { index: MSR.MSR_KERNEL_GS_BASE, data: 0n },
    { index: MSR.MSR_SYSCALL_MASK, data: 0n },
    { index: MSR.MSR_LSTAR, data: 0n },
    { index: MSR.MSR_IA32_TSC, data: 0n },
    { index: MSR.MSR_IA32_MISC_ENABLE, data: MISC_ENABLE_FAST_STRING },
    { index: MSR.MSR_MTRR_DEF_TYPE, data: MTRR_DEF_TYPE_ENABLED_WB },
  ];
}

/** Sets MSRs, FPU and the LAPIC's LINT0 (ExtINT, from the PIC) and LINT1 (NMI) on any vCPU. */
export function setupCommonState(vcpu: Vcpu): void {
  vcpu.setMsrs(bootMsrs());
  vcpu.setFpu(FPU_CONTROL_WORD, MXCSR_DEFAULT);
  vcpu.updateLapic((regs) => {
    const lvt = (offset: number, mode: number): void => {
      regs.setUint32(offset, (regs.getUint32(offset, true) & ~0x700) | (mode << 8), true);
    };
    lvt(APIC_LVT_LINT0, APIC_MODE_EXTINT);
    lvt(APIC_LVT_LINT1, APIC_MODE_NMI);
  });
}
