// log.ts - tsvm's diagnostics on stderr, filtered by --log-level.
import { writeSync } from "node:fs";

export const LOG_LEVELS = ["error", "warn", "info", "debug"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

let threshold: number = LOG_LEVELS.indexOf("warn");

/** Sets the most verbose level that is printed. */
export function setLogLevel(level: LogLevel): void {
  threshold = LOG_LEVELS.indexOf(level);
}

function emit(level: LogLevel, message: string): void {
  if (LOG_LEVELS.indexOf(level) <= threshold) writeSync(2, `[tsvm ${level}] ${message}\n`);
}

export const log = {
  error: (message: string): void => emit("error", message),
  warn: (message: string): void => emit("warn", message),
  info: (message: string): void => emit("info", message),
  debug: (message: string): void => emit("debug", message),
};

/** Logs `message` at most once per `key` (an unhandled port, say). */
export function logOnce(seen: Set<string>, key: string, level: LogLevel, message: string): void {
  if (seen.has(key)) return;
  seen.add(key);
  emit(level, message);
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
