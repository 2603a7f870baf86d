// policy.ts - seccomp policy files in minijail's syntax, parsed into rules per system call.
//
//   # comment
//   @include common_device.policy
//   read: 1                                   always allowed
//   openat: return 2                          fails with errno 2 (ENOENT)
//   mmap: arg2 in ~PROT_EXEC                  allowed when the expression holds, else the default action
//   ioctl: arg1 == TUNSETOFFLOAD || arg1 == TUNSETVNETHDRSZ
//   fcntl: arg1 == F_GETFL; return 22         when it does not hold: errno 22
// Expressions: argN OP VALUE joined by && (binds tighter) and ||; OP is ==, !=, <, <=, >, >=,
// & (some bit set) or `in` (no bits outside the mask). VALUE: numbers, named constants, and `|`
// or `~` of them.
import { SYSCALLS_X86_64 } from "./syscalls_x86_64.ts";
import { POLICY_CONSTANTS } from "./policy_constants.ts";

export type Comparison = "==" | "!=" | "<" | "<=" | ">" | ">=" | "&" | "in";
export type Atom = { readonly arg: number; readonly op: Comparison; readonly value: bigint };
/** An OR of ANDs of atoms. */
export type Expression = readonly (readonly Atom[])[];
export type Rule =
  | { readonly kind: "allow" }
  | { readonly kind: "errno"; readonly errno: number }
  | { readonly kind: "expression"; readonly expression: Expression; readonly elseErrno: number | null };
export type Policy = ReadonlyMap<number, Rule>;

/** A policy that cannot be used; the message names the file and line. */
export class PolicyError extends Error {
  override readonly name = "PolicyError";
}

/** bounds @include nesting so a file including itself cannot loop */
const MAX_INCLUDE_DEPTH = 8;
const MAX_ERRNO = 4095;
const U64_MASK = (1n << 64n) - 1n;

/** Reads policy files by name (the embedded set, or a --seccomp-policy-dir). */
export type PolicySource = (name: string) => string | null;

/** Parses policy `name` from `source`, following @include lines. */
export function parsePolicy(name: string, source: PolicySource): Policy {
  const rules = new Map<number, Rule>();
  parseInto(rules, name, source, 0);
  return rules;
}

function parseInto(rules: Map<number, Rule>, name: string, source: PolicySource, depth: number): void {
  const text = source(name);
  if (text === null) throw new PolicyError(`${name}: no such policy file`);
  text.split("\n").forEach((raw, index) => {
    const where = `${name}:${index + 1}`;
    const line = raw.replace(/#.*$/, "").trim();
    if (line === "") return;
    if (line.startsWith("@include")) {
      const target = line.slice("@include".length).trim();
      if (!target) throw new PolicyError(`${where}: @include needs a file name`);
      if (depth >= MAX_INCLUDE_DEPTH) throw new PolicyError(`${where}: @include nested more than ${MAX_INCLUDE_DEPTH} deep`);
      parseInto(rules, target.replace(/^.*\//, ""), source, depth + 1);
      return;
    }
    const colon = line.indexOf(":");
    if (colon < 0) throw new PolicyError(`${where}: expected "syscall: rule"`);
    const syscall = line.slice(0, colon).trim();
    const nr = SYSCALLS_X86_64[syscall];
    if (nr === undefined) throw new PolicyError(`${where}: unknown system call "${syscall}"`);
    if (rules.has(nr)) throw new PolicyError(`${where}: "${syscall}" already has a rule`);
    rules.set(nr, parseRule(line.slice(colon + 1).trim(), where));
  });
}

function parseRule(text: string, where: string): Rule {
  if (text === "1") return { kind: "allow" };
  const ret = /^return\s+(\S+)$/.exec(text);
  if (ret) return { kind: "errno", errno: parseErrno(ret[1]!, where) };
  const [exprText, elseText, extra] = text.split(";").map((t) => t.trim());
  if (extra !== undefined) throw new PolicyError(`${where}: more than one ";"`);
  let elseErrno: number | null = null;
  if (elseText !== undefined) {
    const m = /^return\s+(\S+)$/.exec(elseText);
    if (!m) throw new PolicyError(`${where}: expected "; return ERRNO" after the expression`);
    elseErrno = parseErrno(m[1]!, where);
  }
  if (!exprText) throw new PolicyError(`${where}: empty rule`);
  const expression = exprText.split("||").map((conjunct) => conjunct.split("&&").map((atom) => parseAtom(atom.trim(), where)));
  return { kind: "expression", expression, elseErrno };
}

function parseErrno(text: string, where: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0 || n > MAX_ERRNO) throw new PolicyError(`${where}: errno "${text}" is not 0-${MAX_ERRNO}`);
  return n;
}

const ATOM = /^arg([0-5])\s*(==|!=|<=|>=|<|>|&|in)\s*(.+)$/;

function parseAtom(text: string, where: string): Atom {
  const m = ATOM.exec(text);
  if (!m) throw new PolicyError(`${where}: cannot read "${text}" (expected argN OP VALUE)`);
  return { arg: Number(m[1]), op: m[2] as Comparison, value: parseValue(m[3]!.trim(), where) };
}

/** Evaluates a value: numbers and constants joined by |, each optionally negated with ~. */
export function parseValue(text: string, where: string): bigint {
  let value = 0n;
  for (const part of text.split("|").map((p) => p.trim())) {
    const negate = part.startsWith("~");
    const token = negate ? part.slice(1).trim() : part;
    let v: bigint;
    if (/^(0x[0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.test(token)) {
      v = token.startsWith("0x") ? BigInt(token) : token.length > 1 && token.startsWith("0") ? BigInt(`0o${token.slice(1)}`) : BigInt(token);
    } else if (token in POLICY_CONSTANTS) {
      v = POLICY_CONSTANTS[token]!;
    } else {
      throw new PolicyError(`${where}: unknown constant "${token}"`);
    }
    if (v > U64_MASK) throw new PolicyError(`${where}: ${token} does not fit 64 bits`);
    value |= negate ? ~v & U64_MASK : v;
  }
  return value;
}
