// fuzz.ts - tsvm's fuzzing campaign: every target in test/fuzz/targets.ts, seeded and repeatable.
//   bun scripts/fuzz.ts [--cases N] [--seed S] [--target SUBSTRING]
// Prints one line per target (cases, crashes, deadline overruns, fd and memory growth) and a total;
// exits 1 if any target crashed, overran its deadline or leaked fds.
import { runTarget } from "../test/fuzz/harness.ts";
import { FUZZ_TARGETS } from "../test/fuzz/targets.ts";

const args = Bun.argv.slice(2);
const option = (name: string, fallback: string): string => {
  const at = args.indexOf(name);
  return at >= 0 && args[at + 1] !== undefined ? args[at + 1]! : fallback;
};
const cases = Number(option("--cases", "100000"));
const seed = Number(option("--seed", String(Date.now() & 0xffffffff)));
const only = option("--target", "");

let total = 0;
let bad = 0;
console.log(`seed ${seed}, ${cases} cases per target`);
for (const target of FUZZ_TARGETS.filter((t) => t.name.includes(only))) {
  const r = runTarget(target, cases, seed);
  total += r.cases;
  if (r.crashes > 0 || r.overruns > 0 || r.fdGrowth > 0) bad++;
  console.log(`${r.name.padEnd(44)} ${String(r.cases).padStart(8)} cases  ${r.crashes} crashes  ${r.overruns} overruns  fds ${r.fdGrowth >= 0 ? "+" : ""}${r.fdGrowth}  rss ${r.rssGrowthMiB >= 0 ? "+" : ""}${r.rssGrowthMiB} MiB  ${r.seconds} s`);
  for (const c of r.firstCrashes) console.log(`    ${c}`);
}
console.log(`${total} cases in all; ${bad === 0 ? "no target crashed, hung or leaked" : `${bad} targets failed`}`);
process.exit(bad === 0 ? 0 : 1);
