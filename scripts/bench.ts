// bench.ts - tsvm's benchmarks, each a ratio against a peer measured in the same run:
//   1. exit round trip (port I/O and MMIO): tsvm's vCPU loop vs a minimal C KVM loop, same guest code;
//   2. process start to the guest's first serial byte: tsvm vs QEMU (microvm, PVH) on the same ELF.
// Usage: bun scripts/bench.ts [--rounds N] [--exits N]   (needs dist/tsvm; installs QEMU if missing)
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dir, "..");
const GUEST = join(ROOT, "build/guest/tsvm-guest.elf");
const TSVM = join(ROOT, "dist/tsvm");
const arg = (name: string, fallback: number): number => {
  const i = Bun.argv.indexOf(name);
  return i > 0 ? Number(Bun.argv[i + 1]) : fallback;
};
const ROUNDS = arg("--rounds", 11);
const EXITS = arg("--exits", 50000);

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function sh(cmd: string[]): string {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")} failed: ${r.stderr.toString()}`);
  return r.stdout.toString();
}

function cyclesPerExit(output: string): number {
  const m = /tsc-per-exit (\d+)/.exec(output);
  if (!m) throw new Error(`no benchmark line in:\n${output}`);
  return Number(m[1]);
}

/** Time from spawn to the first byte on stdout, in milliseconds; the process is killed after it. */
async function firstByte(cmd: string[]): Promise<number> {
  const start = performance.now();
  const child = Bun.spawn(cmd, { stdout: "pipe", stderr: "ignore", stdin: "ignore" });
  const reader = (child.stdout as ReadableStream<Uint8Array>).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${cmd[0]} wrote nothing`);
    if (value.byteLength > 0) break;
  }
  const elapsed = performance.now() - start;
  child.kill("SIGKILL");
  await child.exited;
  return elapsed;
}

if (!existsSync(TSVM)) throw new Error("dist/tsvm is missing: run `npm run build` first");
const dir = mkdtempSync(join(tmpdir(), "tsvm-bench-"));
const cLoop = join(dir, "c_exit_loop");
sh(["gcc", "-O2", "-o", cLoop, join(ROOT, "scripts/bench/c_exit_loop.c")]);

const rows: string[] = [];
for (const kind of ["pio", "mmio"] as const) {
  const cmdline = `tsvm.bench=${kind}:${EXITS}`;
  const c: number[] = [];
  const ts: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    c.push(cyclesPerExit(sh([cLoop, GUEST, cmdline])));
    ts.push(cyclesPerExit(sh([TSVM, "run", "--serial", "type=stdout,num=1", "-p", cmdline])));
  }
  const ratio = median(ts) / median(c);
  rows.push(`| ${kind.toUpperCase()} exit round trip (TSC cycles, median of ${ROUNDS}×${EXITS}) | ${median(ts)} | C loop ${median(c)} | ${ratio.toFixed(2)}× | ≤ 1.10× |`);
}

let qemu = Bun.which("qemu-system-x86_64");
if (!qemu) {
  sh(["apt-get", "install", "-y", "-qq", "qemu-system-x86"]);
  qemu = Bun.which("qemu-system-x86_64");
}
if (qemu) {
  const qemuCmd = [qemu, "-enable-kvm", "-cpu", "qemu64,-cx16", "-M", "microvm", "-m", "256", "-nodefaults",
    "-no-user-config", "-nographic", "-serial", "stdio", "-kernel", GUEST];
  const tsvmCmd = [TSVM, "run", "-m", "256"];
  const q: number[] = [];
  const t: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    q.push(await firstByte(qemuCmd));
    t.push(await firstByte(tsvmCmd));
  }
  const ratio = median(t) / median(q);
  rows.push(`| Start to first serial byte (ms, median of ${ROUNDS}) | ${median(t).toFixed(1)} | QEMU microvm ${median(q).toFixed(1)} | ${ratio.toFixed(2)}× | ≤ 0.5× |`);
} else {
  rows.push("| Start to first serial byte | skipped: qemu-system-x86_64 not installed | | | |");
}

console.log("| Benchmark | tsvm | Peer | Ratio | Goal |");
console.log("|---|---|---|---|---|");
for (const r of rows) console.log(r);
