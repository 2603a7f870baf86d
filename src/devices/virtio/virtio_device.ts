// virtio_device.ts - a transport-agnostic virtio device, and what it receives when the driver is ready.
//
// A device is written once against this interface and runs in any of three homes without knowing
// which: in the VMM on the control loop (--disable-sandbox), in a jailed device process behind a
// private vhost-user socket, or as a vhost-user backend served to another VMM (`tsvm devices`).
//
//   guest driver ─ virtio-pci transport (VirtioPciDevice, always in the VMM)
//                        │ VirtioDevice
//          ┌─────────────┴──────────────┐
//     a device object             VhostUserFrontend ── socket ── VhostUserBackend ── a device object
//     (in-process)                (jailed process or another program's backend)
import type { EventFd } from "../../base/event_fd.ts";
import type { GuestMemory } from "../../memory/mod.ts";
import type { VirtioInterrupt } from "./interrupt.ts";
import type { Queue } from "./queue.ts";

/** Device IDs (virtio 1.2 §5); the PCI device ID is 0x1040 + this. */
export const VIRTIO_ID = { NET: 1, BLOCK: 2, CONSOLE: 3, RNG: 4, BALLOON: 5, VSOCK: 19, FS: 26 } as const;

/** Feature bits that belong to the ring and the transport (virtio 1.2 §6). */
export const VIRTIO_F = {
  VIRTIO_RING_F_INDIRECT_DESC: 28n,
  VIRTIO_RING_F_EVENT_IDX: 29n,
  VIRTIO_F_VERSION_1: 32n,
} as const;

/** The bits every tsvm device offers beside its own: virtio 1.x, indirect tables and event idx. */
export const TSVM_RING_FEATURES = (1n << VIRTIO_F.VIRTIO_F_VERSION_1) | (1n << VIRTIO_F.VIRTIO_RING_F_INDIRECT_DESC) |
  (1n << VIRTIO_F.VIRTIO_RING_F_EVENT_IDX);

/** Device status bits (virtio 1.2 §2.1). */
export const VIRTIO_STATUS = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 0x40,
  FAILED: 0x80,
} as const;

/** Runs a device's work when its file descriptors become readable (whichever loop hosts it). */
export interface DeviceEventLoop {
  /** Runs `handler` when `fd` has input, or with `events` EPOLLOUT, room to write (level-triggered). */
  watch(fd: number, handler: () => void, events?: number): void;
  unwatch(fd: number): void;
}

/** Everything a device's worker gets at activation; nothing else reaches it. */
export type ActivateContext = {
  readonly memory: GuestMemory;
  /** The queues the driver enabled, by index (null where it left one disabled). */
  readonly queues: readonly (Queue | null)[];
  /** One eventfd per queue, signalled when the driver notifies it. */
  readonly kicks: readonly EventFd[];
  readonly interrupt: VirtioInterrupt;
  /** The features the driver accepted. */
  readonly features: bigint;
  readonly loop: DeviceEventLoop;
  /** Marks the device as needing a reset (a driver error it cannot recover from). */
  readonly needsReset: (reason: string) => void;
};

/** The running half of a device, created by activate and dropped at reset. */
export interface VirtioWorker {
  /** Stops all processing; after it returns the worker touches no guest memory. */
  stop(): void;
}

/** A virtio device behind any transport. */
export interface VirtioDevice {
  readonly debugLabel: string;
  readonly deviceType: number;
  /** The largest size of each queue; their number is the device's queue count. */
  readonly queueMaxSizes: readonly number[];
  /** Every feature bit offered, ring and transport bits included (TSVM_RING_FEATURES, say). */
  readonly features: bigint;
  readonly configSize: number;
  /** The most bytes one descriptor chain may describe (what the device can use); a default when absent. */
  readonly maxChainBytes?: number;
  readConfig(offset: number, data: Uint8Array): void;
  writeConfig(offset: number, data: Uint8Array): void;
  activate(ctx: ActivateContext): VirtioWorker;
  /**
   * Sets the one listener told when the device changes its configuration space on its own (a balloon
   * target, a disk resize), whether or not the driver has started it; the transport subscribes.
   */
  onConfigChanged?(listener: (() => void) | null): void;
}

/** Returns whether `bit` is set in `features`. */
export function hasFeature(features: bigint, bit: bigint): boolean {
  return ((features >> bit) & 1n) === 1n;
}

/** Copies `data.byteLength` bytes of a device's configuration from `config` at `offset` (zeros past its end). */
export function readConfigBytes(config: Uint8Array, offset: number, data: Uint8Array): void {
  for (let i = 0; i < data.byteLength; i++) data[i] = config[offset + i] ?? 0;
}
