#!/usr/bin/env bun
// tsvm.ts - the executable's entry point: a device process loads only what it needs, the CLI the rest.
//
// A jailed device process (`tsvm device`, started by `tsvm run`) never parses arguments or builds a
// VM, and the program that runs a VM or serves devices (the second of `tsvm run` or `tsvm devices`,
// vmm/hand_off.ts) never parses arguments. The executable is built with code splitting (scripts/build.sh), so the imports below
// are separate chunks: a device process parses none of the CLI's modules (yargs, valibot, the VM
// builder), which saves it about 3 MiB of private memory, and loads only its own device's code
// (devices/create_device.ts).
const { RUN_STATE_ENV } = await import("./base/in_process_jsc.ts");
if ((Bun.argv[2] === "run" || Bun.argv[2] === "devices") && process.env[RUN_STATE_ENV] !== undefined) {
  // The program `tsvm run` or `tsvm devices` handed the checked configuration to (vmm/hand_off.ts):
  // only the VMM, or only what serves the devices.
  const code = Bun.argv[2] === "run"
    ? await (await import("./vmm/run_vm.ts")).runHandedOff()
    : await (await import("./serve_devices.ts")).serveHandedOff();
  const { drainLog } = await import("./base/log.ts");
  drainLog();
  process.exit(code);
}
if (Bun.argv[2] === "device") {
  const { runDeviceProcess } = await import("./devices/sandbox/device_process.ts");
  process.exit(await runDeviceProcess());
} else {
  const { main } = await import("./main.ts");
  const { drainLog } = await import("./base/log.ts");
  const code = await main(Bun.argv.slice(2), { handOff: true });
  drainLog();
  process.exit(code);
}
export {};
