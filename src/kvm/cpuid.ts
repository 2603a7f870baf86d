// cpuid.ts - derives each vCPU's CPUID from what KVM supports: APIC ids, topology, hypervisor bit.
import type { CpuidEntry } from "./kvm_structs.ts";

const HYPERVISOR_BIT = 1 << 31; // leaf 1 ECX: running under a hypervisor
const HTT_BIT = 1 << 28; // leaf 1 EDX: more than one logical processor per package
const CLFLUSH_LINE_SIZE = 8; // leaf 1 EBX[15:8]: 8 quadwords = 64-byte cache lines
const LEVEL_TYPE_SMT = 1;
const LEVEL_TYPE_CORE = 2;

/** Returns the number of APIC-id bits needed to number `count` CPUs. */
function idBits(count: number): number {
  return count <= 1 ? 0 : Math.ceil(Math.log2(count));
}

/** Returns whether the host CPU vendor (leaf 0 signature) is AMD or Hygon. */
function isAmd(entries: readonly CpuidEntry[]): boolean {
  const leaf0 = entries.find((e) => e.function === 0);
  // "AuthenticAMD": ebx "Auth", "HygonGenuine": ebx "Hygo"
  return leaf0 !== undefined && (leaf0.ebx === 0x68747541 || leaf0.ebx === 0x6f677948);
}

/**
 * Returns the CPUID for vCPU `cpuId` of `cpuCount`: one package of `cpuCount` single-thread cores,
 * APIC id = vCPU id, the hypervisor bit set, and KVM's paravirtual leaves (0x4000_0000..) kept.
 */
export function filterCpuid(supported: readonly CpuidEntry[], cpuId: number, cpuCount: number): CpuidEntry[] {
  const amd = isAmd(supported);
  const coreShift = idBits(cpuCount);
  return supported.map((entry) => {
    const e = { ...entry };
    switch (e.function) {
      case 0x1:
        e.ebx = ((cpuId << 24) | ((cpuCount & 0xff) << 16) | (CLFLUSH_LINE_SIZE << 8) | (e.ebx & 0xff)) >>> 0;
        e.ecx = (e.ecx | HYPERVISOR_BIT) >>> 0;
        e.edx = cpuCount > 1 ? (e.edx | HTT_BIT) >>> 0 : (e.edx & ~HTT_BIT) >>> 0;
        break;
      case 0x4: {
        // Deterministic cache parameters: EAX[31:26] cores per package - 1; [25:14] CPUs sharing the cache - 1.
        const level = (e.eax >> 5) & 0x7;
        const sharing = level >= 3 ? cpuCount - 1 : 0;
        e.eax = ((e.eax & 0x3fff) | (sharing << 14) | ((cpuCount - 1) << 26)) >>> 0;
        break;
      }
      case 0xb:
      case 0x1f:
        if (e.index === 0) {
          Object.assign(e, { eax: 0, ebx: 1, ecx: (LEVEL_TYPE_SMT << 8) | 0 });
        } else if (e.index === 1) {
          Object.assign(e, { eax: coreShift, ebx: cpuCount, ecx: (LEVEL_TYPE_CORE << 8) | 1 });
        } else {
          Object.assign(e, { eax: 0, ebx: 0, ecx: e.index });
        }
        e.edx = cpuId;
        break;
      case 0x80000008:
        if (amd) e.ecx = ((e.ecx & ~0xf0ff) | (coreShift << 12) | (cpuCount - 1)) >>> 0;
        break;
      case 0x8000001e:
        if (amd) Object.assign(e, { eax: cpuId, ebx: cpuId & 0xff, ecx: 0 });
        break;
    }
    return e;
  });
}
