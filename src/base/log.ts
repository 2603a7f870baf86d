// log.ts - tsvm's diagnostics on stderr, filtered by --log-level.
//
// A VMM's stderr may be a pipe whose reader stops reading (a supervisor that hangs, `2>&1 | less`
// left unpaged). Its lines must not stop the loop that logs them, since a guest can make the VMM log
// (rate-limited warnings, a device process's lines): once `useNonBlockingStderr` is called, lines go
// to stderr reopened non-blocking; what it does not take now is held (up to PENDING_LIMIT bytes) and
// written when it has room (`flushLog`, every turn of the control loop), and lines beyond that are
// counted and dropped, the count printed once stderr takes lines again.
import { socket, sys } from "../../ffi/mod.ts";
import { ERRNO } from "./errno.ts";
import { StreamOutput } from "./stream_output.ts";

export const LOG_LEVELS = ["error", "warn", "info", "debug"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

let threshold: number = LOG_LEVELS.indexOf("warn");

/** The most verbose level that is printed. */
export function logLevel(): LogLevel {
  return LOG_LEVELS[threshold]!;
}

/** Sets the most verbose level that is printed. */
export function setLogLevel(level: LogLevel): void {
  threshold = LOG_LEVELS.indexOf(level);
}

/** What stderr may hold back from us before lines are dropped. */
const PENDING_LIMIT = 64 * 1024;
const encoder = new TextEncoder();

/** Non-blocking stderr, once useNonBlockingStderr was called; null: fd 2 as it is (blocking). */
let stderr: StreamOutput | null = null;
/** Bytes stderr did not take yet, oldest first (the first one possibly partly written). */
const pending: Uint8Array[] = [];
let pendingBytes = 0;
let dropped = 0;

/**
 * From now on, writes this thread's log lines without blocking (see the top of this file). For the
 * VMM's threads, not for device processes: their stderr is a pipe the VMM always reads, and a jailed
 * process could not reopen it.
 */
export function useNonBlockingStderr(): void {
  stderr ??= StreamOutput.reopen(2);
}

/** Where lines go instead of stderr while a test captures them (null: stderr). */
let capture: ((text: string) => void) | null = null;

/** Sends log lines to `sink` instead of stderr (null: back to stderr); for tests that read them. */
export function captureLog(sink: ((text: string) => void) | null): void {
  capture = sink;
}

/** Writes a whole line (or text of several) to stderr, or holds it as described at the top. */
export function writeLog(text: string): void {
  if (capture !== null) {
    capture(text);
    return;
  }
  const bytes = encoder.encode(text);
  if (stderr === null) {
    writeBlocking(bytes);
    return;
  }
  if (!flushLog()) {
    if (pendingBytes + bytes.byteLength > PENDING_LIMIT) dropped++;
    else hold(bytes);
    return;
  }
  const n = stderr.write(bytes);
  if (typeof n === "number" && n < bytes.byteLength) hold(bytes.subarray(n));
}

/**
 * Writes all of `bytes` to fd 2 as it is, through the C library rather than node:fs, which a device
 * process would load for this alone (~0.4 MiB kept). An error (stderr closed, or made non-blocking
 * and full by whoever holds it) drops the rest of the line: logging never throws.
 */
function writeBlocking(bytes: Uint8Array): void {
  for (let done = 0; done < bytes.byteLength;) {
    const n = sys.writeRaw(2, bytes.subarray(done));
    if (n === -ERRNO.EINTR) continue;
    if (n <= 0) return;
    done += n;
  }
}

function hold(bytes: Uint8Array): void {
  pending.push(bytes);
  pendingBytes += bytes.byteLength;
}

/** Writes what stderr takes of the lines held; true when none are left (written, or stderr broke). */
export function flushLog(): boolean {
  if (stderr === null) return true;
  while (pending.length > 0) {
    const n = stderr.write(pending[0]!);
    if (n === "broken") {
      pending.length = 0;
      pendingBytes = 0;
      dropped = 0;
      return true;
    }
    if (n === 0) return false;
    pendingBytes -= n;
    if (n < pending[0]!.byteLength) pending[0] = pending[0]!.subarray(n);
    else pending.shift();
  }
  if (dropped > 0) {
    const note = `[tsvm warn] ${dropped} log line${dropped === 1 ? "" : "s"} dropped: stderr was not being read\n`;
    dropped = 0;
    writeLog(note);
  }
  return pending.length === 0;
}

/** Lines held for stderr: their count in bytes, and lines dropped since stderr last took some. */
export function heldLog(): { bytes: number; dropped: number } {
  return { bytes: pendingBytes, dropped };
}

/** Before exiting: waits up to `timeoutMs` for stderr to take the lines held (a stuck reader loses them). */
export function drainLog(timeoutMs = 1000): void {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const left = deadline - performance.now();
    if (flushLog() || left <= 0) return;
    socket.poll(stderr!.fd, socket.POLLOUT, Math.ceil(left));
  }
}

function emit(level: LogLevel, message: string): void {
  if (LOG_LEVELS.indexOf(level) <= threshold) writeLog(`[tsvm ${level}] ${message}\n`);
}

export const log = {
  error: (message: string): void => emit("error", message),
  warn: (message: string): void => emit("warn", message),
  info: (message: string): void => emit("info", message),
  debug: (message: string): void => emit("debug", message),
};

/** The keys one `logOnce` set remembers; past them nothing more is logged (a guest chooses the keys). */
export const LOG_ONCE_KEYS = 1024;

/**
 * Logs `message` at most once per `key` (an unhandled port, say), for the first LOG_ONCE_KEYS keys;
 * then once more to say that is all. Nothing is remembered when the level is not printed, so a guest
 * touching a new address every time costs no memory.
 */
export function logOnce(seen: Set<string>, key: string, level: LogLevel, message: string): void {
  if (LOG_LEVELS.indexOf(level) > threshold || seen.size > LOG_ONCE_KEYS || seen.has(key)) return;
  seen.add(key);
  if (seen.size <= LOG_ONCE_KEYS) emit(level, message);
  else emit(level, `${message} (and no more of these: ${LOG_ONCE_KEYS} were logged)`);
}

/** Lets through the first few messages of a kind, then one in every `every`, so a guest cannot flood the log. */
export class RateLimitedLog {
  #count = 0;
  constructor(readonly level: LogLevel, readonly first = 5, readonly every = 1000) {}

  log(message: string): void {
    const n = ++this.#count;
    if (n <= this.first) emit(this.level, message);
    else if (n % this.every === 0) emit(this.level, `${message} (${n} times so far)`);
  }
}

/**
 * Returns text from an untrusted source (a device process's log line, its failure reason) safe to
 * print: control characters and other unprintable code points become \xNN / \u{N} escapes, so it can
 * neither move the cursor nor write terminal escape sequences. Invalid UTF-8 became U+FFFD when the
 * bytes were decoded (TextDecoder without `fatal`) and is printed as \u{fffd}.
 */
export function sanitize(text: string, maxLength = 1000): string {
  let out = "";
  for (const ch of text.slice(0, maxLength)) {
    const code = ch.codePointAt(0)!;
    const unprintable = code < 0x20 || code === 0x7f || (code >= 0x80 && code < 0xa0) || code === 0xfffd ||
      (code >= 0x2028 && code <= 0x2029) || (code >= 0x200b && code <= 0x200f) || (code >= 0x202a && code <= 0x202e);
    out += !unprintable ? ch : code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u{${code.toString(16)}}`;
  }
  return text.length > maxLength ? `${out}...` : out;
}
