// device_control.ts - requests the VMM makes of a device outside the virtio protocol: balloon size
// and statistics, disk resize and flush, console input, vsock statistics.
//
// Each device answers them in one `control` method. Where the device runs decides how a command
// reaches it: a direct call for a device in the VMM, a message on its control tube for a jailed
// device process (devices/sandbox/), nothing at all for another program's vhost-user backend.

/** A command for a device. */
export type DeviceCommand =
  | { readonly kind: "balloon_stats" }
  | { readonly kind: "balloon_target"; readonly pages: number }
  | { readonly kind: "console_input"; readonly bytes: Uint8Array }
  | { readonly kind: "disk_resize"; readonly bytes: number }
  | { readonly kind: "flush" }
  | { readonly kind: "vsock_stats" };

/** What the balloon reports: its target and actual sizes in 4 KiB pages, and the guest's statistics. */
export type BalloonStats = { readonly target: number; readonly actual: number; readonly stats: Readonly<Record<string, number>> | null };

/** What the vsock device reports: its CID, open connections, and counts since it was created. */
export type VsockStats = {
  readonly cid: number;
  readonly connections: number;
  readonly hostInitiated: number;
  readonly guestInitiated: number;
  readonly refused: number;
  readonly resets: number;
  readonly malformed: number;
  readonly bytesToGuest: number;
  readonly bytesFromGuest: number;
};

/** A device's answer. */
export type DeviceReply =
  | { readonly kind: "balloon_stats"; readonly stats: BalloonStats }
  | { readonly kind: "console_accepted"; readonly count: number }
  | { readonly kind: "vsock_stats"; readonly stats: VsockStats }
  | { readonly kind: "error"; readonly message: string }
  | { readonly kind: "ok" };

/** A device that takes commands. */
export interface ControllableDevice {
  control(command: DeviceCommand): DeviceReply;
}

/** The reply of a device to a command it does not take. */
export function unsupported(device: string, command: DeviceCommand): DeviceReply {
  return { kind: "error", message: `the ${device} device does not take ${command.kind.replace("_", " ")} requests` };
}
