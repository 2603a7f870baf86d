// run_options.ts - the options of `tsvm run`, declared once: yargs builds the help and checks any
// command line from this table, and the common ones skip yargs altogether (fastRunArgs).
//
// Loading yargs and letting it parse costs the first program of `tsvm run` about two thirds of its
// time (~8 ms to load, ~10 to parse on the development machine, against ~19 ms for a whole compiled
// Bun program that prints one byte). A command line made only of this table's flags, in their plain
// forms, is read here instead into the very object yargs would give; anything else (help, an
// unknown or misspelt flag, a flag's value that starts with "-", yargs' other spellings) goes to
// yargs, which parses it or explains what is wrong. test/run_options.test.ts checks that both give
// the same options.
import type { Argv } from "yargs";
import type { RawRunOptions } from "./config.ts";
import { ConfigError } from "./config.ts";

/** One flag of `tsvm run`. */
type RunOption = {
  readonly name: string;
  readonly alias?: string;
  readonly type: "string" | "boolean";
  readonly describe: string;
};

export const RUN_OPTIONS: readonly RunOption[] = [
  { name: "mem", alias: "m", type: "string", describe: "guest memory: MiB, or a size with K/M/G/T (default 256)" },
  { name: "cpus", alias: "c", type: "string", describe: "number of vCPUs (default 1)" },
  { name: "params", alias: "p", type: "string", describe: "kernel command line parameters (repeatable)" },
  { name: "initrd", alias: "i", type: "string", describe: "initial ramdisk loaded for the kernel" },
  { name: "serial", type: "string", describe: "serial port: type=stdout|file|sink,num=1..4[,path=P][,console=true][,stdin=true] (repeatable)" },
  { name: "log-level", type: "string", describe: "error, warn, info or debug (default warn)" },
  { name: "rng", type: "boolean", describe: "virtio-rng device, on by default (--no-rng to leave it out)" },
  { name: "balloon", type: "boolean", describe: "virtio-balloon device, on by default (--no-balloon to leave it out)" },
  { name: "config", type: "string", describe: "JSON file with these options by long name; flags override it" },
  { name: "disable-sandbox", type: "boolean", describe: "run the devices inside this process, without jails" },
  { name: "seccomp-policy-dir", type: "string", describe: "read device seccomp policies from this directory" },
  { name: "seccomp-log-failures", type: "boolean", describe: "log disallowed system calls instead of killing the device" },
  { name: "block", type: "string", describe: "virtio-blk disk: path=P[,ro=true][,id=ID][,root=true] (repeatable)" },
  { name: "disk", alias: "d", type: "string", describe: "read-only disk image (repeatable)" },
  { name: "rwdisk", type: "string", describe: "read-write disk image (repeatable)" },
  { name: "root", alias: "r", type: "string", describe: "read-only root disk (adds root=/dev/vda ro)" },
  { name: "rwroot", type: "string", describe: "read-write root disk (adds root=/dev/vda rw)" },
  { name: "net", type: "string", describe: "virtio-net on a tap: tap-name=NAME or tap-fd=N, [,mac=MAC] (repeatable)" },
  { name: "vhost-user", type: "string", describe: "a device served by a vhost-user back-end: TYPE,socket=PATH[,tag=TAG][,reconnect=true] (repeatable)" },
  { name: "shared-dir", type: "string", describe: "share a host directory through virtio-fs: PATH:TAG (repeatable; runs virtiofsd)" },
  { name: "virtiofsd", type: "string", describe: "the virtiofsd program for --shared-dir (default: Debian's /usr/lib/qemu/virtiofsd)" },
  { name: "vsock", type: "string", describe: "virtio-vsock to host Unix sockets: cid=N,uds=PATH (host programs connect to PATH; the guest reaches port P at PATH_P)" },
  { name: "cid", type: "string", describe: "virtio-vsock through the kernel's vhost-vsock (/dev/vhost-vsock) with this guest CID" },
  { name: "host_ip", type: "string", describe: "create a tap with this host IPv4 address (with --netmask and --mac)" },
  { name: "netmask", type: "string", describe: "netmask of the created tap" },
  { name: "mac", type: "string", describe: "guest MAC address for the created tap" },
  { name: "socket", alias: "s", type: "string", describe: "control socket path for tsvm stop, suspend, resume, balloon, disk" },
];

/** Declares `run`'s positional kernel and every flag of RUN_OPTIONS on `y`. */
export function declareRunOptions<T>(y: Argv<T>): Argv<T> {
  let declared = y.positional("kernel", { type: "string", describe: "kernel image: ELF vmlinux or bzImage" });
  for (const o of RUN_OPTIONS) {
    declared = declared.option(o.name, { type: o.type, describe: o.describe, ...(o.alias === undefined ? {} : { alias: o.alias }) }) as typeof declared;
  }
  return declared as Argv<T>;
}

