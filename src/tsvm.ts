#!/usr/bin/env bun
// tsvm.ts - the executable's entry point: a device process loads only what it needs, the CLI the rest.
//
// A jailed device process (`tsvm device`, started by `tsvm run`) never parses arguments or builds a
// VM. The executable is built with code splitting (scripts/build.sh), so the two imports below are
// separate chunks: a device process parses none of the CLI's modules (yargs, valibot, the VM
// builder), which saves it about 3 MiB of private memory, and loads only its own device's code
// (devices/create_device.ts).
if (Bun.argv[2] === "run" || Bun.argv[2] === "devices") {
  // A VMM runs under its JSC settings, and with --disable-sandbox under its devices' too; JSC reads
  // them only at start, so this restarts once when they are missing (base/in_process_jsc.ts).
  const { DEVICE_JSC, restartWithJsc, VMM_JSC } = await import("./base/in_process_jsc.ts");
  restartWithJsc(Bun.argv.includes("--disable-sandbox") ? { ...VMM_JSC, ...DEVICE_JSC } : VMM_JSC);
}
if (Bun.argv[2] === "device") {
  const { runDeviceProcess } = await import("./devices/sandbox/device_process.ts");
  process.exit(await runDeviceProcess());
} else {
  const { main } = await import("./main.ts");
  const { drainLog } = await import("./base/log.ts");
  const code = await main(Bun.argv.slice(2));
  drainLog();
  process.exit(code);
}
export {};
