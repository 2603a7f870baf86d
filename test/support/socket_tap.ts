// socket_tap.ts - a FrameDevice over a datagram socket pair, standing in for a TAP in device tests:
// what the device writes the test reads from `peer`, and what the test sends to `peer` the device reads.
import { socket, sys } from "../../ffi/mod.ts";
import { ERRNO } from "../../src/base/errno.ts";
import type { FrameDevice } from "../../src/base/tap.ts";

const SOCK_DGRAM = 2;
const O_NONBLOCK = 0o4000;

export class SocketTap implements FrameDevice {
  readonly fd: number;
  readonly peer: number;
  offload = -1;
  headerSize = -1;

  constructor() {
    [this.fd, this.peer] = socket.socketPair(SOCK_DGRAM);
    sys.addFileFlags(this.fd, O_NONBLOCK);
    sys.addFileFlags(this.peer, O_NONBLOCK);
  }

  read(buf: Uint8Array): number {
    const n = sys.readRaw(this.fd, buf);
    return n === -ERRNO.EAGAIN ? 0 : n;
  }

  write(frame: Uint8Array): boolean {
    return sys.writeRaw(this.fd, frame) === frame.byteLength;
  }

  setVnetHeaderSize(size: number): void {
    this.headerSize = size;
  }

  setOffload(flags: number): void {
    this.offload = flags;
  }

  /** A frame the device wrote, or null. */
  received(): Uint8Array | null {
    const buf = new Uint8Array(70_000);
    const n = sys.readRaw(this.peer, buf);
    return n > 0 ? buf.slice(0, n) : null;
  }

  /** Sends a frame for the device to read. */
  send(frame: Uint8Array): void {
    sys.writeRaw(this.peer, frame);
  }

  close(): void {
    sys.close(this.fd);
    sys.close(this.peer);
  }
}
