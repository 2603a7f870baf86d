#!/usr/bin/env bun
// main.ts - the tsvm command line: parse arguments into a Config, then run the subcommand.
import { drainLog, log } from "./base/log.ts";
import { type Config, ConfigError, parseByteSize, parseRunConfig, virtioDeviceSpecs } from "./config.ts";
import { mergeRunOptions, readConfigFile } from "./config_file.ts";
import type { VmRequest } from "./vm_control/messages.ts";
import { EXIT_CODE } from "./vmm/exit_code.ts";
import type { DevicesConfig } from "./devices_config.ts";
import { DEVICE_JSC, VMM_JSC } from "./base/in_process_jsc.ts";
import { builtFilters, compileFilters } from "./vmm/device_filters.ts";
import { handOff } from "./vmm/hand_off.ts";
import { VERSION } from "./version.ts";
import { declareRunOptions, fastRunArgs, rawRunOptions, repeated, RUN_FLAGS, single } from "./run_options.ts";

/** How main runs. */
export type MainOptions = {
  /**
   * `tsvm run` hands the checked configuration to this program run again, which loads only the VMM
   * (vmm/hand_off.ts). For src/tsvm.ts, whose program knows to take it; src/main.ts run by itself
   * runs the VM in its own process.
   */
  readonly handOff?: boolean;
};

/** Runs the CLI with `argv` (without the program name); resolves to the exit code. */
export async function main(argv: readonly string[], options: MainOptions = {}): Promise<number> {
  // The common `tsvm run` command lines never load yargs (run_options.ts).
  const fast = argv[0] === "run" ? fastRunArgs(argv.slice(1)) : null;
  if (fast !== null) return await reportingErrors(() => runCommand(fast, options, true));
  let code: number | null = null;
  const yargs = await loadYargs();
  const parser = yargs([...argv])
    .scriptName("tsvm")
    .usage("$0 <command> [options]")
    .command(
      "run [kernel]",
      "Boot a kernel (ELF vmlinux or bzImage); with no kernel, boot the built-in test guest",
      (y) => declareRunOptions(y),
      async (args) => {
        code = await runCommand(args, options, false);
      },
    )
    .command(
      "devices",
      "Serve virtio devices over vhost-user to another VMM (QEMU, Cloud Hypervisor, tsvm --vhost-user)",
      (y) => y
        .option("block", { type: "string", describe: "vhost=SOCKET,path=IMG[,ro=true][,id=ID][,format=raw|qcow2] (repeatable)" })
        .option("net", { type: "string", describe: "vhost=SOCKET,tap-name=NAME|tap-fd=N[,mac=MAC] (repeatable)" })
        .option("console", { type: "string", describe: "vhost=SOCKET[,type=stdout|file|sink][,path=P] (repeatable)" })
        .option("rng", { type: "string", describe: "vhost=SOCKET (repeatable)" })
        .option("balloon", { type: "string", describe: "vhost=SOCKET (repeatable)" })
        .option("vsock", { type: "string", describe: "vhost=SOCKET,cid=N,uds=PATH (host programs connect to PATH; the guest reaches port P at PATH_P)" })
        .option("disable-sandbox", { type: "boolean", describe: "serve the devices from this process, without jails" })
        .option("seccomp-policy-dir", { type: "string", describe: "read device seccomp policies from this directory" })
        .option("seccomp-log-failures", { type: "boolean", describe: "log disallowed system calls instead of killing the device" })
        .option("log-level", { type: "string", describe: "error, warn, info or debug (default warn)" }),
      async (args) => {
        const { parseDevicesConfig } = await import("./devices_config.ts");
        const config = parseDevicesConfig({
          block: repeated(args.block), net: repeated(args.net), console: repeated(args.console), rng: repeated(args.rng),
          balloon: repeated(args.balloon), vsock: repeated(args.vsock), disableSandbox: args["disable-sandbox"],
          seccompPolicyDir: single("--seccomp-policy-dir", args["seccomp-policy-dir"]), seccompLogFailures: args["seccomp-log-failures"],
          logLevel: single("--log-level", args["log-level"]),
        });
        code = await startDevices(config, options.handOff === true);
      },
    )
    .command("stop <socket>", "Stop the VM behind a control socket (disks are flushed; run exits 0)", (y) => socketArg(y),
      async (args) => { code = await control(args.socket, { kind: "stop" }); })
    .command("suspend <socket>", "Park the VM's vCPUs and stop its devices", (y) => socketArg(y),
      async (args) => { code = await control(args.socket, { kind: "suspend" }); })
    .command("resume <socket>", "Resume a suspended VM", (y) => socketArg(y),
      async (args) => { code = await control(args.socket, { kind: "resume" }); })
    .command("balloon <size> <socket>", "Set the balloon's target size (bytes, or with K/M/G)", (y) => socketArg(y).positional("size", { type: "string", demandOption: true }),
      async (args) => { code = await control(args.socket, { kind: "balloon", bytes: byteSize("SIZE", args.size) }); })
    .command("balloon_stats <socket>", "Print the balloon's size and the guest's memory statistics as JSON", (y) => socketArg(y),
      async (args) => { code = await control(args.socket, { kind: "balloon_stats" }); })
    .command("vsock_stats <socket>", "Print the vsock device's connections and byte counts as JSON", (y) => socketArg(y),
      async (args) => { code = await control(args.socket, { kind: "vsock_stats" }); })
    .command("disk <action> <index> <size> <socket>", "Resize disk INDEX (0-based) to SIZE: tsvm disk resize INDEX SIZE SOCKET",
      (y) => socketArg(y)
        .positional("action", { type: "string", choices: ["resize"], demandOption: true })
        .positional("index", { type: "string", demandOption: true })
        .positional("size", { type: "string", demandOption: true }),
      async (args) => {
        const index = Number(args.index);
        if (!Number.isInteger(index) || index < 0) throw new ConfigError(`INDEX: expected a disk number from 0 (got ${JSON.stringify(args.index)})`);
        code = await control(args.socket, { kind: "disk_resize", index, bytes: byteSize("SIZE", args.size) });
      })
    .command("create_qcow2 <path> <size>", "Create an empty qcow2 (v3) image of SIZE bytes (or with K/M/G/T)",
      (y) => y.positional("path", { type: "string", demandOption: true }).positional("size", { type: "string", demandOption: true }),
      async (args) => {
        const size = byteSize("SIZE", args.size);
        if (size === 0 || size % 512 !== 0) throw new ConfigError(`SIZE: expected a positive multiple of 512 bytes (got ${size})`);
        const { createQcow2 } = await import("./disk/qcow2.ts");
        try {
          createQcow2(args.path, size);
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          throw new ConfigError(`failed to create ${args.path}: ${code === "EEXIST" ? "it already exists" : code ?? String(e)}`);
        }
        code = 0;
      })
    .command("device", false, () => {}, async () => {
      // A jailed device process (started by `tsvm run`, never by hand): fds 3.. are set up for it.
      const { runDeviceProcess } = await import("./devices/sandbox/device_process.ts");
      code = await runDeviceProcess();
    })
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
      throw error ?? new ConfigError(withSuggestion(message, argv[0]));
    });
  return await reportingErrors(async () => {
    await parser.parseAsync();
    return code ?? 0;
  });
}

