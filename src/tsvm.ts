#!/usr/bin/env bun
// tsvm.ts - the executable's entry point: a device process loads only what it needs, the CLI the rest.
//
// A jailed device process (`tsvm device`, started by `tsvm run`) never parses arguments or builds a
// VM, and the program that runs a VM (the second of `tsvm run`, vmm/hand_off.ts) never parses
// arguments. The executable is built with code splitting (scripts/build.sh), so the imports below
// are separate chunks: a device process parses none of the CLI's modules (yargs, valibot, the VM
// builder), which saves it about 3 MiB of private memory, and loads only its own device's code
// (devices/create_device.ts).
const { DEVICE_JSC, RUN_STATE_ENV, VMM_JSC } = await import("./base/in_process_jsc.ts");
if (Bun.argv[2] === "run" && process.env[RUN_STATE_ENV] !== undefined) {
  // The program `tsvm run` handed the checked configuration to (vmm/hand_off.ts): only the VMM.
  const { runHandedOff } = await import("./vmm/run_vm.ts");
  const { drainLog } = await import("./base/log.ts");
  const code = await runHandedOff();
  drainLog();
  process.exit(code);
}
if (Bun.argv[2] === "devices") {
  // `tsvm devices` runs under the VMM's JSC settings, and with --disable-sandbox under its devices'
  // too; JSC reads them only at start, so this restarts once when they are missing
  // (base/in_process_jsc.ts). `tsvm run` gets them when it hands off (vmm/hand_off.ts).
  // The fds named by tap-fd=N stay open across it (the command line is checked after).
  const tapFds = Bun.argv.flatMap((a) => [...a.matchAll(/(?:^|,)tap-fd=([0-9]{1,9})(?=,|$)/g)].map((m) => Number(m[1])));
  const { restartWithJsc } = await import("./base/exec_self.ts");
  restartWithJsc(Bun.argv.includes("--disable-sandbox") ? { ...VMM_JSC, ...DEVICE_JSC } : VMM_JSC, tapFds);
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
