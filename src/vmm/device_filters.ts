// device_filters.ts - the seccomp filters of jailed devices, compiled once per device kind (the
// device processes only install them). `tsvm run` and `tsvm devices` compile them before they hand
// off (hand_off.ts), so the program that runs the VM or serves the devices never loads the compiler.
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
