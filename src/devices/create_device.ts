// create_device.ts - the one place a virtio device is built from its spec and resources, whichever
// home (the VMM, a jailed device process, `tsvm devices`) it will run in.
//
// Each kind's code loads on demand (`loadDeviceKinds`): the executable is built with code
// splitting, so a jailed device process parses and keeps only its own device's modules (about a
// megabyte of private memory less per process than loading every device).
import { StreamOutput } from "../base/stream_output.ts";
import { describeError, err, ok, type Result } from "../base/result.ts";
import type { DeviceResources } from "./device_resources.ts";
import type { DeviceKind, DeviceSpec } from "./device_spec.ts";
import type { ControllableDevice } from "./virtio/device_control.ts";
import type { EntropySource } from "./virtio/rng.ts";
import type { VirtioDevice } from "./virtio/virtio_device.ts";
import type { Vsock, VsockHost } from "./virtio/vsock/vsock.ts";

/** What devices take from their host beside their resources. */
export type DeviceHost = {
  readonly entropy: EntropySource;
  /** Gives back the pages of [offset, offset + length) of file `fd` (FALLOC_FL_PUNCH_HOLE). */
  readonly punchHole: (fd: number, offset: number, length: number) => boolean;
  /** Connections to host programs for a vsock device (the VMM's broker, or the tube to it). */
  readonly vsock?: VsockHost;
};

/** A device, its VMM-side commands (balloon size, disk resize, console input), and for vsock its host connections. */
export type CreatedDevice = VirtioDevice & Partial<ControllableDevice> & { acceptHost?: Vsock["acceptHost"] };

/** The code of one kind of device. */
type DeviceKindCode = {
  /** Rebuilds the resources a jailed device process was given as fds (see `resourceFds`); throws. */
  readonly fromFds: (spec: DeviceSpec, fds: readonly number[]) => DeviceResources;
  /** Builds the device; throws on a spec the device cannot take. */
  readonly create: (spec: DeviceSpec, resources: DeviceResources, host: DeviceHost) => CreatedDevice;
};

const NO_FDS = (spec: DeviceSpec): DeviceResources => {
  if (spec.kind === "vsock") return { kind: "vsock", broker: null };
  if (spec.kind === "rng" || spec.kind === "balloon") return { kind: spec.kind };
  throw new Error(`a ${spec.kind} device needs its resources`);
};

/** Where each kind's code comes from; the imports are dynamic so that each kind is its own chunk. */
const LOADERS: { readonly [K in DeviceKind]: () => Promise<DeviceKindCode> } = {
  block: async () => {
    const [{ Block }, { DiskFile }, { imageOf }] = await Promise.all([
      import("./virtio/block/block.ts"), import("../disk/disk_file.ts"), import("../disk/qcow2.ts"),
    ]);
    return {
      fromFds: (spec, fds) => {
        const [fd, ...backing] = fds;
        if (fd === undefined || spec.kind !== "block") throw new Error("no disk image fd");
        // The backing chain's files follow the image's, in the order the VMM opened them.
        // Each is read in the format its image records for it, exactly as the VMM read it (disk/qcow2.ts).
        const openBacking = (_name: string, format: "raw" | "qcow2" | null): ReturnType<typeof imageOf> => {
          const next = backing.shift();
          if (next === undefined) throw new Error("the image names a backing file the VMM did not open");
          return imageOf(DiskFile.fromFd(next, true), format, openBacking);
        };
        return { kind: "block", image: imageOf(DiskFile.fromFd(fd, spec.readOnly), spec.format, openBacking) };
      },
      create: (spec, resources) => {
        if (resources.kind !== "block" || spec.kind !== "block") throw new Error("not a block device");
        return new Block(resources.image, spec.id, spec.label, spec.queues);
      },
    };
  },
  console: async () => {
    const { Console } = await import("./virtio/console.ts");
    return {
      fromFds: (_spec, fds) => ({ kind: "console", output: fds[0] === undefined ? null : new StreamOutput(fds[0], true) }),
      create: (_spec, resources) => {
        if (resources.kind !== "console") throw new Error("not a console");
        return new Console(resources.output);
      },
    };
  },
  net: async () => {
    const [{ Net, parseMac }, { Tap }] = await Promise.all([import("./virtio/net/net.ts"), import("../base/tap.ts")]);
    return {
      fromFds: (_spec, fds) => {
        if (fds[0] === undefined) throw new Error("no tap fd");
        return { kind: "net", tap: Tap.fromFd(fds[0]) };
      },
      create: (spec, resources) => {
        const mac = spec.kind === "net" ? parseMac(spec.mac) : null;
        if (mac === null || resources.kind !== "net") throw new Error("bad MAC address");
        return new Net(resources.tap, mac);
      },
    };
  },
  rng: async () => {
    const { Rng } = await import("./virtio/rng.ts");
    return { fromFds: NO_FDS, create: (_spec, _resources, host) => new Rng(host.entropy) };
  },
  balloon: async () => {
    const { Balloon } = await import("./virtio/balloon.ts");
    return { fromFds: NO_FDS, create: (_spec, _resources, host) => new Balloon(host.punchHole) };
  },
  vsock: async () => {
    const { Vsock } = await import("./virtio/vsock/vsock.ts");
    return {
      fromFds: NO_FDS,
      create: (spec, resources, host) => {
        const vsockHost = host.vsock ?? (resources.kind === "vsock" ? resources.broker?.host : undefined);
        if (spec.kind !== "vsock" || vsockHost === undefined) throw new Error("no host side for vsock");
        return new Vsock(spec.cid, vsockHost);
      },
    };
  },
};

const loaded = new Map<DeviceKind, DeviceKindCode>();

/** Loads the code of the kinds named (once each); `createDevice` and `resourcesFromFds` need it first. */
export async function loadDeviceKinds(kinds: Iterable<DeviceKind>): Promise<void> {
  for (const kind of new Set(kinds)) if (!loaded.has(kind)) loaded.set(kind, await LOADERS[kind]());
}

function codeOf(kind: DeviceKind): DeviceKindCode {
  const code = loaded.get(kind);
  if (code === undefined) throw new Error(`the ${kind} device's code was not loaded`);
  return code;
}

/** Builds the device `spec` describes over `resources` (which must be of the same kind). */
export function createDevice(spec: DeviceSpec, resources: DeviceResources, host: DeviceHost): CreatedDevice {
  if (spec.kind !== resources.kind) throw new Error(`failed to create ${spec.label}: resources of a ${resources.kind} device`);
  try {
    return codeOf(spec.kind).create(spec, resources, host);
  } catch (e) {
    throw new Error(`failed to create ${spec.label}: ${describeError(e)}`, { cause: e });
  }
}

/** Rebuilds resources from the fds a device process was given (see `resourceFds`). */
export function resourcesFromFds(spec: DeviceSpec, fds: readonly number[]): Result<DeviceResources> {
  try {
    return ok(codeOf(spec.kind).fromFds(spec, fds));
  } catch (e) {
    return err(describeError(e));
  }
}
