// policies.ts - the seccomp policies embedded in the executable, and --seccomp-policy-dir overrides.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import balloon from "../../seccomp/x86_64/balloon_device.policy" with { type: "text" };
import block from "../../seccomp/x86_64/block_device.policy" with { type: "text" };
import common from "../../seccomp/x86_64/common_device.policy" with { type: "text" };
import consolePolicy from "../../seccomp/x86_64/console_device.policy" with { type: "text" };
import net from "../../seccomp/x86_64/net_device.policy" with { type: "text" };
import rng from "../../seccomp/x86_64/rng_device.policy" with { type: "text" };
import type { PolicySource } from "./policy.ts";

/** The policy files shipped in seccomp/x86_64/, by file name. */
export const EMBEDDED_POLICIES: Readonly<Record<string, string>> = {
  "common_device.policy": common,
  "rng_device.policy": rng,
  "block_device.policy": block,
  "console_device.policy": consolePolicy,
  "net_device.policy": net,
  "balloon_device.policy": balloon,
};

/** The policy file of a device, by its debug label (`block0` -> block_device.policy). */
export function policyFileFor(deviceLabel: string): string {
  return `${deviceLabel.replace(/\d+$/, "")}_device.policy`;
}

/** Returns every policy file by name: those in `dir` (--seccomp-policy-dir), or the embedded ones. */
export function loadPolicies(dir: string | null): Record<string, string> {
  if (dir === null) return { ...EMBEDDED_POLICIES };
  const out: Record<string, string> = {};
  for (const name of readdirSync(dir)) if (name.endsWith(".policy")) out[name] = readFileSync(join(dir, name), "utf8");
  return out;
}

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
