// virtiofsd.ts - `--shared-dir PATH:TAG`: a virtiofsd that tsvm starts, connects to as a
// vhost-user-fs front-end, and stops with the VM. virtiofsd sandboxes itself (its own namespaces).
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { log, sanitize } from "../base/log.ts";
import { err, ok, type Result } from "../base/result.ts";

/** Where distributions put virtiofsd: Debian's qemu-system-common, Fedora's virtiofsd package. */
const KNOWN_PATHS = ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd"];
/** How long virtiofsd may take to create its socket. */
const START_TIMEOUT_MS = 5000;

/** Lines of virtiofsd's stderr kept for the message when it fails. */
const KEPT_LINES = 3;

/** A running virtiofsd serving one directory on its own socket. */
export type Virtiofsd = {
  readonly socket: string;
  /** How virtiofsd ended and its last words, once it has; null while it runs. */
  ended(): string | null;
  stop(): void;
};

/** Finds the virtiofsd to run: `program` if given, else a known install or one on PATH. */
export function findVirtiofsd(program: string | null): Result<string> {
  if (program !== null) return existsSync(program) ? ok(program) : err(`--virtiofsd ${program}: no such program`);
  const found = KNOWN_PATHS.find((p) => existsSync(p)) ?? Bun.which("virtiofsd");
  return found ? ok(found) : err("--shared-dir needs virtiofsd: install it (Debian: apt-get install qemu-system-common) or name it with --virtiofsd PROGRAM");
}

/**
 * Starts `program` on `dir` with its socket in a fresh private directory, and waits until the socket
 * exists. The C virtiofsd of QEMU 7.2 and the Rust virtiofsd take different flags: --help says which.
 */
export function startVirtiofsd(program: string, dir: string): Result<Virtiofsd> {
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    isDir = false;
  }
  if (!isDir) return err(`--shared-dir ${dir}: not a directory`);
  const runtime = mkdtempSync(join(tmpdir(), "tsvm-virtiofsd-"));
  const socket = join(runtime, "vhost-user-fs.sock");
  const help = Bun.spawnSync([program, "--help"], { stdout: "pipe", stderr: "pipe" });
  const rust = `${help.stdout.toString()}${help.stderr.toString()}`.includes("--shared-dir");
  const args = rust
    ? [`--socket-path=${socket}`, `--shared-dir=${dir}`, "--cache=auto"]
    : [`--socket-path=${socket}`, "-o", `source=${dir}`, "-o", "cache=auto"];
  const child = Bun.spawn([program, ...args], { stdin: "ignore", stdout: "ignore", stderr: "pipe" });
  // Its log goes to tsvm's at debug level (escaped); the last lines explain a failure.
  const lastLines: string[] = [];
  void (async (): Promise<void> => {
    const decoder = new TextDecoder();
    let carry = "";
    for await (const chunk of child.stderr as ReadableStream<Uint8Array>) {
      const lines = (carry + decoder.decode(chunk)).split("\n");
      carry = lines.pop() ?? "";
      for (const line of lines) {
        log.debug(`[virtiofsd] ${sanitize(line)}`);
        lastLines.push(sanitize(line, 200));
        if (lastLines.length > KEPT_LINES) lastLines.shift();
      }
    }
  })();
  const ended = (): string | null => {
    if (child.exitCode === null && child.signalCode === null) return null;
    const how = child.signalCode !== null ? `was killed by ${child.signalCode}` : `exited with status ${child.exitCode}`;
    return `virtiofsd (pid ${child.pid}) ${how}${lastLines.length > 0 ? `: ${lastLines.join(" / ")}` : ""}`;
  };
  const stop = (): void => {
    child.kill("SIGTERM");
    rmSync(runtime, { recursive: true, force: true });
  };
  const deadline = performance.now() + START_TIMEOUT_MS;
  while (!existsSync(socket)) {
    if (child.exitCode !== null || performance.now() > deadline) {
      stop();
      const why = child.exitCode !== null ? `exited with status ${child.exitCode}` : `did not create its socket within ${START_TIMEOUT_MS / 1000} s`;
      return err(`--shared-dir ${dir}: ${program} ${why}`);
    }
    Bun.sleepSync(5);
  }
  return ok({ socket, ended, stop });
}
