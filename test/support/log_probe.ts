// log_probe.ts - run with stderr a small pipe nobody reads yet: logs LINES lines through the
// non-blocking stderr, reports on stdout what it held and how long logging took, waits for a line on
// stdin (the reader has started reading), then drains and logs one more line.
import { drainLog, heldLog, log, useNonBlockingStderr } from "../../src/base/log.ts";

const LINES = Number(process.argv[2] ?? 2000);
useNonBlockingStderr();
const start = performance.now();
for (let i = 0; i < LINES; i++) log.warn(`line ${String(i).padStart(5, "0")} ${"x".repeat(80)}`);
const report = { ms: performance.now() - start, ...heldLog() };
process.stdout.write(`${JSON.stringify(report)}\n`);
for await (const _ of console) break;
drainLog(10_000);
log.warn("after the reader came back");
drainLog(10_000);