/** Runs `command`; a usage error or any other failure is logged and becomes the exit code. */
async function reportingErrors(command: () => Promise<number>): Promise<number> {
  try {
    return await command();
  } catch (e) {
    if (e instanceof ConfigError) {
      log.error(e.message);
      return EXIT_CODE.USAGE;
    }
    log.error(e instanceof Error ? e.message : String(e));
    return EXIT_CODE.VM_ERROR;
  }
}

/**
 * `tsvm run` with its arguments by long name: fastRunArgs' (`withoutYargs`) or yargs'.
 */
async function runCommand(args: Readonly<Record<string, unknown>>, options: MainOptions, withoutYargs: boolean): Promise<number> {
  const raw = rawRunOptions(args);
  const configPath = single("--config", args.config);
  const config = parseRunConfig(configPath === undefined ? raw : mergeRunOptions(readConfigFile(configPath), raw));
  log.debug(`configuration parsed at ${performance.now().toFixed(1)} ms`);
  return await startVm(config, options.handOff === true, withoutYargs);
}

/**
 * Runs the VM of `config`: with `handOff`, the devices' seccomp filters are compiled here and this
 * program runs itself again to run the VM without the CLI's code (vmm/hand_off.ts); the VM runs here
 * when that exec cannot happen, or without `handOff`.
 */
async function startVm(config: Config, handOffAllowed: boolean, withoutYargs: boolean): Promise<number> {
  let filters: ReadonlyMap<string, Uint8Array> | null = null;
  let inPlace = false;
  if (handOffAllowed) {
    // Only the kinds matter here: the program that runs the VM makes the specs again (and the MACs).
    const kinds = config.sandbox ? virtioDeviceSpecs(config, () => "").map((s) => s.kind) : [];
    const built = builtFilters(kinds, config.seccompPolicyDir, config.seccompLogFailures);
    filters = built ?? await compileFilters(kinds, config.seccompPolicyDir, config.seccompLogFailures);
    // This program runs the VM itself when it loaded nothing the VMM would not keep anyway: the
    // command line read without yargs, the filters built with tsvm, and the devices jailed (the
    // VMM then takes only run-time JIT settings; devices in the VMM want DEVICE_JSC's, which only a
    // restart sets). Otherwise it hands off (vmm/hand_off.ts).
    inPlace = withoutYargs && built !== null && config.sandbox;
    if (!inPlace) {
      log.debug(`seccomp filters ready at ${performance.now().toFixed(1)} ms; handing off`);
      handOff({ command: "run", config, filters }, config.sandbox ? VMM_JSC : { ...VMM_JSC, ...DEVICE_JSC });
    }
  }
  const { runVm } = await import("./vmm/run_vm.ts");
  return runVm(config, filters, inPlace);
}

