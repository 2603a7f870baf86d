import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { KVM_CAP, KVM_EXIT, KVM_IOCTL } from "../../src/kvm/kvm_sys.ts";
import { KVM_RUN, LAYOUTS } from "../../src/kvm/kvm_structs.ts";
import { compileAndRun } from "../support/cc.ts";

const facts = compileAndRun(join(import.meta.dir, "../support/kvm_layout.c"));
const structs = new Map<string, number>();
const constants = new Map<string, number>();
for (const line of facts.trim().split("\n")) {
  const [kind, a, b, c] = line.split(" ");
  if (kind === "struct") structs.set(`${a}.${b}`, Number(c));
  else constants.set(a!, Number(b));
}

describe("KVM struct layouts match gcc", () => {
  for (const [name, layout] of Object.entries(LAYOUTS)) {
    test(`${name} size and offsets`, () => {
      const ours: Record<string, number | undefined> = Object.fromEntries(Object.entries(layout));
      const gccs = Object.fromEntries(Object.keys(layout).map((k) => [k, structs.get(`${name}.${k}`)]));
      expect(ours).toEqual(gccs);
    });
  }
  test("kvm_run offsets", () => {
    const gccs = Object.fromEntries(Object.keys(KVM_RUN).map((k) => [k, structs.get(`kvm_run.${k}`)]));
    expect({ ...KVM_RUN } as Record<string, number | undefined>).toEqual(gccs);
  });
});

describe("KVM constants match <linux/kvm.h>", () => {
  test("ioctl request numbers", () => {
    const gccs = Object.fromEntries(Object.keys(KVM_IOCTL).map((k) => [k, constants.get(k)]));
    expect({ ...KVM_IOCTL } as Record<string, number | undefined>).toEqual(gccs);
  });
  test("capability numbers", () => {
    const gccs = Object.fromEntries(Object.keys(KVM_CAP).map((k) => [k, constants.get(k)]));
    expect({ ...KVM_CAP } as Record<string, number | undefined>).toEqual(gccs);
  });
  test("exit reasons tsvm handles", () => {
    const checked = ["KVM_EXIT_IO", "KVM_EXIT_MMIO", "KVM_EXIT_SHUTDOWN", "KVM_EXIT_FAIL_ENTRY", "KVM_EXIT_INTERNAL_ERROR", "KVM_EXIT_SYSTEM_EVENT", "KVM_EXIT_HLT", "KVM_EXIT_INTR"] as const;
    expect(Object.fromEntries(checked.map((k): [string, number | undefined] => [k, KVM_EXIT[k]]))).toEqual(Object.fromEntries(checked.map((k) => [k, constants.get(k)])));
  });
});
