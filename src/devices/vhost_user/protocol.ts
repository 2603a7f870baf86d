// protocol.ts - the vhost-user wire format (QEMU's docs/interop/vhost-user.rst): message header,
// request numbers, protocol feature bits, and codecs for each payload.
//
//   header (12 bytes, native = little-endian on x86-64):  u32 request | u32 flags | u32 size
//   flags: bits 0-1 version (1), bit 2 reply, bit 3 need_reply (REPLY_ACK)
// File descriptors travel as SCM_RIGHTS with the message that needs them.
import { ByteReader, ByteWriter } from "../../base/codec.ts";
import { err, ok, type Result } from "../../base/result.ts";

export const VHOST_USER_HEADER_SIZE = 12;
export const VHOST_USER_VERSION = 1;
export const VHOST_USER_FLAG_REPLY = 1 << 2;
export const VHOST_USER_FLAG_NEED_REPLY = 1 << 3;
/** bounds a payload: the largest real one is a memory table of 8 regions (264 bytes) */
export const VHOST_USER_MAX_PAYLOAD = 4096;
/** bounds the regions of SET_MEM_TABLE, as QEMU's VHOST_MEMORY_BASELINE_NREGIONS does */
export const VHOST_USER_MAX_REGIONS = 8;
/** The most fds one message may carry (a memory table's). */
export const VHOST_USER_MAX_FDS = VHOST_USER_MAX_REGIONS;
/** The largest device configuration space a GET_CONFIG/SET_CONFIG may name. */
export const VHOST_USER_MAX_CONFIG_SIZE = 256;

/** The virtio feature bit a backend sets to say it speaks protocol features (bit 30, unused by virtio). */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30n;

/** Protocol feature bits (vhost-user.rst "Protocol features"). */
export const VHOST_USER_PROTOCOL_F = {
  MQ: 0n, LOG_SHMFD: 1n, RARP: 2n, REPLY_ACK: 3n, MTU: 4n, BACKEND_REQ: 5n, CROSS_ENDIAN: 6n, CRYPTO_SESSION: 7n,
  PAGEFAULT: 8n, CONFIG: 9n, BACKEND_SEND_FD: 10n, HOST_NOTIFIER: 11n, INFLIGHT_SHMFD: 12n, RESET_DEVICE: 13n,
  INBAND_NOTIFICATIONS: 14n, CONFIGURE_MEM_SLOTS: 15n, STATUS: 16n,
} as const;

