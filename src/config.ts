// config.ts - the validated settings of one `tsvm run`, built from flags before anything is created.
import * as v from "valibot";
import { LOG_LEVELS, type LogLevel } from "./base/log.ts";
import { MIN_MEMORY_SIZE } from "./arch/x86_64/layout.ts";
import type { DeviceSpec, OutputSpec } from "./devices/device_spec.ts";
import { BACKING_FILES } from "./disk/qcow2.ts";
import { BLOCK_MAX_QUEUES, DEVICE_TYPE_NAMES, DEVICE_TYPES, type DeviceTypeName } from "./devices/vhost_user/device_types.ts";

/** Raised for user input that cannot become a Config; the CLI prints it and exits 2. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

const MIB = 1024 * 1024;
/** 1 TiB: above this the guest address space and the host's memfd sizes stop being sensible. */
const MAX_MEMORY_SIZE = 1024 * 1024 * MIB;
/** crosvm's default when -m is not given. */
export const DEFAULT_MEMORY_SIZE = 256 * MIB;
/** The in-kernel LAPIC ids and our MP table use 8 bits; 254 leaves room for the IOAPIC id. */
export const MAX_CPUS = 254;

const SIZE_SUFFIX: Readonly<Record<string, number>> = { "": MIB, K: 1024, M: MIB, G: 1024 * MIB, T: 1024 * 1024 * MIB };

/**
 * Parses a memory size: a bare number is MiB (crosvm's -m), or a number with K, M, G or T; null when
 * it is not a size, Infinity when it is one too large to count in bytes exactly (so that it fails
 * the caller's upper bound, which names the limit, rather than reading as malformed).
 */
