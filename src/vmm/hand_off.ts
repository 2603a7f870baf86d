// hand_off.ts - `tsvm devices`, and `tsvm run` when it must, parses in one program and serves the
// devices (runs the VM) in another, under the same pid.
//
// The process that reads the command line may load yargs, valibot, the configuration file reader
// and the seccomp policy compiler, run each once, and would keep what they loaded and compiled for
// the VM's whole life (measured in the compiled executable: importing and running yargs' parser
// kept ~6 MiB, compiling the filters ~1.5 MiB). So once the configuration is checked and the
// filters are compiled, tsvm runs itself again with `execve` (same pid, same arguments, its JSC
// settings added), and passes both in a sealed memfd named by RUN_STATE_ENV. The new program sees
// that variable first thing (src/tsvm.ts) and loads only the VMM (or only what serves the
// devices). A failed exec runs them in the first program. A `tsvm run` whose command line was read
// without yargs, with filters built with tsvm and jailed devices, loaded none of that and runs the
// VM in place (src/main.ts, docs/architecture.md).
//
// The state is tsvm's own: it is made by the first program and read by the second, and a value a
// user put in the environment by hand is refused with an error (it would skip the checks, though no
// further than running tsvm with any command line can go).
import { sys } from "../../ffi/mod.ts";
import { execSelf } from "../base/exec_self.ts";
import { RUN_STATE_ENV } from "../base/in_process_jsc.ts";
import { log } from "../base/log.ts";
import { describeError } from "../base/result.ts";
import { type Config, ConfigError } from "../config.ts";
import type { DevicesConfig } from "../devices_config.ts";
import { VERSION } from "../version.ts";
import { EXIT_CODE } from "./exit_code.ts";

const MFD_ALLOW_SEALING = 2;
const F_ADD_SEALS = 1033;
const F_GET_SEALS = 1034;
const SEALS = 1 | 2 | 4 | 8; // F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE
/** A run state larger than this was not made by tsvm (a few KiB, and each filter at most 32 KiB). */
const MAX_STATE_BYTES = 4 << 20;

/** A command and its checked configuration. */
export type CommandConfig = { readonly command: "run"; readonly config: Config } | { readonly command: "devices"; readonly config: DevicesConfig };

/** What the first program hands to the second: the command it runs, and what that command needs. */
export type RunState = CommandConfig & {
  /** Each device kind's compiled seccomp filter (empty with the sandbox off). */
  readonly filters: ReadonlyMap<string, Uint8Array>;
};

type Encoded = { readonly version: string; readonly command: string; readonly config: unknown; readonly filters: [string, Uint8Array][] };

const BYTES_KEY = "$bytes";

/** JSON with byte arrays as base64 (a vhost-user device's local configuration, the filters). */
export function encodeRunState(state: RunState): Uint8Array {
  const encoded: Encoded = { version: VERSION, command: state.command, config: state.config, filters: [...state.filters] };
  const text = JSON.stringify(encoded, (_key, value: unknown) =>
    value instanceof Uint8Array ? { [BYTES_KEY]: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("base64") } : value);
  return new TextEncoder().encode(text);
}

/** The inverse of encodeRunState; the error says why `bytes` is not a state this tsvm made. */
export function decodeRunState(bytes: Uint8Array): RunState | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes), (_key, value: unknown) => {
      if (typeof value === "object" && value !== null && !Array.isArray(value)) {
        const b = (value as Record<string, unknown>)[BYTES_KEY];
        if (typeof b === "string" && Object.keys(value).length === 1) return new Uint8Array(Buffer.from(b, "base64"));
      }
      return value;
    });
  } catch {
    return "not JSON";
  }
  if (typeof parsed !== "object" || parsed === null) return "not an object";
  const e = parsed as Partial<Encoded>;
  if (e.version !== VERSION) return `made by another tsvm version (${JSON.stringify(e.version)}, this is ${VERSION})`;
  if (e.command !== "run" && e.command !== "devices") return `no command tsvm hands off (${JSON.stringify(e.command)})`;
  if (typeof e.config !== "object" || e.config === null) return "no configuration";
  if (!Array.isArray(e.filters) || !e.filters.every((f) => Array.isArray(f) && typeof f[0] === "string" && f[1] instanceof Uint8Array)) {
    return "malformed filters";
  }
  const filters = new Map(e.filters);
  return e.command === "run" ? { command: "run", config: e.config as Config, filters } : { command: "devices", config: e.config as DevicesConfig, filters };
}

