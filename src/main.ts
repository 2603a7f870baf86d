#!/usr/bin/env bun
// main.ts - the tsvm command line: parse arguments into a Config, then run the subcommand.
import yargs from "yargs";
import { log } from "./base/log.ts";
import { ConfigError, parseRunConfig, type RawRunOptions } from "./config.ts";
import { EXIT_CODE, runVm } from "./run_vm.ts";
import { VERSION } from "./version.ts";

/** Runs the CLI with `argv` (without the program name); resolves to the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  let code: number | null = null;
  const parser = yargs([...argv])
    .scriptName("tsvm")
    .usage("$0 <command> [options]")
    .command(
      "run [kernel]",
      "Boot a kernel (ELF vmlinux or bzImage); with no kernel, boot the built-in test guest",
      (y) => y
        .positional("kernel", { type: "string", describe: "kernel image: ELF vmlinux or bzImage" })
        .option("mem", { alias: "m", type: "string", describe: "guest memory: MiB, or a size with K/M/G/T (default 256)" })
        .option("cpus", { alias: "c", type: "string", describe: "number of vCPUs (default 1)" })
        .option("params", { alias: "p", type: "string", describe: "kernel command line parameters (repeatable)" })
        .option("initrd", { alias: "i", type: "string", describe: "initial ramdisk loaded for the kernel" })
        .option("serial", {
          type: "string",
          describe: "serial port: type=stdout|file|sink,num=1..4[,path=P][,console=true][,stdin=true] (repeatable)",
        })
        .option("log-level", { type: "string", describe: "error, warn, info or debug (default warn)" })
        .option("rng", { type: "boolean", default: true, describe: "virtio-rng device (--no-rng to leave it out)" })
        .option("balloon", { type: "boolean", default: true, describe: "virtio-balloon device (--no-balloon to leave it out)" })
        .option("block", { type: "string", describe: "virtio-blk disk: path=P[,ro=true][,id=ID][,root=true] (repeatable)" })
        .option("disk", { alias: "d", type: "string", describe: "read-only disk image (repeatable)" })
        .option("rwdisk", { type: "string", describe: "read-write disk image (repeatable)" })
        .option("root", { alias: "r", type: "string", describe: "read-only root disk (adds root=/dev/vda ro)" })
        .option("rwroot", { type: "string", describe: "read-write root disk (adds root=/dev/vda rw)" })
        .option("net", { type: "string", describe: "virtio-net on a tap: tap-name=NAME or tap-fd=N, [,mac=MAC] (repeatable)" })
        .option("host_ip", { type: "string", describe: "create a tap with this host IPv4 address (with --netmask and --mac)" })
        .option("netmask", { type: "string", describe: "netmask of the created tap" })
        .option("mac", { type: "string", describe: "guest MAC address for the created tap" }),
      async (args) => {
        const raw: RawRunOptions = {
          kernel: args.kernel, initrd: args.initrd, mem: args.mem, cpus: args.cpus,
          params: repeated(args.params), serial: repeated(args.serial), logLevel: args["log-level"], rng: args.rng, balloon: args.balloon,
          block: repeated(args.block), disk: repeated(args.disk), rwdisk: repeated(args.rwdisk),
          root: single("--root", args.root), rwroot: single("--rwroot", args.rwroot),
          net: repeated(args.net), hostIp: single("--host_ip", args.host_ip), netmask: single("--netmask", args.netmask),
          mac: single("--mac", args.mac),
        };
        const config = parseRunConfig(raw);
        log.debug(`configuration parsed at ${performance.now().toFixed(1)} ms`);
        code = await runVm(config);
      },
    )
    .command("version", "Print tsvm's version", () => {}, () => {
      console.log(`tsvm ${VERSION}`);
      code = 0;
    })
    .demandCommand(1, "a command is required; try `tsvm run`")
    .strict()
    .recommendCommands()
    .help()
    .alias("help", "h")
    .version(false)
    .exitProcess(false)
    .fail((message, error) => {
      throw error ?? new ConfigError(message);
    });
  try {
    await parser.parseAsync();
  } catch (e) {
    if (e instanceof ConfigError) {
      log.error(e.message);
      return EXIT_CODE.USAGE;
    }
    log.error(e instanceof Error ? e.message : String(e));
    return EXIT_CODE.VM_ERROR;
  }
  return code ?? 0;
}

/** Returns a flag that may be given once, refusing repeats. */
function single(flag: string, value: unknown): string | undefined {
  if (Array.isArray(value)) throw new ConfigError(`${flag} can be given only once`);
  return value === undefined ? undefined : String(value);
}

/** Returns a repeatable flag's values as a list (yargs gives a string for one use, an array for several). */
function repeated(value: unknown): string[] | undefined {
  if (value === undefined) return undefined;
  return (Array.isArray(value) ? value : [value]).map(String);
}


if (import.meta.main) void main(Bun.argv.slice(2)).then((code) => process.exit(code));
