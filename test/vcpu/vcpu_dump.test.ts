import { expect, test } from "bun:test";
import { BOOT_GDT, segmentFromEntry } from "../../src/arch/x86_64/gdt.ts";
import { REGISTER_NAMES, type Regs, type Sregs } from "../../src/kvm/kvm_structs.ts";
import { formatRegisters } from "../../src/vcpu/vcpu_dump.ts";

test("formatRegisters prints RIP, segments and control registers like QEMU", () => {
  const regs = Object.fromEntries(REGISTER_NAMES.map((n) => [n, 0n])) as Regs;
  regs.rip = 0x100f39n;
  const code = segmentFromEntry(BOOT_GDT[2]!, 0x10);
  const data = segmentFromEntry(BOOT_GDT[3]!, 0x18);
  const sregs: Sregs = {
    cs: code, ds: data, es: data, fs: data, gs: data, ss: data, tr: segmentFromEntry(BOOT_GDT[4]!, 0x20), ldt: data,
    gdt: { base: 0x500n, limit: 0x27 }, idt: { base: 0n, limit: 0 },
    cr0: 0x80000011n, cr2: 0n, cr3: 0x9000n, cr4: 0x20n, cr8: 0n, efer: 0x500n, apic_base: 0xfee00900n,
  };
  const text = formatRegisters(regs, sregs);
  expect(text).toContain("RIP=0000000000100f39 RFL=00000000 CPL=0");
  expect(text).toContain("CS =0010 0000000000000000 ffffffff 00a09b00");
  expect(text).toContain("CR0=80000011 CR2=0000000000000000 CR3=0000000000009000 CR4=00000020");
  expect(text).toContain("EFER=0000000000000500");
});
