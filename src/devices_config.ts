// devices_config.ts - the validated settings of `tsvm devices`: each device as a DeviceSpec and the
// vhost-user socket it is served on (crosvm's `tsvm devices --block vhost=SOCK,path=IMG` syntax).
import { LOG_LEVELS, type LogLevel } from "./base/log.ts";
import { BLOCK_MAX_QUEUES } from "./devices/vhost_user/device_types.ts";
import { ConfigError, MAX_SOCKET_PATH, parseBlock, parseKeyValues, parseNet, parseVsock, SERIAL_TYPES } from "./config.ts";
import type { DeviceSpec, OutputSpec } from "./devices/device_spec.ts";

/** One device `tsvm devices` serves. */
export type ServedDevice = { readonly spec: DeviceSpec; readonly socket: string };

/** The settings `tsvm devices` works from. */
export type DevicesConfig = {
  readonly devices: readonly ServedDevice[];
  readonly sandbox: boolean;
  readonly seccompPolicyDir: string | null;
  readonly seccompLogFailures: boolean;
  readonly logLevel: LogLevel;
};

/** The options as they come from the command line. */
export type RawDevicesOptions = {
  readonly block?: readonly string[] | undefined;
  readonly rng?: readonly string[] | undefined;
  readonly net?: readonly string[] | undefined;
  readonly console?: readonly string[] | undefined;
  readonly balloon?: readonly string[] | undefined;
  readonly vsock?: readonly string[] | undefined;
  readonly disableSandbox?: boolean | undefined;
  readonly seccompPolicyDir?: string | undefined;
  readonly seccompLogFailures?: boolean | undefined;
  readonly logLevel?: string | undefined;
};

/** Takes `vhost=SOCK` out of a device's option text; returns the socket and the rest. */
function splitVhost(flag: string, text: string): { socket: string; rest: string } {
  const parts = text.split(",");
  const found = parts.filter((p) => p.startsWith("vhost="));
  if (found.length !== 1) throw new ConfigError(`${flag} ${text}: ${found.length === 0 ? "vhost=SOCKET is required" : "vhost= is given twice"}`);
  const socket = found[0]!.slice("vhost=".length);
  if (socket === "" || new TextEncoder().encode(socket).length > MAX_SOCKET_PATH) {
    throw new ConfigError(`${flag} ${text}: vhost= needs a socket path of 1-${MAX_SOCKET_PATH} bytes`);
  }
  return { socket, rest: parts.filter((p) => !p.startsWith("vhost=")).join(",") };
}

/** Validates `tsvm devices` options; throws ConfigError naming the flag and what it accepts. */
export function parseDevicesConfig(raw: RawDevicesOptions): DevicesConfig {
  const devices: ServedDevice[] = [];
  const count: Record<string, number> = {};
  const label = (kind: string): string => `${kind}${(count[kind] = (count[kind] ?? 0) + 1) - 1}`;
  for (const text of raw.block ?? []) {
    const { socket, rest } = splitVhost("--block", text);
    const b = parseBlock(rest);
    if (b.root) throw new ConfigError(`--block ${text}: root= means nothing to a vhost-user back-end`);
    // A back-end offers as many queues as it may be asked for; each front-end uses what it needs.
    const queues = b["num-queues"] ?? BLOCK_MAX_QUEUES;
    devices.push({ socket, spec: { kind: "block", label: label("block"), path: b.path, readOnly: b.ro, id: b.id, format: b.format ?? null, direct: b.o_direct, backingFiles: b.backing_files, queues } });
  }
  for (const text of raw.net ?? []) {
    const { socket, rest } = splitVhost("--net", text);
    const n = parseNet(rest);
    const tap = n.kind === "tap-name" ? { kind: n.kind, name: n.name } : n.kind === "tap-fd" ? { kind: n.kind, fd: n.fd } : null;
    if (tap === null) throw new ConfigError(`--net ${text}: give tap-name=NAME or tap-fd=N`);
    // The front-end decides the guest's MAC (QEMU's virtio-net does); this one answers GET_CONFIG.
    devices.push({ socket, spec: { kind: "net", label: label("net"), tap, mac: n.mac ?? "52:54:00:12:34:56" } });
  }
  for (const text of raw.console ?? []) {
    const { socket, rest } = splitVhost("--console", text);
    const fields = parseKeyValues("--console", rest, ["type", "path"]);
    const type = fields.type ?? "stdout";
    if (!(SERIAL_TYPES as readonly string[]).includes(type)) throw new ConfigError(`--console ${text}: type: expected one of ${SERIAL_TYPES.join(", ")}`);
    if ((type === "file") !== (fields.path !== undefined)) throw new ConfigError(`--console ${text}: type=file needs path=PATH, and only it takes one`);
    const output: OutputSpec = type === "file" ? { type: "file", path: fields.path! } : { type: type as "stdout" | "sink" };
    devices.push({ socket, spec: { kind: "console", label: label("console"), output, stdin: false } });
  }
  for (const [kind, texts] of [["rng", raw.rng], ["balloon", raw.balloon]] as const) {
    for (const text of texts ?? []) {
      const { socket, rest } = splitVhost(`--${kind}`, text);
      parseKeyValues(`--${kind}`, rest, []);
      devices.push({ socket, spec: { kind, label: label(kind) } });
    }
  }
  for (const text of raw.vsock ?? []) {
    const { socket, rest } = splitVhost("--vsock", text);
    const { cid, uds } = parseVsock(rest);
    devices.push({ socket, spec: { kind: "vsock", label: label("vsock"), cid, uds } });
  }
  if (devices.length === 0) throw new ConfigError("tsvm devices: name at least one device (--block, --net, --console, --rng, --balloon, --vsock)");
  const sockets = new Set<string>();
  for (const d of devices) {
    if (sockets.has(d.socket)) throw new ConfigError(`vhost=${d.socket} is given to two devices`);
    sockets.add(d.socket);
  }
  if (raw.logLevel !== undefined && !(LOG_LEVELS as readonly string[]).includes(raw.logLevel)) {
    throw new ConfigError(`--log-level: expected one of ${LOG_LEVELS.join(", ")} (got ${JSON.stringify(raw.logLevel)})`);
  }
  return {
    devices,
    sandbox: !(raw.disableSandbox ?? false),
    seccompPolicyDir: raw.seccompPolicyDir ?? null,
    seccompLogFailures: raw.seccompLogFailures ?? false,
    logLevel: (raw.logLevel as LogLevel | undefined) ?? "warn",
  };
}
