// vcpu_dump.ts - formats a vCPU's registers for error reports, in the layout of QEMU's register dump.
import type { Regs, Segment, Sregs } from "../kvm/kvm_structs.ts";

const h = (value: bigint | number, width: number): string => value.toString(16).padStart(width, "0");

/** Packs a segment's attribute bits the way a descriptor holds them (bits 8-23 of the high dword). */
function flags(s: Segment): number {
  return ((s.type | (s.s << 4) | (s.dpl << 5) | (s.present << 7)) << 8) |
    ((s.avl << 20) | (s.l << 21) | (s.db << 22) | (s.g << 23));
}

/** Returns a multi-line dump of general registers, segments, descriptor tables and control registers. */
export function formatRegisters(regs: Regs, sregs: Sregs): string {
  const lines = [
    `RAX=${h(regs.rax, 16)} RBX=${h(regs.rbx, 16)} RCX=${h(regs.rcx, 16)} RDX=${h(regs.rdx, 16)}`,
    `RSI=${h(regs.rsi, 16)} RDI=${h(regs.rdi, 16)} RBP=${h(regs.rbp, 16)} RSP=${h(regs.rsp, 16)}`,
    `R8 =${h(regs.r8, 16)} R9 =${h(regs.r9, 16)} R10=${h(regs.r10, 16)} R11=${h(regs.r11, 16)}`,
    `R12=${h(regs.r12, 16)} R13=${h(regs.r13, 16)} R14=${h(regs.r14, 16)} R15=${h(regs.r15, 16)}`,
    `RIP=${h(regs.rip, 16)} RFL=${h(regs.rflags, 8)} CPL=${sregs.cs.dpl}`,
  ];
  for (const name of ["es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr"] as const) {
    const s = sregs[name];
    lines.push(`${name.toUpperCase().padEnd(3)}=${h(s.selector, 4)} ${h(s.base, 16)} ${h(s.limit, 8)} ${h(flags(s), 8)}`);
  }
  lines.push(`GDT=     ${h(sregs.gdt.base, 16)} ${h(sregs.gdt.limit, 8)}`);
  lines.push(`IDT=     ${h(sregs.idt.base, 16)} ${h(sregs.idt.limit, 8)}`);
  lines.push(`CR0=${h(sregs.cr0, 8)} CR2=${h(sregs.cr2, 16)} CR3=${h(sregs.cr3, 16)} CR4=${h(sregs.cr4, 8)}`);
  lines.push(`EFER=${h(sregs.efer, 16)} APIC_BASE=${h(sregs.apic_base, 16)}`);
  return lines.join("\n");
}
