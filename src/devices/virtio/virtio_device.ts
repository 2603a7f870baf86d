// virtio_device.ts - a transport-agnostic virtio device and what it receives when the driver is ready.
import type { EventFd } from "../../base/event_fd.ts";
import type { GuestMemory } from "../../memory/mod.ts";
import type { VirtioInterrupt } from "./interrupt.ts";
import type { Queue } from "./queue.ts";

/** Device IDs (virtio 1.2 §5); the PCI device ID is 0x1040 + this. */
export const VIRTIO_ID = { NET: 1, BLOCK: 2, CONSOLE: 3, RNG: 4, BALLOON: 5 } as const;

/** Feature bits that belong to the ring and the transport (virtio 1.2 §6). */
export const VIRTIO_F = {
  VIRTIO_RING_F_INDIRECT_DESC: 28n,
  VIRTIO_RING_F_EVENT_IDX: 29n,
  VIRTIO_F_VERSION_1: 32n,
} as const;

/** Device status bits (virtio 1.2 §2.1). */
export const VIRTIO_STATUS = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 0x40,
  FAILED: 0x80,
} as const;

/** Runs a device's work when its file descriptors become readable (the control loop, for now). */
export interface DeviceEventLoop {
  watch(fd: number, onReadable: () => void): void;
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
  readonly queueMaxSizes: readonly number[];
  /** Device-specific feature bits offered (the transport adds VERSION_1 and the ring features). */
  readonly features: bigint;
  readonly configSize: number;
  readConfig(offset: number, data: Uint8Array): void;
  writeConfig(offset: number, data: Uint8Array): void;
  activate(ctx: ActivateContext): VirtioWorker;
}

/** Returns whether `bit` is set in `features`. */
export function hasFeature(features: bigint, bit: bigint): boolean {
  return ((features >> bit) & 1n) === 1n;
}
