// precompiled_filters.ts - a Bun macro: run by the bundler when tsvm is built (and by Bun's
// transpiler when the sources run), it compiles the seccomp filter of every device kind from the
// embedded policies, so that `tsvm run` and `tsvm devices` only pick the ones they need and never
// load the policy parser, the syscall table or the compiler (vmm/device_filters.ts).
import { compilePolicy } from "./bpf.ts";
import { EMBEDDED_POLICIES, embeddedSource } from "./embedded_policies.ts";
import { parsePolicy } from "./policy.ts";

/** Base64 filters by device kind, for each default action (sandbox/bpf.ts's DefaultAction). */
export type PrecompiledFilters = { readonly kill: Readonly<Record<string, string>>; readonly log: Readonly<Record<string, string>> };

/** Every embedded device policy, compiled for both default actions. */
export function precompiledFilters(): PrecompiledFilters {
  const filters = { kill: {} as Record<string, string>, log: {} as Record<string, string> };
  for (const name of Object.keys(EMBEDDED_POLICIES)) {
    const kind = /^(\w+)_device\.policy$/.exec(name)?.[1];
    if (kind === undefined || kind === "common") continue;
    for (const mode of ["kill", "log"] as const) {
      const program = compilePolicy(parsePolicy(name, embeddedSource), mode);
      filters[mode][kind] = Buffer.from(program).toString("base64");
    }
  }
  return filters;
}
