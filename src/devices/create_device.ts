// create_device.ts - the one place a virtio device is built from its spec and resources, whichever
// home (the VMM, a jailed device process, `tsvm devices`) it will run in.
import type { DeviceResources } from "./device_resources.ts";
import type { DeviceSpec } from "./device_spec.ts";
import type { ControllableDevice } from "./virtio/device_control.ts";
import { Balloon } from "./virtio/balloon.ts";
import { Block } from "./virtio/block/block.ts";
import { Console } from "./virtio/console.ts";
import { Net, parseMac } from "./virtio/net/net.ts";
import { type EntropySource, Rng } from "./virtio/rng.ts";
import type { VirtioDevice } from "./virtio/virtio_device.ts";
import { Vsock, type VsockHost } from "./virtio/vsock/vsock.ts";

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

/** Builds the device `spec` describes over `resources` (which must be of the same kind). */
export function createDevice(spec: DeviceSpec, resources: DeviceResources, host: DeviceHost): CreatedDevice {
  if (spec.kind !== resources.kind) throw new Error(`failed to create ${spec.label}: resources of a ${resources.kind} device`);
  switch (resources.kind) {
    case "block":
      return new Block(resources.image, spec.kind === "block" ? spec.id : "", spec.label);
    case "console":
      return new Console(resources.output);
    case "net": {
      const mac = spec.kind === "net" ? parseMac(spec.mac) : null;
      if (mac === null) throw new Error(`failed to create ${spec.label}: bad MAC address`);
      return new Net(resources.tap, mac);
    }
    case "rng":
      return new Rng(host.entropy);
    case "balloon":
      return new Balloon(host.punchHole);
    case "vsock": {
      const vsockHost = host.vsock ?? resources.broker?.host;
      if (spec.kind !== "vsock" || vsockHost === undefined) throw new Error(`failed to create ${spec.label}: no host side for vsock`);
      return new Vsock(spec.cid, vsockHost);
    }
  }
}
