// connection.ts - one vsock stream between a guest port and a host socket, and its credit.
//
// Credit both ways (virtio 1.2 §5.10.6.3): the guest tells us in every header how much it can hold
// (`buf_alloc`) and how much of what we sent it has consumed (`fwd_cnt`); we never send it more than
// that allows, and we read from the host socket only as much as we can send, so a guest that reads
// slowly slows the host writer down through its socket instead of making us buffer. The other way,
// we offer CONNECTION_BUFFER bytes; what the host socket does not take at once waits here, never more
// than that, and a guest that sends beyond its credit loses the connection.
import type { StreamSocket } from "../../../base/stream_socket.ts";

/** Guest bytes waiting for the host socket are packed into buffers of at least this size. */
const KEEP_CHUNK = 4096;

/** The bytes a connection holds for a slow host reader: the `buf_alloc` we offer the guest. */
export const CONNECTION_BUFFER = 256 * 1024;
/** Once this much forwarded data is unreported, tell the guest (a CREDIT_UPDATE) so it never stalls. */
export const CREDIT_UPDATE_THRESHOLD = CONNECTION_BUFFER / 4;

/**
 * host_connecting: the guest asked for a host port; the host side is connecting.
 * guest_requested: a host client asked for a guest port; the guest has not answered.
 * established: data flows.
 */
export type ConnectionState = "host_connecting" | "guest_requested" | "established";

/** What writing to the host socket came to. */
export type HostWrite = "done" | "blocked" | "broken";

export class Connection {
  state: ConnectionState;
  /** The host socket, or null while connecting. */
  host: StreamSocket | null = null;
  // The guest's side of the credit, from its latest header.
  peerBufAlloc = 0;
  peerFwdCnt = 0;
  /** Payload bytes sent to the guest (mod 2^32). */
  txCnt = 0;
  /** Payload bytes the guest sent (mod 2^32). */
  rxCnt = 0;
  /** Of those, the bytes written to the host socket (mod 2^32). */
  fwdCnt = 0;
  /** The fwd_cnt the guest last heard from us. */
  reportedFwdCnt = 0;
  /** Guest bytes the host socket has not taken yet. */
  readonly pending: Uint8Array[] = [];
  pendingBytes = 0;
  /** The buffer the last kept bytes were copied into, and how much of it is filled. */
  #tail: Uint8Array | null = null;
  #tailUsed = 0;
  /** The host socket may have data to read (edge-triggered: true until a read says "again"). */
  hostReadable = false;
  /** The host has shut its writing side (we read its end of stream and told the guest). */
  hostDone = false;
  /** SHUTDOWN flags the guest sent. */
  guestShutdown = 0;
  /** We asked the guest for credit and have not heard from it since. */
  creditRequested = false;
  /** guest_requested: when the guest must have answered (0 until the request reached the guest). */
  deadline = 0;
  bytesToGuest = 0;
  bytesFromGuest = 0;

  constructor(readonly guestPort: number, readonly hostPort: number, state: ConnectionState) {
    this.state = state;
  }

  get key(): string {
    return connectionKey(this.guestPort, this.hostPort);
  }

  /** The bytes the guest can take now. */
  get peerCredit(): number {
    const inFlight = (this.txCnt - this.peerFwdCnt) >>> 0;
    return inFlight >= this.peerBufAlloc ? 0 : this.peerBufAlloc - inFlight;
  }

  /** Whether the guest should hear our fwd_cnt now. */
  get owesCreditUpdate(): boolean {
    return ((this.fwdCnt - this.reportedFwdCnt) >>> 0) >= CREDIT_UPDATE_THRESHOLD;
  }

  /** Writes guest bytes to the host socket, keeping what it does not take now. */
  writeToHost(views: readonly Uint8Array[]): HostWrite {
    const host = this.host;
    if (host === null) return "broken";
    for (const view of views) {
      this.rxCnt = (this.rxCnt + view.byteLength) >>> 0;
      this.bytesFromGuest += view.byteLength;
      if (this.pendingBytes > 0) {
        this.#keep(view);
        continue;
      }
      const n = host.send(view);
      if (n === "broken") return "broken";
      this.fwdCnt = (this.fwdCnt + n) >>> 0;
      if (n < view.byteLength) this.#keep(view.subarray(n));
    }
    return this.pendingBytes > 0 ? "blocked" : "done";
  }

  /** Writes what is waiting, now that the host socket can take more. */
  flushToHost(): HostWrite {
    const host = this.host;
    if (host === null) return "broken";
    while (this.pending.length > 0) {
      const chunk = this.pending[0]!;
      const n = host.send(chunk);
      if (n === "broken") return "broken";
      this.fwdCnt = (this.fwdCnt + n) >>> 0;
      this.pendingBytes -= n;
      if (n < chunk.byteLength) {
        this.pending[0] = chunk.subarray(n);
        return "blocked";
      }
      this.pending.shift();
    }
    return "done";
  }

  /** Writes a line of the host protocol ("OK <port>\n"): not guest data, so outside the credit. */
  writeControlLine(text: string): boolean {
    const bytes = new TextEncoder().encode(text);
    return this.host?.send(bytes) === bytes.byteLength; // a fresh socket has room for a few bytes
  }

  close(): void {
    this.host?.close();
    this.host = null;
    this.pending.length = 0;
    this.pendingBytes = 0;
    this.#tail = null;
  }

  /**
   * Copies `bytes` to the end of what is waiting. Small packets are packed into KEEP_CHUNK-byte
   * buffers (a guest sending one byte per packet to a host that does not read must not cost a buffer
   * per packet), so what is kept stays within about twice the connection's credit.
   */
  #keep(bytes: Uint8Array): void {
    const n = bytes.byteLength;
    this.pendingBytes += n;
    const last = this.pending.at(-1);
    const tail = this.#tail;
    if (last !== undefined && tail !== null && last.buffer === tail.buffer && last.byteOffset + last.byteLength === this.#tailUsed &&
      this.#tailUsed + n <= tail.byteLength) {
      tail.set(bytes, this.#tailUsed);
      this.#tailUsed += n;
      this.pending[this.pending.length - 1] = tail.subarray(last.byteOffset, this.#tailUsed);
      return;
    }
    const chunk = new Uint8Array(Math.max(KEEP_CHUNK, n));
    chunk.set(bytes);
    this.#tail = chunk;
    this.#tailUsed = n;
    this.pending.push(chunk.subarray(0, n));
  }
}

/** The map key of the connection between `guestPort` and `hostPort`. */
export function connectionKey(guestPort: number, hostPort: number): string {
  return `${guestPort}:${hostPort}`;
}
