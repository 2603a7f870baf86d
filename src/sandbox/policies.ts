// policies.ts - the seccomp policies embedded in the executable, and --seccomp-policy-dir overrides.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import balloon from "../../seccomp/x86_64/balloon_device.policy" with { type: "text" };
import block from "../../seccomp/x86_64/block_device.policy" with { type: "text" };
import common from "../../seccomp/x86_64/common_device.policy" with { type: "text" };
import consolePolicy from "../../seccomp/x86_64/console_device.policy" with { type: "text" };
import net from "../../seccomp/x86_64/net_device.policy" with { type: "text" };
import rng from "../../seccomp/x86_64/rng_device.policy" with { type: "text" };
import vsock from "../../seccomp/x86_64/vsock_device.policy" with { type: "text" };
import { compilePolicy, type DefaultAction } from "./bpf.ts";
import { parsePolicy, type PolicySource } from "./policy.ts";

/** The policy files shipped in seccomp/x86_64/, by file name. */
export const EMBEDDED_POLICIES: Readonly<Record<string, string>> = {
  "common_device.policy": common,
  "rng_device.policy": rng,
  "block_device.policy": block,
  "console_device.policy": consolePolicy,
  "net_device.policy": net,
  "balloon_device.policy": balloon,
  "vsock_device.policy": vsock,
};

/** Reads policies from `dir` when given (--seccomp-policy-dir), else from the embedded set. */
export function policySource(dir: string | null): PolicySource {
  if (dir === null) return (name) => EMBEDDED_POLICIES[name] ?? null;
  return (name) => {
    try {
      return readFileSync(join(dir, name), "utf8");
    } catch {
      return null;
    }
  };
}

/**
 * Compiles the seccomp filter of a device of `kind` (`<kind>_device.policy`) from `dir` or the
 * embedded set; in "log" mode calls outside the policy are logged instead of killing the device.
 * The VMM compiles and the device process only installs it: no device holds the parser or the
 * syscall table. Throws PolicyError naming the file and line of a bad policy.
 */
export function compileDeviceFilter(kind: string, dir: string | null, mode: DefaultAction): Uint8Array {
  return compilePolicy(parsePolicy(`${kind}_device.policy`, policySource(dir)), mode);
}
