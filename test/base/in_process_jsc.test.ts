import { expect, test } from "bun:test";
import { join } from "node:path";
import { DEVICE_JSC, GC_CYCLE_BYTES, VMM_JSC } from "../../src/base/in_process_jsc.ts";

/** Runs gc_probe.ts (garbage made beside 256 MiB of mapped guest memory) with `settings`; what it gained. */
async function probe(settings: Record<string, string>): Promise<number> {
  const env: Record<string, string | undefined> = { ...process.env, ...settings };
  for (const [k, v] of Object.entries(settings)) if (v === "") delete env[k];
  const child = Bun.spawn([process.execPath, join(import.meta.dir, "../support/gc_probe.ts")], { env, stdout: "pipe", stderr: "inherit" });
  const text = await new Response(child.stdout).text();
  expect(await child.exited).toBe(0);
  return (JSON.parse(text) as { grownKib: number }).grownKib;
}

test("tsvm's processes collect every few MiB allocated, however much guest memory they map", async () => {
  expect(DEVICE_JSC.BUN_JSC_gcMaxHeapSize).toBe(String(GC_CYCLE_BYTES));
  expect(VMM_JSC.BUN_JSC_gcMaxHeapSize).toBe(String(GC_CYCLE_BYTES));
  // ~300 MiB of request-shaped garbage: with the devices' settings the process keeps a few MiB of it.
  const kept = await probe(DEVICE_JSC);
  expect(kept).toBeLessThan(32 * 1024);
  // Without the cycle cap JSC counts the mapped guest memory as heap and keeps nearly all of it
  // (306 MiB measured): what the setting is for. Should a Bun release stop counting external views,
  // this fails, and the setting can go.
  const withoutCap = await probe({ ...DEVICE_JSC, BUN_JSC_gcMaxHeapSize: "" });
  expect(withoutCap).toBeGreaterThan(128 * 1024);
}, 60_000);
