// bpf.ts - compiles a seccomp Policy to a classic BPF program (struct sock_filter[]) for x86-64.
//
// Layout: check the architecture (anything but x86-64, and x32 system calls, is killed), then one
// block per system call in the policy: "nr == N? else skip the block", the block returning ALLOW,
// ERRNO or running the rule's expression, and at the end the default action (kill the process, or
// log when --seccomp-log-failures). 64-bit arguments are compared as two 32-bit words.
import type { Atom, Policy, Rule } from "./policy.ts";

export const SECCOMP_RET = {
  KILL_PROCESS: 0x80000000,
  ERRNO: 0x00050000,
  LOG: 0x7ffc0000,
  ALLOW: 0x7fff0000,
} as const;
const AUDIT_ARCH_X86_64 = 0xc000003e;
const X32_SYSCALL_BIT = 0x40000000;
/** struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; */
const DATA_NR = 0;
const DATA_ARCH = 4;
const DATA_ARGS = 16;
/** BPF opcodes (linux/bpf_common.h). */
const BPF_LD_W_ABS = 0x20;
const BPF_JEQ_K = 0x15;
const BPF_JGT_K = 0x25;
const BPF_JGE_K = 0x35;
const BPF_JSET_K = 0x45;
const BPF_JA = 0x05;
const BPF_RET_K = 0x06;
const SOCK_FILTER_SIZE = 8;
/** The kernel refuses longer programs (BPF_MAXINSNS). */
export const BPF_MAXINSNS = 4096;

/** A label, or null for "the next instruction". */
type Target = string | null;
type Insn = { code: number; k: number; jt: Target; jf: Target } | { label: string };

/** The action taken for calls the policy does not allow. */
export type DefaultAction = "kill" | "log";

/** Compiles `policy` into the bytes of a sock_filter array. */
export function compilePolicy(policy: Policy, defaultAction: DefaultAction = "kill"): Uint8Array {
  const fallback = defaultAction === "log" ? SECCOMP_RET.LOG : SECCOMP_RET.KILL_PROCESS;
  const p: Insn[] = [];
  const op = (code: number, k: number, jt: Target = null, jf: Target = null): void => {
    p.push({ code, k, jt, jf });
  };
  const label = (name: string): void => {
    p.push({ label: name });
  };
  // The kill for a foreign architecture or an x32 call sits right after these checks: conditional
  // jumps reach 255 instructions at most, and a policy's blocks are longer than that in all.
  op(BPF_LD_W_ABS, DATA_ARCH);
  op(BPF_JEQ_K, AUDIT_ARCH_X86_64, null, "kill");
  op(BPF_LD_W_ABS, DATA_NR);
  op(BPF_JGE_K, X32_SYSCALL_BIT, "kill", "calls");
  label("kill");
  op(BPF_RET_K, SECCOMP_RET.KILL_PROCESS);
  label("calls");
  let n = 0;
  for (const [nr, rule] of [...policy.entries()].sort((a, b) => a[0] - b[0])) {
    const next = `next${n++}`;
    op(BPF_LD_W_ABS, DATA_NR);
    op(BPF_JEQ_K, nr, null, next);
    emitRule(p, op, label, rule, `r${n}`, fallback);
    label(next);
  }
  op(BPF_RET_K, fallback);
  return assemble(p);
}

function emitRule(
  _p: Insn[], op: (code: number, k: number, jt?: Target, jf?: Target) => void, label: (name: string) => void,
  rule: Rule, prefix: string, fallback: number,
): void {
  if (rule.kind === "allow") return op(BPF_RET_K, SECCOMP_RET.ALLOW);
  if (rule.kind === "errno") return op(BPF_RET_K, SECCOMP_RET.ERRNO | rule.errno);
  const allow = `${prefix}allow`;
  const deny = `${prefix}deny`;
  rule.expression.forEach((conjunct, c) => {
    const fail = c === rule.expression.length - 1 ? deny : `${prefix}or${c + 1}`;
    conjunct.forEach((atom, a) => emitAtom(op, label, atom, fail, `${prefix}c${c}a${a}`));
    op(BPF_JA, 0, allow, null);
    if (c < rule.expression.length - 1) label(fail);
  });
  label(allow);
  op(BPF_RET_K, SECCOMP_RET.ALLOW);
  label(deny);
  op(BPF_RET_K, rule.elseErrno === null ? fallback : SECCOMP_RET.ERRNO | rule.elseErrno);
}

