// packet.ts - the virtio-vsock packet header (virtio 1.2 §5.10.6).
//
//   le64 src_cid; le64 dst_cid; le32 src_port; le32 dst_port; le32 len;
//   le16 type; le16 op; le32 flags; le32 buf_alloc; le32 fwd_cnt;        (44 bytes)
//
// `buf_alloc` and `fwd_cnt` carry the sender's credit: the bytes it can hold for the connection, and
// the bytes of it that it has passed on so far. A sender may have at most `buf_alloc - (sent -
// fwd_cnt)` bytes in flight.

export const HEADER_SIZE = 44;
/** The host's CID (VMADDR_CID_HOST). */
export const HOST_CID = 2;
export const VSOCK_TYPE_STREAM = 1;
export const VSOCK_OP = {
  REQUEST: 1, RESPONSE: 2, RST: 3, SHUTDOWN: 4, RW: 5, CREDIT_UPDATE: 6, CREDIT_REQUEST: 7,
} as const;
/** SHUTDOWN flags: the sender will receive no more, send no more. */
export const SHUTDOWN_RCV = 1;
export const SHUTDOWN_SEND = 2;

export type PacketHeader = {
  /** CIDs above 2^32 are not valid; they decode as -1. */
  readonly srcCid: number;
  readonly dstCid: number;
  readonly srcPort: number;
  readonly dstPort: number;
  readonly len: number;
  readonly type: number;
  readonly op: number;
  readonly flags: number;
  readonly bufAlloc: number;
  readonly fwdCnt: number;
};

function cid(view: DataView, at: number): number {
  return view.getUint32(at + 4, true) === 0 ? view.getUint32(at, true) : -1;
}

/** A DataView over the first 44 bytes of `bytes`. */
export function headerView(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
}

/** Decodes the 44 bytes of `bytes` (which must hold them); `view` may be a headerView of `bytes` kept for reuse. */
export function decodeHeader(bytes: Uint8Array, view: DataView = headerView(bytes)): PacketHeader {
  const v = view;
  return {
    srcCid: cid(v, 0), dstCid: cid(v, 8), srcPort: v.getUint32(16, true), dstPort: v.getUint32(20, true),
    len: v.getUint32(24, true), type: v.getUint16(28, true), op: v.getUint16(30, true), flags: v.getUint32(32, true),
    bufAlloc: v.getUint32(36, true), fwdCnt: v.getUint32(40, true),
  };
}

/** Encodes `h` into the first 44 bytes of `out`. */
export function encodeHeader(h: PacketHeader, out: Uint8Array): void {
  const v = headerView(out);
  v.setBigUint64(0, BigInt(h.srcCid), true);
  v.setBigUint64(8, BigInt(h.dstCid), true);
  v.setUint32(16, h.srcPort, true);
  v.setUint32(20, h.dstPort, true);
  v.setUint32(24, h.len, true);
  v.setUint16(28, h.type, true);
  v.setUint16(30, h.op, true);
  v.setUint32(32, h.flags, true);
  v.setUint32(36, h.bufAlloc >>> 0, true);
  v.setUint32(40, h.fwdCnt >>> 0, true);
}

/**
 * Writes a stream packet's header through `v` (a headerView), field by field: the device's path to
 * the guest, where a header object and a BigInt per CID for each packet cost more than the writes.
 * CIDs must be below 2^32 (a guest's CID is checked at start-up; the host's is 2).
 */
export function writeHeader(
  v: DataView, srcCid: number, dstCid: number, srcPort: number, dstPort: number, len: number, op: number, flags: number, bufAlloc: number, fwdCnt: number,
): void {
  v.setUint32(0, srcCid >>> 0, true);
  v.setUint32(4, 0, true);
  v.setUint32(8, dstCid >>> 0, true);
  v.setUint32(12, 0, true);
  v.setUint32(16, srcPort, true);
  v.setUint32(20, dstPort, true);
  v.setUint32(24, len, true);
  v.setUint16(28, VSOCK_TYPE_STREAM, true);
  v.setUint16(30, op, true);
  v.setUint32(32, flags, true);
  v.setUint32(36, bufAlloc >>> 0, true);
  v.setUint32(40, fwdCnt >>> 0, true);
}

/** The name of an operation, for logs. */
export function opName(op: number): string {
  return Object.entries(VSOCK_OP).find(([, v]) => v === op)?.[0] ?? `op ${op}`;
}
