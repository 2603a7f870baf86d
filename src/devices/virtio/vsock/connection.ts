// connection.ts - one vsock stream between a guest port and a host socket, and its credit.
//
// Credit both ways (virtio 1.2 §5.10.6.3): the guest tells us in every header how much it can hold
// (`buf_alloc`) and how much of what we sent it has consumed (`fwd_cnt`); we never send it more than
// that allows, and we read from the host socket only as much as we can send, so a guest that reads
// slowly slows the host writer down through its socket instead of making us buffer. The other way,
// we offer CONNECTION_BUFFER bytes; what the host socket does not take at once waits here, in one
// ring of that size that the device gives the connection with its host socket (nothing is allocated
// per packet), and a guest that sends beyond its credit loses the connection.
import type { StreamSocket } from "../../../base/stream_socket.ts";

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
  /** Guest bytes the host socket has not taken yet: `pendingBytes` of `#ring` from `#head` on (wrapping). */
  pendingBytes = 0;
  #ring: Uint8Array | null = null;
  #head = 0;
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

  /**
   * Gives the connection the ring that guest data waits in for a slow host reader (CONNECTION_BUFFER
   * bytes); the device hands out rings it keeps (VsockWorker.#spareRings) when the connection gets
   * its host socket. A ring made at the first slow write cost that write ~1.2 ms (a collection the
   * allocation set off) in the middle of the stream, and one made with each connection as much on
   * its set-up; the pages of one cost nothing until used.
   */
  useHostBuffer(ring: Uint8Array): void {
    if (ring.byteLength !== CONNECTION_BUFFER) throw new RangeError(`vsock: a ring of ${ring.byteLength} bytes; expected ${CONNECTION_BUFFER}`);
    if (this.#ring === null) this.#ring = ring;
  }

  /** Takes the ring back (for another connection): what waited in it is dropped. */
  takeHostBuffer(): Uint8Array | null {
    const ring = this.#ring;
    this.#ring = null;
    this.pendingBytes = 0;
    this.#head = 0;
    return ring;
  }

  /** The bytes set aside for guest data the host has not taken: CONNECTION_BUFFER once the connection has a ring, else 0. */
  get keptCapacity(): number {
    return this.#ring?.byteLength ?? 0;
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
    const ring = this.#ring;
    while (this.pendingBytes > 0 && ring !== null) {
      // The waiting bytes up to the ring's end, then (next turn) the part that wrapped to its start.
      const run = Math.min(this.pendingBytes, ring.byteLength - this.#head);
      const n = host.send(ring.subarray(this.#head, this.#head + run));
      if (n === "broken") return "broken";
      this.fwdCnt = (this.fwdCnt + n) >>> 0;
      this.pendingBytes -= n;
      this.#head = (this.#head + n) % ring.byteLength;
      if (n < run) return "blocked";
    }
    if (this.pendingBytes === 0) this.#head = 0;
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
    this.pendingBytes = 0;
    this.#ring = null;
    this.#head = 0;
  }

  /**
   * Copies `bytes` to the end of what is waiting, in the connection's ring (made here if it was given
   * none). The device resets a guest that sends beyond the credit it was offered before anything is
   * kept, so what waits never exceeds CONNECTION_BUFFER; a caller that breaks that rule gets a
   * RangeError.
   */
  #keep(bytes: Uint8Array): void {
    const n = bytes.byteLength;
    if (this.pendingBytes + n > CONNECTION_BUFFER) throw new RangeError(`vsock: ${this.pendingBytes + n} bytes waiting for the host, beyond the credit offered`);
    const ring = this.#ring ??= new Uint8Array(CONNECTION_BUFFER);
    const tail = (this.#head + this.pendingBytes) % ring.byteLength;
    const first = Math.min(n, ring.byteLength - tail);
    ring.set(first === n ? bytes : bytes.subarray(0, first), tail);
    if (first < n) ring.set(bytes.subarray(first), 0);
    this.pendingBytes += n;
  }
}

/** The map key of the connection between `guestPort` and `hostPort`. */
export function connectionKey(guestPort: number, hostPort: number): string {
  return `${guestPort}:${hostPort}`;
}
