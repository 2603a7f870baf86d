// exec_self.ts - runs this program again, same pid and arguments, with settings added to its
// environment: to put JSC's settings in place (in_process_jsc.ts) and to hand a checked `tsvm run`
// configuration to the program that runs the VM (vmm/hand_off.ts).
import { jail, sys } from "../../ffi/mod.ts";
import { LIBRARY_ENV } from "./in_process_jsc.ts";

/**
 * Runs this program again, same pid, with `settings` added to its environment, unless each is there
 * already (a setting the user gave stays as given); returns only when nothing was missing or the
 * restart failed (then it runs on as started). JSC reads its settings only from the environment,
 * when the runtime starts, so tsvm runs itself again, once, before it has opened or changed
 * anything: `tsvm run` and `tsvm devices` when they hand off (vmm/hand_off.ts: VMM_JSC, and
 * DEVICE_JSC too with the sandbox off), and runVm and serveDevices when the sources run without
 * that entry point (the command line is then parsed again). With --disable-sandbox the devices run
 * in this process and should run as in a process of their own (jailed_process.ts says why: no FTL,
 * one GC marker); measured, 4 KiB random reads at depth 1 in-process: 83-85k TSC cycles a request
 * with FTL, 58-60k without, as the VMM's FTL compiles landed on CPUs the vCPU and the device loop
 * keep busy.
 */
export function restartWithJsc(settings: Readonly<Record<string, string>>, keepFds: readonly number[] = []): void {
  if (Object.keys(settings).every((k) => process.env[k] !== undefined)) return;
  execSelf(settings, {}, keepFds);
}

const F_SETFD = 2;
const FD_CLOEXEC = 1;

/**
 * Runs this program again, same pid and arguments, with `settings` added to the environment where
 * missing (a setting the user gave stays as given) and `extra` set, and `keepFds` open across the
 * exec (fds the user handed tsvm, such as --net tap-fd=N: Bun marks inherited fds from 4 on
 * close-on-exec when it starts); returns only when the exec failed (then the caller runs on as
 * started).
 */
export function execSelf(settings: Readonly<Record<string, string>>, extra: Readonly<Record<string, string>>, keepFds: readonly number[] = []): void {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined) env[k] = v;
  // The library's memfd stays open across the exec, and LIBRARY_ENV names it (same pid): the new
  // program maps it instead of copying the library again, which would take node:fs.
  const library = jail.libraryFd();
  if (library === null) delete env[LIBRARY_ENV];
  else keepFds = [...keepFds, library];
  for (const [k, v] of Object.entries(settings)) env[k] ??= v;
  Object.assign(env, extra);
  const args = Bun.isStandaloneExecutable ? [process.execPath, ...Bun.argv.slice(2)] : [process.execPath, Bun.main, ...Bun.argv.slice(2)];
  for (const fd of keepFds) sys.fcntlIntRaw(fd, F_SETFD, 0); // a bad fd is for the new program to report
  // Through the C library, not process.execve: Bun's marks every fd from 3 close-on-exec first,
  // which would drop the fds a user hands tsvm (--net tap-fd=N) and the hand-off's memfd. If it
  // fails (the executable gone or replaced while starting, a mount gone away), nothing depended on
  // it: run on as started.
  jail.execve(process.execPath, args, Object.entries(env).map(([k, v]) => `${k}=${v}`));
  // Still here: the library's fd goes back to close-on-exec, so that nothing this program starts
  // later inherits it.
  if (library !== null) sys.fcntlIntRaw(library, F_SETFD, FD_CLOEXEC);
}
