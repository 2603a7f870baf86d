import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { ConfigError } from "../../src/config.ts";
import { builtFilters, compileFilters, filtersOf } from "../../src/vmm/device_filters.ts";

const KINDS = ["rng", "block", "console", "net", "balloon", "vsock"];
const DIR = join(import.meta.dir, "../../seccomp/x86_64");

describe("device seccomp filters", () => {
  test("the filters built with tsvm are, byte for byte, what compiling the embedded policies gives, both default actions", async () => {
    for (const logFailures of [false, true]) {
      const built = builtFilters(KINDS, null, logFailures)!;
      const compiled = await compileFilters(KINDS, null, logFailures);
      expect([...built.keys()].sort()).toEqual([...KINDS].sort());
      for (const kind of KINDS) expect([kind, logFailures, built.get(kind)]).toEqual([kind, logFailures, compiled.get(kind)]);
    }
    expect(builtFilters(["rng"], null, false)!.get("rng")).not.toEqual(builtFilters(["rng"], null, true)!.get("rng"));
  });

  test("--seccomp-policy-dir, or a kind with no embedded policy, compiles now", async () => {
    expect(builtFilters(["rng"], DIR, false)).toBeNull();
    expect(builtFilters(["rng", "gpu"], null, false)).toBeNull();
    expect((await filtersOf(["rng"], DIR, false)).get("rng")).toEqual(builtFilters(["rng"], null, false)!.get("rng"));
    const failed = compileFilters(["gpu"], null, false);
    await expect(failed).rejects.toBeInstanceOf(ConfigError);
    await expect(compileFilters(["gpu"], null, false)).rejects.toThrow(/seccomp policy of the gpu device from the embedded policy: gpu_device\.policy: no such policy file/);
  });
});
