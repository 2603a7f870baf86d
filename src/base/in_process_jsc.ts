// in_process_jsc.ts - devices in the VMM (--disable-sandbox) run under the JSC settings a device
// process gets.
// It imports nothing: src/tsvm.ts calls it before it loads anything else.

/**
 * The JSC settings of a device process (jailed_process.ts says why): no FTL, JSC's top JIT tier,
 * and one GC marker.
 */
export const DEVICE_JSC: Readonly<Record<string, string>> = { BUN_JSC_useFTLJIT: "0", BUN_JSC_numberOfGCMarkers: "1" };

/**
 * What a device process of its own adds: JSC's baseline JIT only after 40 times its usual warm-up
 * (JSC's default is 500). A device's work comes in bursts; a short one ran its paths a few dozen
 * times, and compiling them in its middle, on the CPU the device shares with the program it serves,
 * cost more than the interpreter does, and kept the code. A long stream still gets the JIT after
 * about a thousand packets or requests. Block at steady state measured the same (4 KiB reads at
 * depth 1 and 32, 64 KiB at depth 32), and its process 0.3-0.5 MiB smaller after boot. Not for the
 * VMM under --disable-sandbox: its exit handlers run hot from the first instructions of a boot.
 */
export const DEVICE_PROCESS_JSC: Readonly<Record<string, string>> = { BUN_JSC_thresholdForJITAfterWarmUp: "20000" };

/**
 * And for devices whose work is only ever bursts (vsock, rng, balloon, console): no DFG, JSC's
 * optimizing tier. The test guest's 1 MiB vsock transfer, 5 runs each, host→guest: 2.8-4.4 ms with
 * every tier, 2.8-3.4 without DFG, 2.0-2.5 without DFG and with the late baseline JIT; the device's
 * CPU time over both directions 3.6-6.2, 2.8-5.1 and 1.3-2.1 ms, and ~1 MiB less memory after it.
 * Steady state, a packet then costs the device ~0.8 µs more than with DFG. Block and net keep DFG:
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
