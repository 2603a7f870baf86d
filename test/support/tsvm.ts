// tsvm.ts - runs the tsvm command line in a child process with a deadline, for integration tests.
import { accessSync, constants, existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dir, "../..");

/** The command that runs tsvm: $TSVM_BIN (the built executable) or the sources through Bun. */
export function tsvmCommand(): string[] {
  const bin = process.env.TSVM_BIN;
  if (bin) return [resolve(ROOT, bin)];
  return [process.execPath, join(ROOT, "src/main.ts")];
}

/**
 * How much slower than a real machine this one runs tests: TSVM_TEST_TIME_SCALE (say 4 inside
 * scripts/nested_kvm.sh, where everything runs under TCG) stretches every deadline the tests set.
 */
export const TIME_SCALE = Math.max(1, Number(process.env.TSVM_TEST_TIME_SCALE ?? "1") || 1);

/** Whether this machine can run VMs (tests that need KVM are skipped, loudly, without it). */
export const HAS_KVM = ((): boolean => {
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
})();
if (!HAS_KVM) console.warn("tsvm tests: /dev/kvm is not usable here; KVM integration tests are skipped");

/** The built test guest. */
export const GUEST_ELF = join(ROOT, "build/guest/tsvm-guest.elf");
export const guestBuilt = existsSync(GUEST_ELF);

export type RunResult = { code: number | null; signal: string | null; stdout: string; stderr: string; timedOut: boolean };

/** Runs tsvm with `args` (and `env` added to the environment) and resolves when it exits or is killed at `timeoutMs`. */
export async function runTsvm(args: readonly string[], opts: { timeoutMs?: number; cwd?: string; stdin?: string; env?: Record<string, string> } = {}): Promise<RunResult> {
  const child = Bun.spawn([...tsvmCommand(), ...args], {
    cwd: opts.cwd ?? ROOT, stdin: opts.stdin === undefined ? "ignore" : "pipe", stdout: "pipe", stderr: "pipe",
    env: { ...process.env, ...opts.env },
  });
  if (opts.stdin !== undefined) {
    // A pipe, as from a terminal or another program: tsvm waits for it in epoll.
    const stdin = child.stdin as import("bun").FileSink;
    stdin.write(opts.stdin);
    await stdin.flush();
    await stdin.end();
  }
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGKILL");
  }, (opts.timeoutMs ?? 30_000) * TIME_SCALE);
  const [stdout, stderr] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text()]);
  await child.exited;
  clearTimeout(timer);
  // A VM that failed (exit 1) or was killed says why on stderr: show it, so a failing test's log explains itself.
  if ((child.exitCode === 1 || timedOut) && stderr.length > 0) console.error(`[tsvm ${args[0]} ${timedOut ? "timed out" : "exited 1"}] ${stderr.slice(-2000)}`);
  return { code: child.exitCode, signal: child.signalCode === null ? null : String(child.signalCode), stdout, stderr, timedOut };
}

/** A running tsvm whose output is collected as it arrives. */
export class TsvmProcess {
  readonly child: ReturnType<typeof Bun.spawn>;
  stdout = "";
  stderr = "";
  readonly #done: Promise<void>;

  /** Starts tsvm with `args`, behind `prefix` when given (`ip netns exec NS`, say). */
  constructor(args: readonly string[], prefix: readonly string[] = []) {
    this.child = Bun.spawn([...prefix, ...tsvmCommand(), ...args], { cwd: ROOT, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    const pump = async (stream: ReadableStream<Uint8Array>, into: "stdout" | "stderr"): Promise<void> => {
      const decoder = new TextDecoder();
      for await (const chunk of stream) this[into] += decoder.decode(chunk, { stream: true });
    };
    this.#done = Promise.all([
      pump(this.child.stdout as ReadableStream<Uint8Array>, "stdout"),
      pump(this.child.stderr as ReadableStream<Uint8Array>, "stderr"),
    ]).then(() => {});
  }

  /**
   * Resolves once `pattern` has appeared on stdout (or, given a function, once it holds for the
   * output so far); rejects if tsvm exits first or `timeoutMs` passes. Count repeated lines with a
   * function: a regular expression like /(tick[^]*){60}/ backtracks exponentially and JSC gives up
   * on it (no match) long before it would succeed.
   */
  async waitForOutput(pattern: RegExp | ((output: string) => boolean), timeoutMs: number, stream: "stdout" | "stderr" = "stdout"): Promise<void> {
    const deadline = Date.now() + timeoutMs * TIME_SCALE;
    const seen = typeof pattern === "function" ? pattern : (text: string): boolean => pattern.test(text);
    while (!seen(this[stream])) {
      if (this.child.exitCode !== null) throw new Error(`tsvm exited (${this.child.exitCode}) before ${pattern}: ${this.stderr}`);
      if (Date.now() > deadline) {
        const other = stream === "stdout" ? this.stderr : this.stdout;
        throw new Error(`no ${pattern} within ${timeoutMs} ms; ${stream} so far:\n${this[stream]}\n${stream === "stdout" ? "stderr" : "stdout"}:\n${other.slice(-2000)}`);
      }
      await Promise.race([this.#done, Bun.sleep(20)]);
    }
  }

  /** Resolves with the exit code, killing the process at `timeoutMs`. */
  async exit(timeoutMs: number): Promise<number | null> {
    const timer = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs * TIME_SCALE);
    await this.child.exited;
    await this.#done;
    clearTimeout(timer);
    return this.child.exitCode;
  }

  [Symbol.dispose](): void {
    if (this.child.exitCode === null) this.child.kill("SIGKILL");
  }
}

/** Resolves as `promise` does, or rejects naming `what` (and `vm`'s output) once `timeoutMs` passes. */
export async function within<T>(promise: Promise<T>, timeoutMs: number, what: string, vm?: TsvmProcess): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const output = vm ? `\nstdout:\n${vm.stdout.slice(-3000)}\nstderr:\n${vm.stderr.slice(-2000)}` : "";
      reject(new Error(`no ${what} within ${timeoutMs} ms${output}`));
    }, timeoutMs * TIME_SCALE);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** Returns a fresh temporary directory. */
export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), "tsvm-test-"));
}
