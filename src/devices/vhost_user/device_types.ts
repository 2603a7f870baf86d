// device_types.ts - what a front-end must know of each device type that vhost-user does not say:
// virtio device id, queue count and sizes, configuration size. tsvm's own devices take their queue
// sizes from here too, so the two sides of a socket cannot disagree.
import { VIRTIO_ID } from "../virtio/virtio_device.ts";

/** A device type as both sides of a vhost-user socket see it. */
export type DeviceTypeInfo = {
  readonly deviceType: number;
  readonly queueMaxSizes: readonly number[];
  /** Bytes of struct virtio_<type>_config (0: none). */
  readonly configSize: number;
  /** Whether the front-end gets the configuration from the back-end (GET_CONFIG) or makes it itself. */
  readonly configFrom: "backend" | "frontend";
  /**
   * For a device with any number of like queues (virtio-blk's VIRTIO_BLK_F_MQ): at most how many,
   * and where its configuration says how many there are (a front-end with fewer rewrites it).
   */
  readonly multiqueue?: { readonly max: number; readonly countOffset: number };
};

/** At most this many virtio-blk request queues (`num-queues`); by default one per vCPU up to it. */
export const BLOCK_MAX_QUEUES = 16;

/** The device types tsvm knows by name (crosvm's `--vhost-user TYPE,...` names). */
export const DEVICE_TYPES = {
  // struct virtio_blk_config up to write_zeroes_may_unmap and its padding (virtio 1.2 §5.2.4)
  // (num_queues, a le16 at 34, counts the request queues)
  block: {
    deviceType: VIRTIO_ID.BLOCK, queueMaxSizes: [256], configSize: 60, configFrom: "backend",
    multiqueue: { max: BLOCK_MAX_QUEUES, countOffset: 34 },
  },
  // mac[6], status, max_virtqueue_pairs (virtio 1.2 §5.1.4): tsvm's net uses the first two
  net: { deviceType: VIRTIO_ID.NET, queueMaxSizes: [256, 256], configSize: 8, configFrom: "backend" },
  // cols, rows, max_nr_ports, emerg_wr (virtio 1.2 §5.3.4)
  console: { deviceType: VIRTIO_ID.CONSOLE, queueMaxSizes: [64, 64], configSize: 12, configFrom: "backend" },
  rng: { deviceType: VIRTIO_ID.RNG, queueMaxSizes: [256], configSize: 0, configFrom: "backend" },
  // num_pages, actual (virtio 1.2 §5.5.4); inflate, deflate and stats queues
  balloon: { deviceType: VIRTIO_ID.BALLOON, queueMaxSizes: [128, 128, 128], configSize: 8, configFrom: "backend" },
  // tag[36], num_request_queues (virtio 1.2 §5.11.4): the front-end knows the tag; hiprio + one request queue
  fs: { deviceType: VIRTIO_ID.FS, queueMaxSizes: [1024, 1024], configSize: 40, configFrom: "frontend" },
  // guest_cid (virtio 1.2 §5.10.4); rx, tx and event queues
  vsock: { deviceType: VIRTIO_ID.VSOCK, queueMaxSizes: [256, 256, 256], configSize: 8, configFrom: "backend" },
} as const satisfies Record<string, DeviceTypeInfo>;

/** `type` with `count` queues of its first queue's size (a multiqueue device's count; else as it is). */
export function withQueueCount(type: DeviceTypeInfo, count: number): DeviceTypeInfo {
  if (type.multiqueue === undefined || count === type.queueMaxSizes.length) return type;
  return { ...type, queueMaxSizes: new Array<number>(count).fill(type.queueMaxSizes[0]!) };
}

export type DeviceTypeName = keyof typeof DEVICE_TYPES;
export const DEVICE_TYPE_NAMES = Object.keys(DEVICE_TYPES) as DeviceTypeName[];
