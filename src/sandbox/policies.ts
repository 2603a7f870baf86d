// policies.ts - where a device policy comes from (the embedded set, or --seccomp-policy-dir), and compiling it.
import { join } from "node:path";
import { compilePolicy, type DefaultAction } from "./bpf.ts";
import { EMBEDDED_POLICIES, embeddedSource } from "./embedded_policies.ts";
import { parsePolicy, PolicyError, type PolicySource } from "./policy.ts";
import { ERRNO } from "../base/errno.ts";
import { readUserFile } from "../base/user_file.ts";

export { EMBEDDED_POLICIES };

/** The largest policy file read from --seccomp-policy-dir (ours are a few KiB). */
export const MAX_POLICY_FILE = 1 << 20;

/**
 * Reads policies from `dir` when given (--seccomp-policy-dir), else from the embedded set. A file
 * that is not there is "no such policy file"; one that is there but cannot be read, is not a regular
 * file (a FIFO would hang the start) or is larger than MAX_POLICY_FILE is a PolicyError naming it.
 */
export function policySource(dir: string | null): PolicySource {
  if (dir === null) return embeddedSource;
  return (name) => {
    const path = join(dir, name);
    const read = readUserFile(path, MAX_POLICY_FILE);
    if (read.ok) return new TextDecoder().decode(read.value);
    if (read.error.errno === ERRNO.ENOENT) return null;
    throw new PolicyError(`${path}: cannot read it (${read.error.reason})`);
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
