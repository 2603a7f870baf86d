import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { compilePolicy } from "../../src/sandbox/bpf.ts";
import { parsePolicy, type PolicySource } from "../../src/sandbox/policy.ts";
import { POLICY_CONSTANTS } from "../../src/sandbox/policy_constants.ts";
import { SYSCALLS_X86_64 } from "../../src/sandbox/syscalls_x86_64.ts";
import { tempDir } from "../support/tsvm.ts";

const files = (map: Record<string, string>): PolicySource => (name) => map[name] ?? null;

describe("parsePolicy", () => {
  test("reads allow, return and expression rules, and follows @include", () => {
    const policy = parsePolicy("dev.policy", files({
      "common.policy": "# the basics\nread: 1\nopenat: return 2\n",
      "dev.policy": "@include /usr/share/policy/common.policy\nmmap: arg2 in ~PROT_EXEC\nioctl: arg1 == TUNSETOFFLOAD || arg1 == 0x400454d8 && arg0 != 3; return 22\n",
    }));
    expect(policy.get(SYSCALLS_X86_64.read!)).toEqual({ kind: "allow" });
    expect(policy.get(SYSCALLS_X86_64.openat!)).toEqual({ kind: "errno", errno: 2 });
    expect(policy.get(SYSCALLS_X86_64.mmap!)).toEqual({ kind: "expression", expression: [[{ arg: 2, op: "in", value: (1n << 64n) - 1n - 4n }]], elseErrno: null });
    expect(policy.get(SYSCALLS_X86_64.ioctl!)).toEqual({
      kind: "expression", elseErrno: 22,
      expression: [[{ arg: 1, op: "==", value: 0x400454d0n }], [{ arg: 1, op: "==", value: 0x400454d8n }, { arg: 0, op: "!=", value: 3n }]],
    });
  });

  const bad: [string, string, RegExp][] = [
    ["an unknown system call", "read: 1\nfrobnicate: 1\n", /p.policy:2: unknown system call "frobnicate"/],
    ["a line without a colon", "read 1\n", /p.policy:1: expected "syscall: rule"/],
    ["an unknown constant", "mmap: arg2 == PROT_MAGIC\n", /p.policy:1: unknown constant "PROT_MAGIC"/],
    ["an argument that does not exist", "mmap: arg7 == 1\n", /p.policy:1: cannot read "arg7 == 1"/],
    ["a repeated system call", "read: 1\nread: 1\n", /p.policy:2: "read" already has a rule/],
    ["a bad errno", "read: return 5000\n", /p.policy:1: errno "5000"/],
    ["a missing include", "@include nope.policy\n", /nope.policy: no such policy file/],
    ["an include loop", "@include p.policy\n", /nested more than 8 deep/],
  ];
  for (const [name, text, message] of bad) {
    test(`refuses ${name}, naming the line`, () => {
      expect(() => parsePolicy("p.policy", files({ "p.policy": text }))).toThrow(message);
    });
  }

  test("named constants match the kernel headers", () => {
    const c = `#include <sys/mman.h>\n#include <linux/mman.h>\n#include <fcntl.h>\n#include <sys/prctl.h>\n#include <linux/if_tun.h>\n#include <sys/ioctl.h>\n#include <linux/futex.h>\n#include <signal.h>\n#include <stdio.h>\n#include <linux/falloc.h>\n#include <time.h>\n#include <sys/socket.h>\nint main(void){\n${
      Object.keys(POLICY_CONSTANTS).filter((k) => k !== "CLONE_THREAD_FLAGS").map((k) => `printf("${k} %llu\\n", (unsigned long long)(${k}));`).join("\n")
    }\nreturn 0;}\n`;
    const dir = tempDir();
    writeFileSync(join(dir, "c.c"), c);
    const cc = Bun.spawnSync(["gcc", "-D_GNU_SOURCE", "-o", join(dir, "c"), join(dir, "c.c")], { stderr: "pipe" });
    expect(cc.stderr.toString()).toBe("");
    const out = Bun.spawnSync([join(dir, "c")], { stdout: "pipe" }).stdout.toString().trim().split("\n");
    for (const line of out) {
      const [name, value] = line.split(" ");
      expect([name, POLICY_CONSTANTS[name!]]).toEqual([name, BigInt(value!)]);
    }
  });
});

