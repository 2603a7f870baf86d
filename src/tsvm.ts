#!/usr/bin/env bun
// tsvm.ts - the executable's entry point: a device process loads only what it needs, the CLI the rest.
//
// A jailed device process (`tsvm device`, started by `tsvm run`) never parses arguments or builds a
// VM, so it skips the CLI's modules (yargs, valibot, the VM builder): less memory in every device.
if (Bun.argv[2] === "device") {
  const { runDeviceProcess } = await import("./devices/sandbox/device_process.ts");
  process.exit(runDeviceProcess());
} else {
  const { main } = await import("./main.ts");
  process.exit(await main(Bun.argv.slice(2)));
}
export {};
