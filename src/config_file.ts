// config_file.ts - `tsvm run --config FILE`: the run options as JSON, validated before use.
import * as v from "valibot";
import { ConfigError, type RawRunOptions } from "./config.ts";
import { readUserFile } from "./base/user_file.ts";

const SizeValue = v.union([v.string(), v.number()], "expected a size such as 512, \"512M\" or \"2G\"");
const StringList = v.array(v.string("expected a string"), "expected a list of strings");

/** The keys a config file may hold: the run flags' long names. */
const ConfigFileSchema = v.strictObject({
  kernel: v.optional(v.string()),
  initrd: v.optional(v.string()),
  mem: v.optional(SizeValue),
  cpus: v.optional(v.union([v.string(), v.number()], "expected a number of CPUs")),
  params: v.optional(v.union([v.string(), StringList])),
  serial: v.optional(StringList),
  block: v.optional(StringList),
  disk: v.optional(StringList),
  rwdisk: v.optional(StringList),
  root: v.optional(v.string()),
  rwroot: v.optional(v.string()),
  net: v.optional(StringList),
  "vhost-user": v.optional(StringList),
  "shared-dir": v.optional(StringList),
  virtiofsd: v.optional(v.string()),
  vsock: v.optional(v.string()),
  cid: v.optional(v.union([v.string(), v.number()])),
  host_ip: v.optional(v.string()),
  netmask: v.optional(v.string()),
  mac: v.optional(v.string()),
  socket: v.optional(v.string()),
  rng: v.optional(v.boolean("expected true or false")),
  balloon: v.optional(v.boolean("expected true or false")),
  "log-level": v.optional(v.string()),
  "disable-sandbox": v.optional(v.boolean("expected true or false")),
  "seccomp-policy-dir": v.optional(v.string()),
  "seccomp-log-failures": v.optional(v.boolean("expected true or false")),
});

/**
 * The largest config file read: the options of a VM with a few hundred devices fit in a few KiB, and
 * a file it has no place in (a device such as /dev/zero, a huge log named by mistake) is refused
 * before it is read.
 */
export const MAX_CONFIG_FILE = 1 << 20;

/**
 * Reads and validates `path`, a regular file of at most MAX_CONFIG_FILE bytes (a FIFO would hang the
 * start); errors name the file, the JSON path and what is accepted.
 */
export function readConfigFile(path: string): RawRunOptions {
  const read = readUserFile(path, MAX_CONFIG_FILE);
  if (!read.ok) throw new ConfigError(`--config ${path}: cannot read it (${read.error.reason})`);
  const text = new TextDecoder().decode(read.value);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`--config ${path}: not valid JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  const result = v.safeParse(ConfigFileSchema, json);
  if (!result.success) {
    const issue = result.issues[0]!;
    const where = issue.path?.map((p) => String(p.key)).join(".") ?? "";
    const message = issue.kind === "schema" && issue.type === "strict_object" && issue.path
      ? `unknown key (accepted: ${Object.keys(ConfigFileSchema.entries).join(", ")})`
      : issue.message;
    throw new ConfigError(`--config ${path}: ${where ? `${where}: ` : ""}${message}`);
  }
  const o = result.output;
  return {
    kernel: o.kernel, initrd: o.initrd, mem: o.mem, cpus: o.cpus,
    params: typeof o.params === "string" ? [o.params] : o.params,
    serial: o.serial, block: o.block, disk: o.disk, rwdisk: o.rwdisk, root: o.root, rwroot: o.rwroot,
    net: o.net, vhostUser: o["vhost-user"], sharedDir: o["shared-dir"], virtiofsd: o.virtiofsd, vsock: o.vsock, cid: o.cid, hostIp: o.host_ip, netmask: o.netmask, mac: o.mac, socket: o.socket,
    rng: o.rng, balloon: o.balloon, logLevel: o["log-level"], disableSandbox: o["disable-sandbox"],
    seccompPolicyDir: o["seccomp-policy-dir"], seccompLogFailures: o["seccomp-log-failures"],
  };
}

/** Lays command-line options over the file's: a flag given on the command line wins, lists included. */
export function mergeRunOptions(file: RawRunOptions, flags: RawRunOptions): RawRunOptions {
  const merged: Record<string, unknown> = { ...file };
  for (const [key, value] of Object.entries(flags)) if (value !== undefined) merged[key] = value;
  return merged as RawRunOptions;
}
