import { expect, test } from "bun:test";
import { join } from "node:path";
import { sys } from "../../ffi/mod.ts";
import { captureLog, LOG_ONCE_KEYS, logOnce, sanitize, setLogLevel } from "../../src/base/log.ts";

const F_SETPIPE_SZ = 1031;
const F_GETFL = 3;
const O_NONBLOCK = 0o4000;

test("log lines never block on a stderr nobody reads: held up to a limit, the rest counted and reported", async () => {
  const [r, w] = sys.pipe();
  sys.fcntlIntRaw(w, F_SETPIPE_SZ, 4096);
  const lines = 2000; // ~190 KB: the pipe (4 KiB) and what is held (64 KiB) cannot take it all
  const child = Bun.spawn([process.execPath, join(import.meta.dir, "../support/log_probe.ts"), String(lines)], {
    stdin: "pipe", stdout: "pipe", stderr: w,
  });
  sys.close(w);
  const reader = child.stdout.getReader();
  const first = await reader.read();
  const report = JSON.parse(new TextDecoder().decode(first.value)) as { ms: number; bytes: number; dropped: number };
  // Logging returned with the reader stuck (a blocking write would never have reported).
  expect(report.bytes).toBeGreaterThan(60_000);
  expect(report.bytes).toBeLessThanOrEqual(64 * 1024);
  expect(report.dropped).toBeGreaterThan(1000);
  expect(sys.fcntlIntRaw(r, F_GETFL, 0) & O_NONBLOCK).toBe(0);
  // The reader comes back: everything held arrives in order, then the count, then new lines.
  let text = "";
  const buffer = new Uint8Array(65536);
  child.stdin.write("go\n");
  await child.stdin.flush();
  for (let n = sys.readRaw(r, buffer); n > 0; n = sys.readRaw(r, buffer)) text += new TextDecoder().decode(buffer.subarray(0, n));
  expect(await child.exited).toBe(0);
  sys.close(r);
  const got = text.trimEnd().split("\n");
  const kept = got.filter((line) => line.startsWith("[tsvm warn] line "));
  expect(kept.map((line) => Number(line.slice(17, 22)))).toEqual(kept.map((_, i) => i));
  expect(got.slice(kept.length)).toEqual([
    `[tsvm warn] ${lines - kept.length} log lines dropped: stderr was not being read`,
    "[tsvm warn] after the reader came back",
  ]);
});

test("sanitize escapes what could drive a terminal", () => {
  expect(sanitize("a\x1b[2Jb\u202e\n")).toBe("a\\x1b[2Jb\\u{202e}\\x0a");
});

test(`logOnce remembers at most ${LOG_ONCE_KEYS + 1} keys, and none when its level is not printed`, () => {
  const lines: string[] = [];
  captureLog((text) => lines.push(text));
  try {
    const seen = new Set<string>();
    setLogLevel("warn");
    for (let i = 0; i < 5000; i++) logOnce(seen, `mmio:${i}`, "debug", `unhandled ${i}`);
    expect([seen.size, lines.length]).toEqual([0, 0]);
    setLogLevel("debug");
    for (let i = 0; i < 5000; i++) logOnce(seen, `mmio:${i}`, "debug", `unhandled ${i}`);
    logOnce(seen, "mmio:0", "debug", "unhandled 0");
    expect(seen.size).toBe(LOG_ONCE_KEYS + 1);
    expect(lines.length).toBe(LOG_ONCE_KEYS + 1);
    expect(lines.at(-1)).toContain("and no more of these");
  } finally {
    setLogLevel("warn");
    captureLog(null);
  }
});
