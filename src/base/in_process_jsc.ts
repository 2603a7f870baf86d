// in_process_jsc.ts - devices in the VMM (--disable-sandbox) run under the JSC settings a device
// process gets.
// It imports nothing: src/tsvm.ts calls it before it loads anything else.

/**
 * The JSC settings of a device process (jailed_process.ts says why): no FTL, JSC's top JIT tier,
 * and one GC marker.
 */
export const DEVICE_JSC: Readonly<Record<string, string>> = { BUN_JSC_useFTLJIT: "0", BUN_JSC_numberOfGCMarkers: "1" };

/**
 * What a process of its own adds for devices whose work comes in bursts, not streams (vsock, rng,
 * balloon, console): no DFG either, JSC's optimizing tier. Their paths run a few dozen times per
 * burst; DFG compiled them in the middle of one, on a CPU the device shares with the program it
 * serves. Measured with the test guest's 1 MiB vsock transfer, 8 runs each: host→guest 2.8-3.4 ms
 * without DFG, 3.4-4.4 with, the device's CPU time 2.8-5.1 against 3.6-6.2 ms, and 0.2 MiB less
 * memory after it; steady state, a packet costs the device ~0.8 µs more. Block and net keep DFG:
 * without it 4 KiB reads at depth 32 cost twice the cycles.
 */
export const BURST_DEVICE_JSC: Readonly<Record<string, string>> = { BUN_JSC_useDFGJIT: "0" };
export const BURST_DEVICE_KINDS: ReadonlySet<string> = new Set(["vsock", "rng", "balloon", "console"]);

/** Where ffi/lib.ts names the memfd that holds the library, for the Workers of the same process. */
export const LIBRARY_ENV = "TSVM_LIBRARY_FD_PATH";

/**
 * With --disable-sandbox the devices run in this process, and they should run as they do in a
 * process of their own (jailed_process.ts says why: no FTL, one GC marker). Measured here, 4 KiB
 * random reads at depth 1 in-process: 83-85k TSC cycles a request with FTL, 58-60k without, as the
 * VMM's FTL compiles landed on CPUs the vCPU and the device loop keep busy. JSC reads its settings
 * only from the environment, when the runtime starts, so tsvm runs itself again with them, once,
 * before it has opened or changed anything: src/tsvm.ts does so first thing when the command line
 * says --disable-sandbox, and runVm and serveDevices when a configuration file does (the command
 * line is then parsed again). A setting the user already gave in the environment stays as given.
 */
export function restartWithDeviceJsc(): void {
  const missing = Object.entries(DEVICE_JSC).filter(([k]) => process.env[k] === undefined);
  if (missing.length === 0) return;
  const env: Record<string, string> = {};
  // The library's memfd does not survive the exec: the new process makes its own.
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && k !== LIBRARY_ENV) env[k] = v;
  for (const [k, v] of missing) env[k] = v;
  const args = Bun.isStandaloneExecutable ? [process.execPath, ...Bun.argv.slice(2)] : [process.execPath, Bun.main, ...Bun.argv.slice(2)];
  if (process.execve === undefined) return; // a runtime without it: run on as started
  process.execve(process.execPath, args, env);
}
