// device_spec.ts - one validated description of a virtio device, whichever home it runs in.
//
// `tsvm run` flags, `--config` files, `tsvm devices` and the setup message of a jailed device process
// all produce or carry a DeviceSpec: plain data, JSON-safe. The host resources a spec names (a disk
// image, a tap, an output file) are opened separately (device_resources.ts) by a process allowed to
// open them; the device itself is built from both by create_device.ts.
import type { BackingFiles } from "../disk/qcow2.ts";

/** Where a console's output goes. */
export type OutputSpec = { readonly type: "stdout" } | { readonly type: "file"; readonly path: string } | { readonly type: "sink" };

/** How a net device gets its tap. */
export type TapSpec =
  | { readonly kind: "tap-name"; readonly name: string }
  | { readonly kind: "tap-fd"; readonly fd: number }
  | { readonly kind: "create"; readonly hostIp: string; readonly netmask: string };

/** A virtio device to create. `label` names it in logs and messages ("block0", "rng"). */
export type DeviceSpec =
  | {
    readonly kind: "block"; readonly label: string; readonly path: string; readonly readOnly: boolean; readonly id: string;
    /** The image format, or null to recognise it by its magic. */
    readonly format: "raw" | "qcow2" | null;
    /** O_DIRECT (o_direct=true): reads and writes bypass the host's page cache. */
    readonly direct: boolean;
    /** Which backing files a qcow2 image may name (backing_files=dir|any|off). */
    readonly backingFiles: BackingFiles;
    /** Request queues (num-queues=N, 1..BLOCK_MAX_QUEUES); more than one offers VIRTIO_BLK_F_MQ. */
    readonly queues: number;
  }
  | { readonly kind: "console"; readonly label: string; readonly output: OutputSpec; readonly stdin: boolean }
  | { readonly kind: "net"; readonly label: string; readonly tap: TapSpec; readonly mac: string }
  | { readonly kind: "rng"; readonly label: string }
  | { readonly kind: "balloon"; readonly label: string }
  /** `uds`: the Unix socket host programs connect to; the guest reaches host port P at `<uds>_P`. */
  | { readonly kind: "vsock"; readonly label: string; readonly cid: number; readonly uds: string };

export type DeviceKind = DeviceSpec["kind"];