describe("compilePolicy, run by the kernel", () => {
  const dir = tempDir();
  const runner = join(dir, "runner");
  const cc = Bun.spawnSync(["gcc", "-O1", "-o", runner, join(import.meta.dir, "../support/seccomp_runner.c")], { stderr: "pipe" });
  if (cc.exitCode !== 0) throw new Error(cc.stderr.toString());

  const POLICY = [
    "# what seccomp_runner itself needs",
    "write: arg2 < 0x100000000",
    "exit_group: 1",
    "getpid: 1",
    "mmap: arg2 in ~PROT_EXEC",
    "ioctl: arg1 == TUNSETOFFLOAD; return 25",
    "openat: return 2",
    "madvise: arg2 == MADV_DONTNEED || arg2 == MADV_WILLNEED",
  ].join("\n");

  function run(action: string, defaultAction: "kill" | "log" = "kill", policy = POLICY): { out: string; signal: string | null } {
    const filter = join(dir, `${action}-${defaultAction}-${policy.length}.bpf`);
    writeFileSync(filter, compilePolicy(parsePolicy("t.policy", files({ "t.policy": policy })), defaultAction));
    const r = Bun.spawnSync([runner, filter, action], { stdout: "pipe", stderr: "pipe" });
    return { out: r.stdout.toString().trim(), signal: r.signalCode === null || r.signalCode === undefined ? null : String(r.signalCode) };
  }

  test("an allowed call runs", () => {
    expect(run("getpid")).toEqual({ out: "ret 0 errno 0", signal: null });
  });

  test("a call with no rule kills the process with SIGSYS", () => {
    expect(run("socket")).toEqual({ out: "", signal: "SIGSYS" });
  });

  test("an argument filter lets mmap without PROT_EXEC through and kills mmap with it", () => {
    expect(run("mmap_rw")).toEqual({ out: "ret 0 errno 0", signal: null });
    expect(run("mmap_exec")).toEqual({ out: "", signal: "SIGSYS" });
  });

  test("an ioctl outside its allowed request fails with the rule's errno", () => {
    expect(run("ioctl_other")).toEqual({ out: "ret -1 errno 25", signal: null });
    expect(run("ioctl_tun").out).not.toBe("");
  });

  test("return lines fail the call with that errno", () => {
    expect(run("openat")).toEqual({ out: "ret -1 errno 2", signal: null });
  });

  test("64-bit comparisons look at the high word (write of 4 GiB is refused)", () => {
    expect(run("write_big")).toEqual({ out: "", signal: "SIGSYS" });
  });

  test("|| alternatives: MADV_FREE is refused", () => {
    expect(run("madvise_free").signal).toBe("SIGSYS");
  });

  test("a policy longer than a conditional jump reaches (255 instructions) compiles and still kills what it leaves out", () => {
    const more = Object.keys(SYSCALLS_X86_64).filter((name) => !/^(socket|write|exit_group|getpid|mmap|ioctl|openat|madvise)$/.test(name)).slice(0, 200);
    const long = [POLICY, ...more.map((name) => `${name}: 1`)].join("\n");
    expect(compilePolicy(parsePolicy("t.policy", files({ "t.policy": long }))).byteLength / 8).toBeGreaterThan(600);
    expect(run("getpid", "kill", long)).toEqual({ out: "ret 0 errno 0", signal: null });
    expect(run("socket", "kill", long)).toEqual({ out: "", signal: "SIGSYS" });
  });

  test("log mode lets a forbidden call through instead of killing", () => {
    expect(run("socket", "log")).toEqual({ out: "ret 0 errno 0", signal: null });
  });
});