/** As startVm, for `tsvm devices`: the filters compiled here, then the hand-off to a program that only serves. */
async function startDevices(config: DevicesConfig, handOffAllowed: boolean): Promise<number> {
  let filters: ReadonlyMap<string, Uint8Array> | null = null;
  if (handOffAllowed) {
    const kinds = config.sandbox ? config.devices.map((d) => d.spec.kind) : [];
    filters = builtFilters(kinds, config.seccompPolicyDir, config.seccompLogFailures) ?? await compileFilters(kinds, config.seccompPolicyDir, config.seccompLogFailures);
    handOff({ command: "devices", config, filters }, config.sandbox ? VMM_JSC : { ...VMM_JSC, ...DEVICE_JSC });
  }
  const { serveDevices } = await import("./serve_devices.ts");
  return serveDevices(config, filters);
}

const DEVICES_FLAGS = [
  "block", "net", "console", "rng", "balloon", "vsock", "disable-sandbox", "seccomp-policy-dir", "seccomp-log-failures", "log-level", "help",
];
/** The long flags of each command whose unknown flags get a "did you mean" (withSuggestion). */
const COMMAND_FLAGS: Readonly<Record<string, readonly string[]>> = { run: RUN_FLAGS, devices: DEVICES_FLAGS };

/** What the working directory reads as while yargs loads (loadYargs): no path can hold a NUL byte. */
const NO_FOLDER = "/\0";

/**
 * Loads yargs so that it reads none of the user's folders. Its platform module remembers where to
 * look for the program's package.json (to guess a version for `--version`): the folder yargs is
 * installed in, or, in a single executable where it is installed nowhere, the working directory.
 * Every yargs instance then listed that folder and each one above it, up to /, and read the first
 * package.json there: a FIFO of that name anywhere above the working directory hung tsvm, and a
 * large folder cost start-up time. tsvm states its own version (and turns yargs' off), so while the
 * module loads, the working directory reads as a path that cannot exist, and the search ends at
 * once. The platform module keeps the function it found, so the stand-in answers truthfully once
 * the module has loaded.
 */
async function loadYargs(): Promise<typeof import("yargs").default> {
  const cwd = process.cwd;
  let loading = true;
  process.cwd = () => (loading ? NO_FOLDER : cwd.call(process));
  try {
    return (await import("yargs")).default;
  } finally {
    loading = false;
    process.cwd = cwd;
  }
}

/** Adds "did you mean --x?" to yargs' unknown-argument messages when a flag of `command` is close, or names the command a refused flag belongs to. */
function withSuggestion(message: string, command: string | undefined): string {
  const match = /^Unknown arguments?: (.+)$/.exec(message);
  const flags = command === undefined ? undefined : COMMAND_FLAGS[command];
  if (!match || flags === undefined) return message;
  const unknown = match[1]!.split(", ")[0]!.replace(/^-+/, "");
  // A flag of another command: say whose it is rather than suggest the very flag that was refused.
  const owner = Object.keys(COMMAND_FLAGS).find((other) => other !== command && COMMAND_FLAGS[other]!.includes(unknown));
  if (owner !== undefined && !flags.includes(unknown)) return `${message}; --${unknown} is a flag of tsvm ${owner}, not of tsvm ${command}`;
  let best: string | null = null;
  let bestDistance = 3; // at most two edits away
  for (const flag of flags) {
    const d = editDistance(unknown, flag);
    if (d < bestDistance) {
      best = flag;
      bestDistance = d;
    }
  }
  return best ? `${message}; did you mean --${best}?` : message;
}

function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) {
      next[j] = Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    row = next;
  }
  return row[b.length]!;
}

/** Declares the SOCKET positional every control subcommand takes. */
function socketArg<T>(y: import("yargs").Argv<T>) {
  return y.positional("socket", { type: "string", demandOption: true, describe: "the VM's control socket (tsvm run -s PATH)" });
}

function byteSize(name: string, text: string): number {
  const n = parseByteSize(text);
  if (n === null) throw new ConfigError(`${name}: expected a size such as 1073741824, 512M or 1G (got ${JSON.stringify(text)})`);
  if (n === Infinity) throw new ConfigError(`${name}: ${text} is more bytes than tsvm counts (at most ${Number.MAX_SAFE_INTEGER})`);
  return n;
}

/** Sends one request and reports the answer: 0 on success, 1 when the VM or the socket says no. */
async function control(path: string, request: VmRequest): Promise<number> {
  const { ControlError, sendRequest } = await import("./vm_control/client.ts");
  try {
    const reply = sendRequest(path, request);
    if (reply.kind === "error") {
      log.error(`${request.kind}: ${reply.message}`);
      return 1;
    }
    if (reply.kind === "balloon_stats" || reply.kind === "vsock_stats") console.log(reply.json);
    return 0;
  } catch (e) {
    if (e instanceof ControlError) {
      log.error(e.message);
      return 1;
    }
    throw e;
  }
}

if (import.meta.main) {
  void main(Bun.argv.slice(2)).then((code) => {
    drainLog();
    process.exit(code);
  });
}
