import { describe, expect, test } from "bun:test";
import { filterCpuid } from "../../src/kvm/cpuid.ts";
import type { CpuidEntry } from "../../src/kvm/kvm_structs.ts";

const entry = (fn: number, index = 0, regs: Partial<CpuidEntry> = {}): CpuidEntry => ({ function: fn, index, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0, ...regs });
const AMD = entry(0, 0, { ebx: 0x68747541 });

describe("filterCpuid", () => {
  test("leaf 1 carries the APIC id, CPU count and hypervisor bit", () => {
    const [, leaf1] = filterCpuid([AMD, entry(1)], 3, 4);
    expect({ apic: leaf1!.ebx >>> 24, count: (leaf1!.ebx >> 16) & 0xff, hypervisor: leaf1!.ecx >>> 31, htt: (leaf1!.edx >> 28) & 1 }).toEqual({ apic: 3, count: 4, hypervisor: 1, htt: 1 });
  });

  test("leaf 0xb describes one thread per core and cpuCount cores", () => {
    const out = filterCpuid([entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)], 2, 4);
    expect(out.map((e) => [e.eax, e.ebx, e.ecx, e.edx])).toEqual([[0, 1, 0x100, 2], [2, 4, 0x201, 2], [0, 0, 2, 2]]);
  });

  test("AMD topology leaves give each vCPU its own id", () => {
    const out = filterCpuid([AMD, entry(0x8000001e), entry(0x80000008)], 1, 2);
    expect([out[1]!.eax, out[2]!.ecx & 0xff]).toEqual([1, 1]);
  });

  test("leaves it does not know pass through unchanged", () => {
    const kvm = entry(0x40000000, 0, { eax: 0x40000001, ebx: 0x4b4d564b });
    expect(filterCpuid([kvm], 0, 1)).toEqual([kvm]);
  });
});
