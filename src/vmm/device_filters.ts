// device_filters.ts - the seccomp filters of jailed devices, one per device kind (the device
// processes only install them). `tsvm run` and `tsvm devices` get them before they hand off
// (hand_off.ts), so the program that runs the VM or serves the devices never loads the compiler.
// The embedded policies' filters were compiled when tsvm was built (sandbox/precompiled_filters.ts,
// a Bun macro); only --seccomp-policy-dir loads the parser and compiler, and compiles here.
import { ConfigError } from "../config.ts";
import { describeError } from "../base/result.ts";
import { precompiledFilters } from "../sandbox/precompiled_filters.ts" with { type: "macro" };

/** The embedded policies' filters (base64 by kind, for each default action): the bundler puts them here as a literal. */
const PRECOMPILED = precompiledFilters();

/**
 * The filter of each of `kinds` as built with tsvm, or null when one must be compiled now (policies
 * from --seccomp-policy-dir, or a kind with no embedded policy): then compileFilters. Synchronous on
 * purpose: `tsvm run` hands off from inside its yargs command handler, and an await there would let
 * yargs build its whole help text first (it does once a handler returns), ~10 ms of start-up.
 */
export function builtFilters(kinds: Iterable<string>, policyDir: string | null, logFailures: boolean): Map<string, Uint8Array> | null {
  if (policyDir !== null) return null;
  const built = PRECOMPILED[logFailures ? "log" : "kill"];
  const filters = new Map<string, Uint8Array>();
  for (const kind of new Set(kinds)) {
    const program = built[kind];
    if (program === undefined) return null;
    filters.set(kind, new Uint8Array(Buffer.from(program, "base64")));
  }
  return filters;
}

/** Compiles the filter of each of `kinds` (from the embedded policies, or --seccomp-policy-dir); a failure is a usage error. */
export async function compileFilters(kinds: Iterable<string>, policyDir: string | null, logFailures: boolean): Promise<Map<string, Uint8Array>> {
  const mode = logFailures ? "log" : "kill";
  const filters = new Map<string, Uint8Array>();
  for (const kind of new Set(kinds)) {
    try {
      const { compileDeviceFilter } = await import("../sandbox/policies.ts");
      filters.set(kind, compileDeviceFilter(kind, policyDir, mode));
    } catch (e) {
      const where = policyDir === null ? "the embedded policy" : `--seccomp-policy-dir ${policyDir}`;
      throw new ConfigError(`failed to load the seccomp policy of the ${kind} device from ${where}: ${describeError(e)}`);
    }
  }
  return filters;
}

/** The filter of each of `kinds`: as built with tsvm where it can be, else compiled now. */
export function filtersOf(kinds: readonly string[], policyDir: string | null, logFailures: boolean): Map<string, Uint8Array> | Promise<Map<string, Uint8Array>> {
  return builtFilters(kinds, policyDir, logFailures) ?? compileFilters(kinds, policyDir, logFailures);
}
