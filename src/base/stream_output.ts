// stream_output.ts - bytes from a device to a reader that may be slower than the guest (stdout, a
// pipe, a file), written only as fast as the reader takes them and never by blocking a loop.
//
// A virtio console holds the guest's transmit buffers while its output is full, so the guest's own
// driver waits (the ring is the back-pressure); the VMM's relay from a jailed console's pipe stops
// reading the pipe while stdout is full. A terminal that stopped scrolling, or a `| less` nobody
// pages through, slows the guest's console down and nothing else.
import { sys } from "../../ffi/mod.ts";
import { ERRNO } from "./errno.ts";
import { openOutputFile } from "./fd_output.ts";
import { EPOLLOUT } from "./wait_context.ts";

const O_WRONLY = 0o1;
const O_NOCTTY = 0o400;
const O_NONBLOCK = 0o4000;
const S_IFMT = 0o170000;
const S_IFIFO = 0o010000;
const S_IFCHR = 0o020000;
const RELAY_CHUNK = 4096;

/** What writing came to: bytes taken (0: full now, wait until the fd is writable) or "broken". */
export type StreamWrite = number | "broken";

/** A loop that can watch an fd for input or, with EPOLLOUT, for room to write. */
export interface WatchingLoop {
  watch(fd: number, handler: () => void, events?: number): void;
  unwatch(fd: number): void;
}

export class StreamOutput {
  /**
   * @param fd where the bytes go; a write that would block returns 0 only if it is non-blocking
   * @param stdout whether this is tsvm's stdout (a jailed device then gets a pipe, never the terminal)
   */
  constructor(readonly fd: number, readonly owned: boolean, readonly stdout = false) {}

  /**
   * tsvm's stdout. A pipe, FIFO or terminal is reopened through /proc/self/fd as an open file
   * description of its own, non-blocking: O_NONBLOCK on fd 1 itself would be shared with the shell
   * and every other program writing to that terminal. A file is written as it is (it never waits
   * long), and so is anything that cannot be reopened (a socket): writes to it may block.
   */
  static openStdout(): StreamOutput {
    return StreamOutput.reopen(1, true);
  }

  /** `fd` (tsvm's stdout or stderr) reopened as openStdout says. */
  static reopen(fd: number, stdout = false): StreamOutput {
    const stat = sys.fstat(fd);
    const type = typeof stat === "number" ? 0 : stat.mode & S_IFMT;
    if (type === S_IFIFO || type === S_IFCHR) {
      try {
        return new StreamOutput(sys.open(`/proc/self/fd/${fd}`, O_WRONLY | O_NONBLOCK | O_NOCTTY), true, stdout);
      } catch {
        // no /proc, or a FIFO whose reader is gone: fall back to the fd as it is
      }
    }
    return new StreamOutput(fd, false, stdout);
  }

  /** Opens (creating or truncating) `path`, non-blocking (a FIFO nobody reads fails at once instead of hanging). */
  static file(path: string): StreamOutput {
    return new StreamOutput(openOutputFile(path), true);
  }

  /** Writes what the fd takes now. */
  write(bytes: Uint8Array): StreamWrite {
    for (;;) {
      const n = sys.writeRaw(this.fd, bytes);
      if (n >= 0) return n;
      if (n === -ERRNO.EINTR) continue;
      return n === -ERRNO.EAGAIN ? 0 : "broken";
    }
  }

  close(): void {
    if (this.owned) sys.close(this.fd);
  }
}

/**
 * Copies what arrives on `readFd` (a jailed device's output pipe) to `out`, reading only while `out`
 * has room: when it is full, the pipe is left unread until `out` is writable again, so the writer
 * into the pipe waits, not the loop. Output that is broken is read and dropped, so the writer never
 * blocks on a reader that is gone.
 */
export class OutputRelay {
  readonly #buffer = new Uint8Array(RELAY_CHUNK);
  /** Bytes read and not yet written: #buffer[#start, #end). */
  #start = 0;
  #end = 0;
  #broken = false;
  #closed = false;
  /** Waiting for `out` to have room (the pipe is not watched meanwhile). */
  #waiting = false;

  constructor(readonly loop: WatchingLoop, readonly readFd: number, readonly out: StreamOutput) {
    loop.watch(readFd, () => this.#onReadable());
  }

  #onReadable(): void {
    const n = sys.readRaw(this.readFd, this.#buffer);
    if (n === 0) return this.close(); // the device closed its end
    if (n < 0) return; // EAGAIN or EINTR: the loop comes back
    if (this.#broken) return;
    this.#start = 0;
    this.#end = n;
    if (!this.#flush()) {
      this.#waiting = true;
      this.loop.unwatch(this.readFd);
      this.loop.watch(this.out.fd, () => this.#onWritable(), EPOLLOUT);
    }
  }

  #onWritable(): void {
    if (!this.#flush()) return;
    this.#waiting = false;
    this.loop.unwatch(this.out.fd);
    this.loop.watch(this.readFd, () => this.#onReadable());
  }

  /** Writes what is held; true when nothing is left (written, or dropped because `out` broke). */
  #flush(): boolean {
    while (this.#start < this.#end) {
      const n = this.out.write(this.#buffer.subarray(this.#start, this.#end));
      if (n === "broken") {
        this.#broken = true;
        this.#start = this.#end;
        return true;
      }
      if (n === 0) return false;
      this.#start += n;
    }
    return true;
  }

  /** Stops relaying and closes the pipe (not `out`). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.loop.unwatch(this.#waiting ? this.out.fd : this.readFd);
    this.#waiting = false;
    sys.close(this.readFd);
  }
}