/**
 * Runs this program again with `state` and `settings` (JSC's, added to the environment); returns
 * only when that cannot be done (then the caller runs the VM itself).
 */
export function handOff(state: RunState, settings: Readonly<Record<string, string>>): void {
  const keepFds = tapFds(state);
  const bytes = encodeRunState(state);
  const memfd = sys.memfdCreate("tsvm_run_state", MFD_ALLOW_SEALING); // without MFD_CLOEXEC: it crosses the exec
  try {
    for (let done = 0; done < bytes.byteLength;) {
      const n = sys.writeRaw(memfd, bytes.subarray(done));
      if (n <= 0) return;
      done += n;
    }
    if (sys.fcntlIntRaw(memfd, F_ADD_SEALS, SEALS) < 0) return;
    execSelf(settings, { [RUN_STATE_ENV]: String(memfd) }, keepFds);
  } finally {
    sys.close(memfd); // reached only when the exec did not happen
  }
}

/** The fds the user named with tap-fd=N: they must stay open across any exec of tsvm itself. */
export function tapFds(of: CommandConfig): number[] {
  if (of.command === "run") return of.config.nets.flatMap((n) => (n.kind === "tap-fd" ? [n.fd] : []));
  return of.config.devices.flatMap(({ spec }) => (spec.kind === "net" && spec.tap.kind === "tap-fd" ? [spec.tap.fd] : []));
}

/**
 * In the program handOff started: reads and closes the state's memfd and removes RUN_STATE_ENV from
 * the environment (nothing this VM starts inherits it); the state must be for `command`. The error
 * names what is wrong.
 */
export function takeHandOff(command: RunState["command"]): RunState | string {
  const value = process.env[RUN_STATE_ENV] ?? "";
  delete process.env[RUN_STATE_ENV];
  if (!/^[0-9]{1,6}$/.test(value)) return `${RUN_STATE_ENV}=${JSON.stringify(value)} is not an fd number`;
  const fd = Number(value);
  try {
    // Sealed as handOff seals it: an fd that is not, or that grows while read, was not made by tsvm.
    // (The kernel may add F_SEAL_EXEC of its own: vm.memfd_noexec.)
    const seals = sys.fcntlIntRaw(fd, F_GET_SEALS, 0);
    if (seals < 0 || (seals & SEALS) !== SEALS) return `fd ${fd} is not a sealed run state`;
    const size = sys.fileSize(fd);
    if (size <= 0 || size > MAX_STATE_BYTES) return `fd ${fd} holds ${size} bytes`;
    const bytes = new Uint8Array(size);
    if (sys.preadRaw(fd, bytes, 0) !== size) return `fd ${fd} could not be read whole`;
    const state = decodeRunState(bytes);
    if (typeof state !== "string" && state.command !== command) return `a state for tsvm ${state.command}, not tsvm ${command}`;
    return state;
  } finally {
    sys.close(fd);
  }
}

/**
 * In the program handOff started: takes the state for `command` and runs `serve` with it; resolves
 * to the exit code. A state it cannot take, or a ConfigError from `serve`, is a usage error (2), any
 * other error 1, each reported as the CLI reports them (main.ts).
 */
export async function serveHandOff<C extends RunState["command"]>(command: C, serve: (state: Extract<RunState, { command: C }>) => Promise<number>): Promise<number> {
  const state = takeHandOff(command);
  if (typeof state === "string") {
    log.error(`${RUN_STATE_ENV}: ${state} (it is set by tsvm for itself, not by hand)`);
    return EXIT_CODE.USAGE;
  }
  try {
    return await serve(state as Extract<RunState, { command: C }>); // takeHandOff checked the command
  } catch (e) {
    log.error(describeError(e));
    return e instanceof ConfigError ? EXIT_CODE.USAGE : EXIT_CODE.VM_ERROR;
  }
}