/** `run`'s long flags (and --no-x for its switches), for "did you mean" suggestions. */
export const RUN_FLAGS: readonly string[] = [
  ...RUN_OPTIONS.flatMap((o) => (o.type === "boolean" ? [o.name, `no-${o.name}`] : [o.name])),
  "help",
];

/** Parsed arguments by long name (the kernel as `kernel`): a string, or a list for a repeated flag, or a switch. */
export type RunArgs = Readonly<Record<string, string | string[] | boolean | undefined>>;

const BY_LONG = new Map(RUN_OPTIONS.map((o) => [o.name, o]));
const BY_SHORT = new Map(RUN_OPTIONS.flatMap((o) => (o.alias === undefined ? [] : [[o.alias, o] as const])));

/**
 * Reads `argv` (the words after `run`) as yargs would, or returns null when it does not only hold
 * the plain forms: `--flag value`, `--flag=value`, `-f value`, `--switch`, `--no-switch` and one
 * kernel path. Null sends the command line to yargs.
 */
export function fastRunArgs(argv: readonly string[]): RunArgs | null {
  const args: Record<string, string | string[] | boolean | undefined> = {};
  const seen = new Set<string>();
  let kernel: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    if (!word.startsWith("-")) {
      if (kernel !== undefined || word === "") return null;
      kernel = word;
      continue;
    }
    let option: RunOption | undefined;
    let value: string | undefined;
    if (word.startsWith("--")) {
      const eq = word.indexOf("=");
      const name = eq < 0 ? word.slice(2) : word.slice(2, eq);
      if (eq >= 0) value = word.slice(eq + 1);
      option = BY_LONG.get(name);
      if (option === undefined && eq < 0 && name.startsWith("no-")) {
        const negated = BY_LONG.get(name.slice(3));
        if (negated?.type !== "boolean" || !setSwitch(args, seen, negated.name, false, argv[i + 1])) return null;
        continue;
      }
    } else if (word.length === 2) {
      option = BY_SHORT.get(word[1]!);
    }
    if (option === undefined) return null;
    if (option.type === "boolean") {
      if (value !== undefined || !setSwitch(args, seen, option.name, true, argv[i + 1])) return null;
      continue;
    }
    if (value === undefined) {
      value = argv[i + 1];
      i++;
    }
    if (value === undefined || value === "" || value.startsWith("-")) return null;
    const before = args[option.name];
    args[option.name] = before === undefined ? value : [...(Array.isArray(before) ? before : [before as string]), value];
  }
  args.kernel = kernel;
  return args;
}

/** Sets a switch given once, not followed by a word yargs would take as its value. */
function setSwitch(args: Record<string, unknown>, seen: Set<string>, name: string, on: boolean, next: string | undefined): boolean {
  if (seen.has(name) || next === "true" || next === "false") return false;
  seen.add(name);
  args[name] = on;
  return true;
}

/** What parseRunConfig takes, from `run`'s arguments by long name (yargs' or fastRunArgs'). */
export function rawRunOptions(args: Readonly<Record<string, unknown>>): RawRunOptions {
  const a = args as Record<string, never>;
  return {
    kernel: a.kernel, initrd: a.initrd, mem: a.mem, cpus: a.cpus,
    params: repeated(a.params), serial: repeated(a.serial), logLevel: a["log-level"], rng: a.rng, balloon: a.balloon,
    block: repeated(a.block), disk: repeated(a.disk), rwdisk: repeated(a.rwdisk),
    root: single("--root", a.root), rwroot: single("--rwroot", a.rwroot),
    net: repeated(a.net), vhostUser: repeated(a["vhost-user"]), sharedDir: repeated(a["shared-dir"]),
    virtiofsd: single("--virtiofsd", a.virtiofsd), vsock: single("--vsock", a.vsock), cid: single("--cid", a.cid),
    hostIp: single("--host_ip", a.host_ip), netmask: single("--netmask", a.netmask),
    mac: single("--mac", a.mac), socket: single("--socket", a.socket),
    disableSandbox: a["disable-sandbox"], seccompPolicyDir: single("--seccomp-policy-dir", a["seccomp-policy-dir"]),
    seccompLogFailures: a["seccomp-log-failures"],
  };
}

/** Returns a flag that may be given once, refusing repeats. */
export function single(flag: string, value: unknown): string | undefined {
  if (Array.isArray(value)) throw new ConfigError(`${flag} can be given only once`);
  return value === undefined ? undefined : String(value);
}

/** Returns a repeatable flag's values as a list (yargs gives a string for one use, an array for several). */
export function repeated(value: unknown): string[] | undefined {
  if (value === undefined) return undefined;
  return (Array.isArray(value) ? value : [value]).map(String);
}
