// jail.ts - bindings for c/jail.c: spawning device processes in namespaces, and their lockdown.
import { type Pointer, ptr } from "bun:ffi";
import { native } from "./lib.ts";

export { libraryFd } from "./lib.ts";

/** Builds a NULL-terminated char* array; the returned buffers must stay alive until the call returns. */
function cStringArray(strings: readonly string[]): { array: BigUint64Array; keep: Buffer[] } {
  const keep = strings.map((s) => Buffer.from(`${s}\0`));
  const array = new BigUint64Array(strings.length + 1);
  keep.forEach((b, i) => {
    array[i] = BigInt(ptr(b));
  });
  return { array, keep };
}

/**
 * Starts `path` with `argv` and `env` in new user, PID, mount, network, IPC and UTS namespaces,
 * `fds` moved to 3, 4, ..., `stderrFd` as its stderr, stdin and stdout /dev/null, every other fd
 * closed; ids 0 and 1 map to `idBase` and `idBase + 1`. Returns the pid or -errno.
 */
export function spawnJailed(path: string, argv: readonly string[], env: readonly string[], fds: readonly number[], stderrFd: number, idBase: number): number {
  const a = cStringArray(argv);
  const e = cStringArray(env);
  const f = Int32Array.from(fds);
  const pid = native.tsvm_spawn_jailed(Buffer.from(`${path}\0`), a.array, e.array, f.length > 0 ? f : null, f.length, stderrFd, idBase);
  void a.keep;
  void e.keep;
  return pid;
}

/** A spawn the library's spawner thread is making (spawnJailedStart); spawnJailedFinish takes its pid. */
export type SpawnJob = { readonly handle: Pointer };

/**
 * As spawnJailed, made by the library's spawner thread: returns at once, with the job or -errno
 * (nothing started). The job holds its own copies of the strings and fds (the caller may close its
 * fds), and must be finished (spawnJailedFinish) to free it.
 */
export function spawnJailedStart(path: string, argv: readonly string[], env: readonly string[], fds: readonly number[], stderrFd: number, idBase: number): SpawnJob | number {
  const a = cStringArray(argv);
  const e = cStringArray(env);
  const f = Int32Array.from(fds);
  const out = new BigUint64Array(1);
  const r = native.tsvm_spawn_jailed_start(Buffer.from(`${path}\0`), a.array, e.array, f.length > 0 ? f : null, f.length, stderrFd, idBase, out);
  void a.keep;
  void e.keep;
  return r < 0 ? r : { handle: Number(out[0]) as Pointer };
}

/** Waits until the spawner has made `job`'s spawn and frees the job; returns the pid (exec'd, or died) or -errno. */
export function spawnJailedFinish(job: SpawnJob): number {
  return native.tsvm_spawn_jailed_finish(job.handle);
}

/**
 * Replaces this program with `path` run with `argv` and `env`, keeping the fds that are not
 * close-on-exec; returns -errno when it could not (on success it does not return).
 */
export function execve(path: string, argv: readonly string[], env: readonly string[]): number {
  const a = cStringArray(argv);
  const e = cStringArray(env);
  const r = native.tsvm_execve(Buffer.from(`${path}\0`), a.array, e.array);
  void a.keep;
  void e.keep;
  return r;
}

/** Jails the calling process: empty read-only root, no capabilities, uid 1, no_new_privs, the seccomp `filter`. Returns 0 or -errno. */
export function lockdown(filter: Uint8Array, maxFds: number): number {
  return native.tsvm_lockdown(filter, filter.byteLength, maxFds);
}

/** Waits for child `pid` (or polls with `nohang`); returns [pid or 0 or -errno, raw status]. */
export function waitpid(pid: number, nohang: boolean): [number, number] {
  const status = new Int32Array(1);
  const r = native.tsvm_waitpid(pid, status, nohang ? 1 : 0);
  return [r, status[0]!];
}
