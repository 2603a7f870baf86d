// embedded_policies.ts - the seccomp policy files of seccomp/x86_64/, embedded in the executable.
import balloon from "../../seccomp/x86_64/balloon_device.policy" with { type: "text" };
import block from "../../seccomp/x86_64/block_device.policy" with { type: "text" };
import common from "../../seccomp/x86_64/common_device.policy" with { type: "text" };
import consolePolicy from "../../seccomp/x86_64/console_device.policy" with { type: "text" };
import net from "../../seccomp/x86_64/net_device.policy" with { type: "text" };
import rng from "../../seccomp/x86_64/rng_device.policy" with { type: "text" };
import vsock from "../../seccomp/x86_64/vsock_device.policy" with { type: "text" };
import type { PolicySource } from "./policy.ts";

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

/** The embedded set as a source the policy parser reads from (a name it does not hold: null). */
export const embeddedSource: PolicySource = (name) => EMBEDDED_POLICIES[name] ?? null;
