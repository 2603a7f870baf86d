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
