// cc.ts - compiles and runs small C programs that tests compare tsvm against.
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Compiles `source` (a path) with gcc and returns its standard output. */
export function compileAndRun(source: string, extraFlags: readonly string[] = []): string {
  const dir = mkdtempSync(join(tmpdir(), "tsvm-cc-"));
  const exe = join(dir, "a.out");
  const cc = Bun.spawnSync(["gcc", "-O0", "-o", exe, source, ...extraFlags], { stderr: "pipe" });
  if (cc.exitCode !== 0) throw new Error(`failed to compile ${source}: ${cc.stderr.toString()}`);
  const run = Bun.spawnSync([exe], { stdout: "pipe", stderr: "pipe" });
  if (run.exitCode !== 0) throw new Error(`failed to run ${source}: ${run.stderr.toString()}`);
  return run.stdout.toString();
}