/** Emits code that falls through when `atom` holds and jumps to `fail` when it does not. */
function emitAtom(op: (code: number, k: number, jt?: Target, jf?: Target) => void, label: (name: string) => void, atom: Atom, fail: string, id: string): void {
  const lo = Number(atom.value & 0xffffffffn);
  const hi = Number((atom.value >> 32n) & 0xffffffffn);
  const loadLo = (): void => op(BPF_LD_W_ABS, DATA_ARGS + atom.arg * 8);
  const loadHi = (): void => op(BPF_LD_W_ABS, DATA_ARGS + atom.arg * 8 + 4);
  const ok = `${id}ok`;
  switch (atom.op) {
    case "==":
      loadHi(); op(BPF_JEQ_K, hi, null, fail);
      loadLo(); op(BPF_JEQ_K, lo, null, fail);
      return;
    case "!=":
      loadHi(); op(BPF_JEQ_K, hi, null, ok);
      loadLo(); op(BPF_JEQ_K, lo, fail, null);
      break;
    case "&":
      loadHi(); op(BPF_JSET_K, hi, ok, null);
      loadLo(); op(BPF_JSET_K, lo, null, fail);
      break;
    case "in":
      loadHi(); op(BPF_JSET_K, ~hi >>> 0, fail, null);
      loadLo(); op(BPF_JSET_K, ~lo >>> 0, fail, null);
      return;
    case ">":
    case ">=":
      loadHi(); op(BPF_JGT_K, hi, ok, null); op(BPF_JEQ_K, hi, null, fail);
      loadLo(); op(atom.op === ">" ? BPF_JGT_K : BPF_JGE_K, lo, null, fail);
      break;
    case "<":
    case "<=":
      // a < v  <=>  !(a >= v);  a <= v  <=>  !(a > v)
      loadHi(); op(BPF_JGT_K, hi, fail, null); op(BPF_JEQ_K, hi, null, ok);
      loadLo(); op(atom.op === "<" ? BPF_JGE_K : BPF_JGT_K, lo, fail, null);
      break;
  }
  label(ok);
}

/** Resolves labels into relative jumps and packs the program. */
function assemble(program: Insn[]): Uint8Array {
  const positions = new Map<string, number>();
  const insns: Exclude<Insn, { label: string }>[] = [];
  for (const i of program) {
    if ("label" in i) positions.set(i.label, insns.length);
    else insns.push(i);
  }
  if (insns.length > BPF_MAXINSNS) throw new Error(`seccomp program has ${insns.length} instructions; the kernel takes ${BPF_MAXINSNS}`);
  const out = new Uint8Array(insns.length * SOCK_FILTER_SIZE);
  const v = new DataView(out.buffer);
  insns.forEach((insn, index) => {
    const offset = (target: Target): number => {
      if (target === null) return 0;
      const to = positions.get(target);
      if (to === undefined) throw new Error(`seccomp assembler: undefined label ${target}`);
      return to - index - 1;
    };
    let { k } = insn;
    let jt = 0;
    let jf = 0;
    if (insn.code === BPF_JA) {
      k = offset(insn.jt);
    } else if (insn.code !== BPF_LD_W_ABS && insn.code !== BPF_RET_K) {
      jt = offset(insn.jt);
      jf = offset(insn.jf);
      if (jt > 255 || jf > 255) throw new Error("seccomp rule is too long for an 8-bit jump");
    }
    const at = index * SOCK_FILTER_SIZE;
    v.setUint16(at, insn.code, true);
    v.setUint8(at + 2, jt);
    v.setUint8(at + 3, jf);
    v.setUint32(at + 4, k >>> 0, true);
  });
  return out;
}
