// device_filters.ts - the seccomp filters of a run's jailed devices, compiled once per device kind
// (the device processes only install them). `tsvm run` compiles them before it hands off to the
// program that runs the VM (hand_off.ts), so that program never loads the policy compiler.
import { ConfigError } from "../config.ts";
import { describeError } from "../base/result.ts";
import { compileDeviceFilter } from "../sandbox/policies.ts";

/** Compiles each of `kinds`' policy (embedded, or from --seccomp-policy-dir); a failure is a usage error. */
export function compileFilters(kinds: Iterable<string>, policyDir: string | null, logFailures: boolean): Map<string, Uint8Array> {
  const filters = new Map<string, Uint8Array>();
  for (const kind of new Set(kinds)) {
    try {
      filters.set(kind, compileDeviceFilter(kind, policyDir, logFailures ? "log" : "kill"));
    } catch (e) {
      const where = policyDir === null ? "the embedded policy" : `--seccomp-policy-dir ${policyDir}`;
      throw new ConfigError(`failed to load the seccomp policy of the ${kind} device from ${where}: ${describeError(e)}`);
    }
  }
  return filters;
}