/** Front-end requests (vhost-user.rst "Front-end message types"). */
export const VHOST_USER = {
  GET_FEATURES: 1, SET_FEATURES: 2, SET_OWNER: 3, RESET_OWNER: 4, SET_MEM_TABLE: 5, SET_LOG_BASE: 6, SET_LOG_FD: 7,
  SET_VRING_NUM: 8, SET_VRING_ADDR: 9, SET_VRING_BASE: 10, GET_VRING_BASE: 11, SET_VRING_KICK: 12,
  SET_VRING_CALL: 13, SET_VRING_ERR: 14, GET_PROTOCOL_FEATURES: 15, SET_PROTOCOL_FEATURES: 16, GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18, SEND_RARP: 19, NET_SET_MTU: 20, SET_BACKEND_REQ_FD: 21, IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23, GET_CONFIG: 24, SET_CONFIG: 25, GET_INFLIGHT_FD: 31, SET_INFLIGHT_FD: 32,
  RESET_DEVICE: 34, VRING_KICK: 35, GET_MAX_MEM_SLOTS: 36, ADD_MEM_REG: 37, REM_MEM_REG: 38, SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

/** Back-end requests on the back-end channel (vhost-user.rst "Back-end message types"). */
export const VHOST_USER_BACKEND = { IOTLB_MSG: 1, CONFIG_CHANGE_MSG: 2, VRING_HOST_NOTIFIER_MSG: 3, VRING_CALL: 4, VRING_ERR: 5 } as const;

/** In SET_VRING_KICK/CALL/ERR payloads: the vring index bits, and "no fd attached" (poll instead). */
export const VHOST_USER_VRING_INDEX_MASK = 0xffn;
export const VHOST_USER_VRING_NOFD_MASK = 1n << 8n;

/** Names of the front-end requests, for log lines. */
const REQUEST_NAMES: ReadonlyMap<number, string> = new Map(Object.entries(VHOST_USER).map(([name, id]) => [id, name]));

/** Returns `VHOST_USER_<NAME>` for a request number. */
export function requestName(request: number): string {
  const name = REQUEST_NAMES.get(request);
  return name === undefined ? `request ${request}` : `VHOST_USER_${name}`;
}

/** One message: header fields, payload, and the fds that came with it (the receiver's to close). */
export type VhostUserMessage = {
  readonly request: number;
  readonly flags: number;
  readonly payload: Uint8Array;
  readonly fds: readonly number[];
};

/** Encodes a message's header and payload. */
export function encodeMessage(request: number, flags: number, payload: Uint8Array): Uint8Array {
  return new ByteWriter(VHOST_USER_HEADER_SIZE + payload.byteLength)
    .u32(request).u32(flags | VHOST_USER_VERSION).u32(payload.byteLength).raw(payload).done();
}

/** A u64 payload. */
export function encodeU64(value: bigint | number): Uint8Array {
  return new ByteWriter(8).u64(value).done();
}

/** Reads a u64 payload, refusing any other size. */
export function decodeU64(payload: Uint8Array): Result<bigint> {
  const r = new ByteReader(payload);
  return r.finish(r.u64n(), true);
}

/** struct vhost_vring_state: u32 index, u32 num. */
export type VringState = { readonly index: number; readonly num: number };

export function encodeVringState(s: VringState): Uint8Array {
  return new ByteWriter(8).u32(s.index).u32(s.num).done();
}

export function decodeVringState(payload: Uint8Array): Result<VringState> {
  const r = new ByteReader(payload);
  return r.finish({ index: r.u32(), num: r.u32() }, true);
}

/** struct vhost_vring_addr: u32 index, u32 flags, then descriptor, used, available and log addresses. */
export type VringAddress = {
  readonly index: number;
  readonly flags: number;
  readonly descriptor: bigint;
  readonly used: bigint;
  readonly available: bigint;
  readonly log: bigint;
};

export function encodeVringAddress(a: VringAddress): Uint8Array {
  return new ByteWriter(40).u32(a.index).u32(a.flags).u64(a.descriptor).u64(a.used).u64(a.available).u64(a.log).done();
}

export function decodeVringAddress(payload: Uint8Array): Result<VringAddress> {
  const r = new ByteReader(payload);
  return r.finish({ index: r.u32(), flags: r.u32(), descriptor: r.u64n(), used: r.u64n(), available: r.u64n(), log: r.u64n() }, true);
}

/** One memory region: guest physical address, size, the front-end's own address of it, offset in its fd. */
export type MemoryTableRegion = { readonly guestAddress: bigint; readonly size: bigint; readonly userAddress: bigint; readonly mmapOffset: bigint };

export function encodeMemoryTable(regions: readonly MemoryTableRegion[]): Uint8Array {
  const w = new ByteWriter(8 + 32 * regions.length).u32(regions.length).u32(0);
  for (const m of regions) w.u64(m.guestAddress).u64(m.size).u64(m.userAddress).u64(m.mmapOffset);
  return w.done();
}

/** Decodes SET_MEM_TABLE's payload; the region count must match the payload (and the fds, checked by the caller). */
export function decodeMemoryTable(payload: Uint8Array): Result<MemoryTableRegion[]> {
  const r = new ByteReader(payload);
  const count = r.u32();
  r.u32(); // padding
  if (count === 0 || count > VHOST_USER_MAX_REGIONS) return err(`a memory table of ${count} regions (1-${VHOST_USER_MAX_REGIONS} allowed)`);
  const regions: MemoryTableRegion[] = [];
  for (let i = 0; i < count; i++) regions.push({ guestAddress: r.u64n(), size: r.u64n(), userAddress: r.u64n(), mmapOffset: r.u64n() });
  // QEMU sends the whole fixed-size array (8 regions) whatever the count: accept trailing zero regions.
  const rest = r.rest();
  if (rest.some((b) => b !== 0) || (rest.byteLength !== 0 && rest.byteLength !== 32 * (VHOST_USER_MAX_REGIONS - count))) {
    return err("memory table payload does not match its region count");
  }
  return r.finish(regions);
}

/** The device configuration payload: u32 offset, u32 size, u32 flags, then `size` bytes. */
export type ConfigAccess = { readonly offset: number; readonly size: number; readonly flags: number; readonly data: Uint8Array };

export function encodeConfig(c: ConfigAccess): Uint8Array {
  return new ByteWriter(12 + c.data.byteLength).u32(c.offset).u32(c.size).u32(c.flags).raw(c.data).done();
}

export function decodeConfig(payload: Uint8Array): Result<ConfigAccess> {
  const r = new ByteReader(payload);
  const offset = r.u32();
  const size = r.u32();
  const flags = r.u32();
  if (r.failure === null && (size > VHOST_USER_MAX_CONFIG_SIZE || offset > VHOST_USER_MAX_CONFIG_SIZE)) {
    return err(`configuration access of ${size} bytes at ${offset} is beyond ${VHOST_USER_MAX_CONFIG_SIZE} bytes`);
  }
  const data = r.raw(size);
  return r.finish({ offset, size, flags, data: data.slice() }, true);
}

/** Splits a SET_VRING_KICK/CALL/ERR payload into the vring index and whether an fd came with it. */
export function decodeVringFile(payload: Uint8Array): Result<{ readonly index: number; readonly hasFd: boolean }> {
  const value = decodeU64(payload);
  if (!value.ok) return value;
  const v = value.value;
  if ((v & ~(VHOST_USER_VRING_INDEX_MASK | VHOST_USER_VRING_NOFD_MASK)) !== 0n) return err(`unknown bits in vring file payload 0x${v.toString(16)}`);
  return ok({ index: Number(v & VHOST_USER_VRING_INDEX_MASK), hasFd: (v & VHOST_USER_VRING_NOFD_MASK) === 0n });
}
