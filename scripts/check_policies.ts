// check_policies.ts - lists every virtio device without a seccomp policy, and compiles every policy.
// Exits 1 when a device lacks a policy or a policy does not compile. Usage: bun scripts/check_policies.ts
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { DEVICE_TYPE_NAMES } from "../src/devices/vhost_user/device_types.ts";
import { compilePolicy } from "../src/sandbox/bpf.ts";
import { parsePolicy } from "../src/sandbox/policy.ts";
import { policySource } from "../src/sandbox/policies.ts";

const dir = join(import.meta.dir, "../seccomp/x86_64");
const files = new Set(readdirSync(dir).filter((f) => f.endsWith(".policy")));
// The device kinds tsvm runs in jailed processes (its own devices, not other programs' back-ends).
const devices = DEVICE_TYPE_NAMES.filter((kind) => kind !== "fs");
let failed = false;
for (const device of devices) {
  const file = `${device}_device.policy`;
  if (!files.has(file)) {
    console.log(`missing: ${device} has no seccomp/x86_64/${file}`);
    failed = true;
  }
}
for (const file of files) {
  try {
    const program = compilePolicy(parsePolicy(file, policySource(dir)));
    console.log(`ok: ${file} (${program.byteLength / 8} BPF instructions)`);
  } catch (e) {
    console.log(`error: ${e instanceof Error ? e.message : String(e)}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
