import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parsePolicy, PolicyError } from "../../src/sandbox/policy.ts";
import { compileDeviceFilter, EMBEDDED_POLICIES, MAX_POLICY_FILE, policySource } from "../../src/sandbox/policies.ts";
import { tempDir } from "../support/tsvm.ts";
import { SYSCALLS_X86_64 } from "../../src/sandbox/syscalls_x86_64.ts";

const DIR = join(import.meta.dir, "../../seccomp/x86_64");

describe("the shipped seccomp policies", () => {
  test("the embedded set is exactly the files in seccomp/x86_64", () => {
    const onDisk = Object.fromEntries(readdirSync(DIR).filter((f) => f.endsWith(".policy")).map((f) => [f, readFileSync(join(DIR, f), "utf8")]));
    expect(EMBEDDED_POLICIES).toEqual(onDisk);
  });

  test("every virtio device has a policy, and each compiles within the kernel's limit", () => {
    for (const device of ["rng", "block", "console", "net", "balloon"]) {
      const program = compileDeviceFilter(device, null, "kill");
      expect(program.byteLength / 8).toBeLessThan(4096);
    }
  });

  test("only the block policy lets a device read its image at an offset", () => {
    const block = parsePolicy("block_device.policy", policySource(null));
    const rng = parsePolicy("rng_device.policy", policySource(null));
    expect([block.has(SYSCALLS_X86_64.pread64!), rng.has(SYSCALLS_X86_64.pread64!)]).toEqual([true, false]);
  });

  test("no policy allows socket, execve or fork", () => {
    for (const name of Object.keys(EMBEDDED_POLICIES)) {
      const policy = parsePolicy(name, policySource(null));
      for (const forbidden of ["socket", "execve", "fork", "vfork", "ptrace"]) expect([name, forbidden, policy.has(SYSCALLS_X86_64[forbidden]!)]).toEqual([name, forbidden, false]);
    }
  });

  test("--seccomp-policy-dir reads files from that directory", () => {
    expect(policySource(DIR)("rng_device.policy")).toBe(EMBEDDED_POLICIES["rng_device.policy"]!);
    expect(policySource("/nonexistent")("rng_device.policy")).toBeNull();
  });

  test("a policy file there that is not a regular file, or too large, is an error naming it (a FIFO would hang)", () => {
    const dir = tempDir();
    Bun.spawnSync(["mkfifo", join(dir, "rng_device.policy")]);
    writeFileSync(join(dir, "common_device.policy"), "#".repeat(MAX_POLICY_FILE + 1));
    expect(() => policySource(dir)("rng_device.policy")).toThrow(new PolicyError(`${join(dir, "rng_device.policy")}: cannot read it (not a regular file)`));
    expect(() => compileDeviceFilter("rng", dir, "kill")).toThrow(/rng_device\.policy: cannot read it \(not a regular file\)/);
    expect(() => policySource(dir)("common_device.policy")).toThrow(/common_device\.policy: cannot read it \(1048577 bytes is more than 1048576\)/);
  });
});