export function parseSize(text: string): number | null {
  const match = /^(\d+)([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!match) return null;
  const size = Number(match[1]) * SIZE_SUFFIX[match[2]!.toUpperCase()]!;
  return Number.isSafeInteger(size) ? size : Infinity;
}

/** Parses a byte count: a bare number is bytes, or a number with K, M, G or T (binary units); null and Infinity as parseSize. */
export function parseByteSize(text: string): number | null {
  const match = /^(\d+)([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!match) return null;
  const unit = match[2] === "" ? 1 : SIZE_SUFFIX[match[2]!.toUpperCase()]!;
  const size = Number(match[1]) * unit;
  return Number.isSafeInteger(size) ? size : Infinity;
}

/** The longest path a Unix socket address holds (sun_path is 108 bytes with the NUL). */
export const MAX_SOCKET_PATH = 107;

export const SERIAL_TYPES = ["stdout", "file", "sink"] as const;
export type SerialType = (typeof SERIAL_TYPES)[number];
export const SERIAL_HARDWARE = ["serial", "virtio-console"] as const;
const SERIAL_KEYS = ["type", "hardware", "num", "path", "console", "stdin"] as const;

const BooleanText = v.pipe(v.picklist(["true", "false"], "expected true or false"), v.transform((s) => s === "true"));

const SerialSchema = v.pipe(
  v.strictObject({
    type: v.optional(v.picklist(SERIAL_TYPES, `expected one of ${SERIAL_TYPES.join(", ")}`), "sink"),
    hardware: v.optional(v.picklist(SERIAL_HARDWARE, `expected one of ${SERIAL_HARDWARE.join(", ")}`), "serial"),
    num: v.pipe(
      v.string("num is required"),
      v.transform(Number),
      v.integer("expected a port number 1-4"),
      v.minValue(1, "expected a port number 1-4"),
      v.maxValue(4, "expected a port number 1-4"),
    ),
    path: v.optional(v.pipe(v.string(), v.minLength(1, "expected a file path"))),
    console: v.optional(BooleanText, "false"),
    stdin: v.optional(BooleanText, "false"),
  }),
  v.check((s) => s.type !== "file" || s.path !== undefined, "type=file needs path=PATH"),
  v.check((s) => s.type === "file" || s.path === undefined, "path= is only for type=file"),
);
export type SerialConfig = v.InferOutput<typeof SerialSchema>;

/** Splits crosvm's `key=value,key=value` option syntax, refusing unknown and repeated keys. */
export function parseKeyValues(flag: string, text: string, keys: readonly string[], positionalKey?: string): Record<string, string> {
  const fields: Record<string, string> = {};
  text.split(",").forEach((part, index) => {
    if (part === "") return;
    const eq = part.indexOf("=");
    if (eq < 0 && index === 0 && positionalKey) {
      fields[positionalKey] = part; // crosvm allows a bare first value: --block disk.img,ro=true
      return;
    }
    const key = eq < 0 ? part : part.slice(0, eq);
    if (!keys.includes(key)) throw new ConfigError(`${flag} ${text}: unknown key "${key}" (accepted: ${keys.join(", ")})`);
    if (eq < 0) throw new ConfigError(`${flag} ${text}: "${key}" needs a value (${key}=...)`);
    if (key in fields) throw new ConfigError(`${flag} ${text}: "${key}" is given twice`);
    fields[key] = part.slice(eq + 1);
  });
  return fields;
}

/** Parses crosvm's `--serial type=stdout,num=1,console=true,...` syntax. */
export function parseSerial(text: string): SerialConfig {
  const fields = parseKeyValues("--serial", text, SERIAL_KEYS);
  if (fields.num === undefined) throw new ConfigError(`--serial ${text}: num=1..4 is required`);
  const result = v.safeParse(SerialSchema, fields);
  if (!result.success) throw new ConfigError(`--serial ${text}: ${describeIssues(result.issues)}`);
  return result.output;
}

const BLOCK_KEYS = ["path", "ro", "id", "root", "format", "o_direct", "num-queues", "backing_files"] as const;
export const DISK_FORMATS = ["raw", "qcow2"] as const;
/** virtio-blk serial numbers are at most 20 bytes (VIRTIO_BLK_ID_BYTES). */
const BLOCK_ID_MAX = 20;
const BlockSchema = v.strictObject({
  path: v.pipe(v.string("path=PATH is required"), v.minLength(1, "path=PATH is required")),
  ro: v.optional(BooleanText, "false"),
  id: v.optional(v.pipe(v.string(), v.maxLength(BLOCK_ID_MAX, `id is at most ${BLOCK_ID_MAX} characters`)), ""),
  root: v.optional(BooleanText, "false"),
  /** The image format; without it the format is recognised by the image's magic (QEMU's probing). */
  format: v.optional(v.picklist(DISK_FORMATS, `expected one of ${DISK_FORMATS.join(", ")}`)),
  /** O_DIRECT: the host's page cache is bypassed (crosvm's key; QEMU's cache=none). */
  o_direct: v.optional(BooleanText, "false"),
  /** Which backing files a qcow2 image may name: inside its own directory (dir), any, or none (disk/qcow2.ts). */
  backing_files: v.optional(v.picklist(BACKING_FILES, `expected one of ${BACKING_FILES.join(", ")}`), "dir"),
  /** Request queues (QEMU's and crosvm's key); without it, one per vCPU up to BLOCK_MAX_QUEUES. */
  "num-queues": v.optional(v.pipe(
    v.string(),
    v.regex(/^[0-9]+$/, `expected a number of queues from 1 to ${BLOCK_MAX_QUEUES}`),
    v.transform(Number),
    v.minValue(1, `expected a number of queues from 1 to ${BLOCK_MAX_QUEUES}`),
    v.maxValue(BLOCK_MAX_QUEUES, `expected a number of queues from 1 to ${BLOCK_MAX_QUEUES}`),
  )),
});
export type BlockConfig = v.InferOutput<typeof BlockSchema>;

/**
 * Parses `--block path=P[,ro=true][,id=ID][,root=true][,format=raw|qcow2][,o_direct=true][,num-queues=N][,backing_files=dir|any|off]`
 * (a bare first value is the path).
 */
export function parseBlock(text: string, flag = "--block"): BlockConfig {
  const fields = parseKeyValues(flag, text, BLOCK_KEYS, "path");
  if (fields.path === undefined) throw new ConfigError(`${flag} ${text}: path=PATH is required`);
  const result = v.safeParse(BlockSchema, fields);
  if (!result.success) throw new ConfigError(`${flag} ${text}: ${describeIssues(result.issues)}`);
  return result.output;
}

const NET_KEYS = ["tap-name", "tap-fd", "mac"] as const;
const MAC_PATTERN = /^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/;
const MacText = v.pipe(v.string(), v.regex(MAC_PATTERN, "expected a MAC address such as 52:54:00:12:34:56"));
const Ipv4Text = v.pipe(v.string(), v.ipv4("expected an IPv4 address such as 192.168.10.1"));

/** A virtio-net device: an existing tap by name or fd, or one tsvm creates with an address. */
export type NetConfig =
  | { readonly kind: "tap-name"; readonly name: string; readonly mac: string | undefined }
  | { readonly kind: "tap-fd"; readonly fd: number; readonly mac: string | undefined }
  | { readonly kind: "create"; readonly hostIp: string; readonly netmask: string; readonly mac: string | undefined };

const NetSchema = v.pipe(
  v.strictObject({
    "tap-name": v.optional(v.pipe(v.string(), v.minLength(1), v.maxLength(15, "tap names are at most 15 characters"))),
    "tap-fd": v.optional(v.pipe(v.string(), v.transform(Number), v.integer("expected an fd number"), v.minValue(3, "expected an fd number >= 3"))),
    mac: v.optional(MacText),
  }),
  v.check((n) => (n["tap-name"] === undefined) !== (n["tap-fd"] === undefined), "give exactly one of tap-name=NAME or tap-fd=N"),
);

/** Parses `--net tap-name=NAME[,mac=MAC]` or `--net tap-fd=N[,mac=MAC]`. */
export function parseNet(text: string): NetConfig {
  const result = v.safeParse(NetSchema, parseKeyValues("--net", text, NET_KEYS));
  if (!result.success) throw new ConfigError(`--net ${text}: ${describeIssues(result.issues)}`);
  const o = result.output;
  return o["tap-name"] !== undefined
    ? { kind: "tap-name", name: o["tap-name"], mac: o.mac }
    : { kind: "tap-fd", fd: o["tap-fd"]!, mac: o.mac };
}

/** A device served by another program's vhost-user back-end (`--vhost-user TYPE,socket=PATH`). */
export type VhostUserConfig = {
  readonly type: DeviceTypeName;
  readonly socket: string;
  /** The configuration the VMM gives the guest itself (virtio-fs: the tag). */
  readonly localConfig: Uint8Array | undefined;
  /** Wait for a failed back-end to come back (and carry on) instead of stopping the VM. */
  readonly reconnect: boolean;
};

const VHOST_USER_KEYS = ["socket", "tag", "reconnect"] as const;
/** virtio-fs tags are at most 36 bytes (struct virtio_fs_config). */
const FS_TAG_MAX = 36;

/** Returns virtio-fs's configuration: the tag, NUL-padded to 36 bytes, and one request queue. */
export function fsConfig(tag: string): Uint8Array {
  const config = new Uint8Array(DEVICE_TYPES.fs.configSize);
  config.set(new TextEncoder().encode(tag));
  new DataView(config.buffer).setUint32(FS_TAG_MAX, 1, true); // num_request_queues
  return config;
}

/** Parses `--vhost-user TYPE,socket=PATH[,tag=TAG][,reconnect=true]` (crosvm's syntax); TYPE is a name or a virtio device id. */
export function parseVhostUser(text: string): VhostUserConfig {
  const [typeText = "", ...rest] = text.split(",");
  const byId = Object.entries(DEVICE_TYPES).find(([, t]) => String(t.deviceType) === typeText)?.[0];
  const type = (DEVICE_TYPE_NAMES as readonly string[]).includes(typeText) ? typeText as DeviceTypeName : byId as DeviceTypeName | undefined;
  if (type === undefined) throw new ConfigError(`--vhost-user ${text}: unknown device type "${typeText}" (accepted: ${DEVICE_TYPE_NAMES.join(", ")}, or their virtio device ids)`);
  const fields = parseKeyValues("--vhost-user", rest.join(","), VHOST_USER_KEYS);
  if (fields.socket === undefined || fields.socket === "") throw new ConfigError(`--vhost-user ${text}: socket=PATH is required`);
  if (new TextEncoder().encode(fields.socket).length > MAX_SOCKET_PATH) throw new ConfigError(`--vhost-user ${text}: the socket path is longer than ${MAX_SOCKET_PATH} bytes`);
  if (fields.reconnect !== undefined && fields.reconnect !== "true" && fields.reconnect !== "false") {
    throw new ConfigError(`--vhost-user ${text}: reconnect= takes true or false`);
  }
  const reconnect = fields.reconnect === "true";
  if (type === "fs") {
    const tag = fields.tag ?? "";
    if (tag === "" || new TextEncoder().encode(tag).length > FS_TAG_MAX) throw new ConfigError(`--vhost-user ${text}: fs needs tag=TAG (1-${FS_TAG_MAX} bytes)`);
    return { type, socket: fields.socket, localConfig: fsConfig(tag), reconnect };
  }
  if (fields.tag !== undefined) throw new ConfigError(`--vhost-user ${text}: tag= is only for fs`);
  return { type, socket: fields.socket, localConfig: undefined, reconnect };
}

/** The vsock device (`--vsock cid=N,uds=PATH`): the guest's CID and the host's Unix socket. */
export type VsockConfig = { readonly cid: number; readonly uds: string };

const VSOCK_KEYS = ["cid", "uds"] as const;
/** CIDs 0-2 are the hypervisor, local and host; 2^32-1 is VMADDR_CID_ANY. */
export const MIN_GUEST_CID = 3;
export const MAX_GUEST_CID = 0xffff_fffe;
/** The guest's host port P is reached at `<uds>_P`: up to 11 bytes more than uds itself. */
const MAX_VSOCK_UDS = MAX_SOCKET_PATH - 11;

const CidText = v.pipe(
  v.string("cid=N is required"),
  v.regex(/^[0-9]+$/, `expected a CID from ${MIN_GUEST_CID} to ${MAX_GUEST_CID}`),
  v.transform(Number),
  v.minValue(MIN_GUEST_CID, `expected a CID from ${MIN_GUEST_CID} to ${MAX_GUEST_CID} (0-2 are reserved)`),
  v.maxValue(MAX_GUEST_CID, `expected a CID from ${MIN_GUEST_CID} to ${MAX_GUEST_CID}`),
);
const VsockSchema = v.strictObject({
  cid: CidText,
  uds: v.pipe(
    v.string("uds=PATH is required"),
    v.minLength(1, "uds=PATH is required"),
    v.check((p) => new TextEncoder().encode(p).length <= MAX_VSOCK_UDS, `the socket path is at most ${MAX_VSOCK_UDS} bytes (its per-port sockets add "_<port>")`),
  ),
});

/** Parses `--vsock cid=N,uds=PATH` (Firecracker's host side: PATH, and PATH_<port> for the guest's connections). */
export function parseVsock(text: string): VsockConfig {
  const fields = parseKeyValues("--vsock", text, VSOCK_KEYS);
  for (const key of VSOCK_KEYS) if (fields[key] === undefined) throw new ConfigError(`--vsock ${text}: ${key}=${key === "cid" ? "N" : "PATH"} is required`);
  const result = v.safeParse(VsockSchema, fields);
  if (!result.success) throw new ConfigError(`--vsock ${text}: ${describeIssues(result.issues)}`);
  return result.output;
}

/** Parses crosvm's `--cid N` (the kernel's vhost-vsock). */
export function parseCid(text: string | number): number {
  const result = v.safeParse(CidText, String(text));
  if (!result.success) throw new ConfigError(`--cid ${text}: ${describeIssues(result.issues)}`);
  return result.output;
}

/** A host directory shared with the guest through virtio-fs (`--shared-dir PATH:TAG`). */
export type SharedDirConfig = { readonly path: string; readonly tag: string };

/** Parses crosvm's `--shared-dir PATH:TAG`. */
export function parseSharedDir(text: string): SharedDirConfig {
  const at = text.lastIndexOf(":");
  const path = at < 0 ? "" : text.slice(0, at);
  const tag = at < 0 ? "" : text.slice(at + 1);
  if (path === "" || tag === "") throw new ConfigError(`--shared-dir ${text}: expected PATH:TAG`);
  if (new TextEncoder().encode(tag).length > FS_TAG_MAX) throw new ConfigError(`--shared-dir ${text}: the tag is at most ${FS_TAG_MAX} bytes`);
  return { path, tag };
}

/** The settings `tsvm run` works from. */
export type Config = {
  /** Path of the kernel, or null for the built-in guest. */
  readonly kernel: string | null;
  readonly initrd: string | null;
  readonly memorySize: number;
  readonly cpus: number;
  readonly params: readonly string[];
  readonly serials: readonly SerialConfig[];
  readonly logLevel: LogLevel;
  /** virtio-rng, on unless --no-rng (as in crosvm). */
  readonly rng: boolean;
  /** virtio-balloon, on unless --no-balloon (as in crosvm). */
  readonly balloon: boolean;
  /** Disks in PCI order: a root disk first, then the others as given. */
  readonly blocks: readonly BlockConfig[];
  readonly nets: readonly NetConfig[];
  /** Devices served by other programs' vhost-user back-ends, after tsvm's own in PCI order. */
  readonly vhostUser: readonly VhostUserConfig[];
  /** Directories shared through virtio-fs, each served by a virtiofsd tsvm starts. */
  readonly sharedDirs: readonly SharedDirConfig[];
  /** The virtiofsd to run (--virtiofsd), or null to look for one. */
  readonly virtiofsd: string | null;
  /** tsvm's own vsock device (--vsock), or null. */
  readonly vsock: VsockConfig | null;
  /** The guest CID for the kernel's vhost-vsock (--cid), or null. */
  readonly cid: number | null;
  /** The control socket path (-s/--socket), or null. */
  readonly socket: string | null;
  /** Run each virtio device in its own jailed process (off with --disable-sandbox). */
  readonly sandbox: boolean;
  /** Where seccomp policies are read from instead of the embedded ones (--seccomp-policy-dir). */
  readonly seccompPolicyDir: string | null;
  /** Log system calls a policy does not allow instead of killing the device (--seccomp-log-failures). */
  readonly seccompLogFailures: boolean;
};

/** The run options as they come from the command line, before validation. */
export type RawRunOptions = {
  readonly kernel?: string | undefined;
  readonly initrd?: string | undefined;
  readonly mem?: string | number | undefined;
  readonly cpus?: string | number | undefined;
  readonly params?: readonly string[] | undefined;
  readonly serial?: readonly string[] | undefined;
  readonly logLevel?: string | undefined;
  readonly rng?: boolean | undefined;
  readonly balloon?: boolean | undefined;
  readonly block?: readonly string[] | undefined;
  /** crosvm 2020's disk flags: read-only and read-write disks and root disks. */
  readonly disk?: readonly string[] | undefined;
  readonly rwdisk?: readonly string[] | undefined;
  readonly root?: string | undefined;
  readonly rwroot?: string | undefined;
  readonly net?: readonly string[] | undefined;
  readonly vhostUser?: readonly string[] | undefined;
  readonly sharedDir?: readonly string[] | undefined;
  readonly virtiofsd?: string | undefined;
  readonly vsock?: string | undefined;
  readonly cid?: string | number | undefined;
  /** crosvm 2020's tap creation: --host_ip, --netmask and --mac together. */
  readonly hostIp?: string | undefined;
  readonly netmask?: string | undefined;
  readonly mac?: string | undefined;
  readonly socket?: string | undefined;
  readonly disableSandbox?: boolean | undefined;
  readonly seccompPolicyDir?: string | undefined;
  readonly seccompLogFailures?: boolean | undefined;
};

const RunSchema = v.object({
  kernel: v.optional(v.pipe(v.string(), v.minLength(1, "expected a kernel path"))),
  initrd: v.optional(v.pipe(v.string(), v.minLength(1, "expected an initrd path"))),
  mem: v.optional(v.pipe(
    v.union([v.string(), v.number()], "expected a size such as 512, 512M or 2G"),
    v.transform((m) => parseSize(String(m))),
    v.number("expected a size such as 512, 512M or 2G"),
    v.minValue(MIN_MEMORY_SIZE, `must be at least ${MIN_MEMORY_SIZE / MIB} MiB`),
    v.maxValue(MAX_MEMORY_SIZE, "must be at most 1T"),
    v.check((n) => n % 4096 === 0, "must be a multiple of 4 KiB"),
  )),
  cpus: v.optional(v.pipe(
    v.union([v.string(), v.number()]),
    v.transform(Number),
    v.integer("expected a whole number of CPUs"),
    v.minValue(1, "expected at least 1 CPU"),
    v.maxValue(MAX_CPUS, `expected at most ${MAX_CPUS} CPUs`),
  )),
  params: v.optional(v.array(v.string())),
  logLevel: v.optional(v.picklist(LOG_LEVELS, `expected one of ${LOG_LEVELS.join(", ")}`)),
});

const FLAG_NAMES: Readonly<Record<string, string>> = {
  kernel: "KERNEL", initrd: "--initrd", mem: "--mem", cpus: "--cpus", params: "--params", logLevel: "--log-level",
};

export function describeIssues(issues: readonly v.BaseIssue<unknown>[]): string {
  return issues.map((i) => {
    const path = i.path?.map((p) => String(p.key)).join(".");
    return path ? `${path}: ${i.message}` : i.message;
  }).join("; ");
}

/** Validates raw run options into a Config; throws ConfigError naming the flag and what it accepts. */
export function parseRunConfig(raw: RawRunOptions): Config {
  const result = v.safeParse(RunSchema, raw);
  if (!result.success) {
    const issue = result.issues[0]!;
    const key = String(issue.path?.[0]?.key ?? "");
    // What the user gave, not what a transform made of it (a size that does not parse is null there).
    const given = Object.hasOwn(raw, key) ? (raw as Record<string, unknown>)[key] : issue.input;
    throw new ConfigError(`${FLAG_NAMES[key] ?? key}: ${issue.message} (got ${JSON.stringify(given)})`);
  }
  const serials = (raw.serial ?? []).map(parseSerial);
  const nums = new Set<number>();
  if (serials.some((s) => s.hardware === "virtio-console" && s.num !== 1)) throw new ConfigError("--serial: tsvm has one virtio-console port, num=1");
  for (const s of serials) {
    const key = s.hardware === "serial" ? s.num : 100 + s.num;
    if (nums.has(key)) throw new ConfigError(`--serial: ${s.hardware} num=${s.num} is configured twice`);
    nums.add(key);
  }
  if (serials.filter((s) => s.console).length > 1) throw new ConfigError("--serial: only one port can be the console");
  if (serials.filter((s) => s.stdin).length > 1) throw new ConfigError("--serial: only one port can read stdin");
  const o = result.output;
  const blocks = [
    ...(raw.root !== undefined ? [{ ...parseBlock(raw.root, "--root"), ro: true, root: true }] : []),
    ...(raw.rwroot !== undefined ? [{ ...parseBlock(raw.rwroot, "--rwroot"), ro: false, root: true }] : []),
    ...(raw.block ?? []).map((b) => parseBlock(b)),
    ...(raw.disk ?? []).map((b) => ({ ...parseBlock(b, "--disk"), ro: true })),
    ...(raw.rwdisk ?? []).map((b) => ({ ...parseBlock(b, "--rwdisk"), ro: false })),
  ].sort((a, b) => Number(b.root) - Number(a.root));
  if (blocks.filter((b) => b.root).length > 1) throw new ConfigError("only one disk can be the root disk");
  // crosvm's default: COM1 on stdout, the console, reading stdin, unless a port is the console
  // already or COM1 is configured otherwise.
  const hasConsole = serials.some((s) => s.console);
  const hasCom1 = serials.some((s) => s.hardware === "serial" && s.num === 1);
  if (!hasConsole && !hasCom1) serials.unshift({ type: "stdout", hardware: "serial", num: 1, console: true, stdin: !serials.some((s) => s.stdin) });
  const nets = (raw.net ?? []).map(parseNet);
  if (raw.hostIp !== undefined || raw.netmask !== undefined || raw.mac !== undefined) {
    const created = v.safeParse(v.object({ hostIp: Ipv4Text, netmask: Ipv4Text, mac: MacText }), { hostIp: raw.hostIp, netmask: raw.netmask, mac: raw.mac });
    if (!created.success) throw new ConfigError(`--host_ip, --netmask and --mac go together: ${describeIssues(created.issues)}`);
    nets.push({ kind: "create", ...created.output });
  }
  const vsock = raw.vsock === undefined ? null : parseVsock(raw.vsock);
  const cid = raw.cid === undefined ? null : parseCid(raw.cid);
  if (vsock !== null && cid !== null) throw new ConfigError("--vsock and --cid both add a vsock device; give one of them");
  return {
    kernel: o.kernel ?? null,
    initrd: o.initrd ?? null,
    memorySize: o.mem ?? DEFAULT_MEMORY_SIZE,
    cpus: o.cpus ?? 1,
    params: o.params ?? [],
    serials,
    logLevel: o.logLevel ?? "warn",
    rng: raw.rng ?? true,
    balloon: raw.balloon ?? true,
    blocks,
    nets,
    vhostUser: (raw.vhostUser ?? []).map(parseVhostUser),
    sharedDirs: (raw.sharedDir ?? []).map(parseSharedDir),
    virtiofsd: raw.virtiofsd ?? null,
    vsock,
    cid,
    socket: checkSocketPath(raw.socket),
    sandbox: !(raw.disableSandbox ?? false),
    seccompPolicyDir: raw.seccompPolicyDir ?? null,
    seccompLogFailures: raw.seccompLogFailures ?? false,
  };
}

export function checkSocketPath(path: string | undefined): string | null {
  if (path === undefined) return null;
  if (path.length === 0 || new TextEncoder().encode(path).length > MAX_SOCKET_PATH) {
    throw new ConfigError(`--socket: expected a path of 1-${MAX_SOCKET_PATH} bytes (got ${JSON.stringify(path)})`);
  }
  return path;
}

/** A disk's request queues when `num-queues` is not given: one per vCPU (as QEMU does), up to BLOCK_MAX_QUEUES. */
export function defaultBlockQueues(cpus: number): number {
  return Math.min(cpus, BLOCK_MAX_QUEUES);
}

/** Where a port's output goes, as a device spec says it. */
export function outputSpec(s: SerialConfig): OutputSpec {
  return s.type === "file" ? { type: "file", path: s.path! } : { type: s.type };
}

/**
 * The virtio devices a Config asks for, in PCI slot order: disks (root first), the virtio console,
 * network devices, then rng and balloon unless left out, then vsock. `mac` gives each net device without one a
 * MAC address (random, locally administered, by default).
 */
export function virtioDeviceSpecs(config: Config, mac: () => string): DeviceSpec[] {
  const specs: DeviceSpec[] = config.blocks.map((b, i) => ({
    kind: "block", label: `block${i}`, path: b.path, readOnly: b.ro, id: b.id, format: b.format ?? null, direct: b.o_direct,
    backingFiles: b.backing_files, queues: b["num-queues"] ?? defaultBlockQueues(config.cpus),
  }));
  const consolePort = config.serials.find((s) => s.hardware === "virtio-console");
  if (consolePort) specs.push({ kind: "console", label: "console", output: outputSpec(consolePort), stdin: consolePort.stdin });
  config.nets.forEach((n, i) => {
    const tap = n.kind === "tap-name" ? { kind: n.kind, name: n.name } : n.kind === "tap-fd" ? { kind: n.kind, fd: n.fd } : { kind: n.kind, hostIp: n.hostIp, netmask: n.netmask };
    specs.push({ kind: "net", label: `net${i}`, tap, mac: n.mac ?? mac() });
  });
  if (config.rng) specs.push({ kind: "rng", label: "rng" });
  if (config.balloon) specs.push({ kind: "balloon", label: "balloon" });
  if (config.vsock) specs.push({ kind: "vsock", label: "vsock", cid: config.vsock.cid, uds: config.vsock.uds });
  return specs;
}

/** Joins -p values, adds `root=/dev/vdX` for a root disk and `console=ttySn` for the console port. */
export function kernelCmdline(config: Config): string {
  const parts = config.params.filter((p) => p.length > 0);
  const root = config.blocks.findIndex((b) => b.root);
  if (root >= 0) parts.unshift(`root=/dev/vd${String.fromCharCode(97 + root)} ${config.blocks[root]!.ro ? "ro" : "rw"}`);
  const consolePort = config.serials.find((s) => s.console);
  if (consolePort && !parts.some((p) => /(^|\s)console=/.test(p))) {
    parts.push(consolePort.hardware === "virtio-console" ? `console=hvc${consolePort.num - 1}` : `console=ttyS${consolePort.num - 1}`);
  }
  return parts.join(" ");
}
