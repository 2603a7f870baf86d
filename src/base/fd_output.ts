// fd_output.ts - where a port's bytes go: stdout, a file, or any fd; errors never reach the guest.
import { socket, sys } from "../../ffi/mod.ts";
import { ERRNO, errnoName } from "./errno.ts";

const O_WRONLY = 0o1;
const O_CREAT = 0o100;
const O_TRUNC = 0o1000;
const O_NOCTTY = 0o400;
const O_NONBLOCK = 0o4000;
/** How long one wait for a full non-blocking output lasts before `abandon` is asked again. */
const WAIT_SLICE_MS = 100;

/** An output file could not be opened; the message names the file and says why in words. */
export class OutputFileError extends Error {
  override readonly name = "OutputFileError";
}

/**
 * Opens (creating or truncating) the file a port or console writes to, non-blocking: a FIFO nobody
 * reads fails at once (ENXIO) instead of hanging the start. Throws OutputFileError.
 */
export function openOutputFile(path: string): number {
  const fd = sys.openRaw(path, O_WRONLY | O_CREAT | O_TRUNC | O_NONBLOCK | O_NOCTTY, 0o644);
  if (fd >= 0) return fd;
  const why = -fd === ERRNO.ENXIO ? "a FIFO that no program has open for reading (ENXIO)" : errnoName(-fd);
  throw new OutputFileError(`failed to open ${path}: ${why}`);
}

/**
 * Writes every byte to `fd`, retrying short writes; output errors are dropped (the guest keeps running).
 * A reader that stops reading holds the writer up (the guest sees a busy port), as QEMU and crosvm do;
 * `abandon` is asked whenever a write is interrupted or would block, and drops the rest when true
 * (a vCPU thread parks there for a suspend and says "drop" once the VM is stopping, so a stuck
 * reader holds neither tsvm suspend nor tsvm's exit).
 */
export class FdOutput {
  /**
   * `writeOnce` is the one write call (the main thread passes one that a kick interrupts, since it
   * must not sit in write() while its control loop has work: vcpu/vcpu_runner.ts).
   */
  constructor(
    readonly fd: number,
    readonly owned: boolean,
    readonly abandon: () => boolean = () => false,
    readonly writeOnce: (fd: number, bytes: Uint8Array) => number = sys.writeRaw,
  ) {}

  /**
   * Opens (creating or truncating) `path` for a port's output, non-blocking: a FIFO nobody reads
   * fails at once (ENXIO) instead of hanging the start, and a full one makes the port busy.
   */
  static file(path: string): FdOutput {
    return new FdOutput(openOutputFile(path), true);
  }

  write(bytes: Uint8Array): void {
    let done = 0;
    while (done < bytes.byteLength) {
      const n = this.writeOnce(this.fd, done === 0 ? bytes : bytes.subarray(done));
      if (n > 0) {
        done += n;
        continue;
      }
      if (n !== -ERRNO.EINTR && n !== -ERRNO.EAGAIN) return;
      if (this.abandon()) return;
      // A non-blocking fd (a terminal or pipe shared with another program) waits here instead of spinning.
      if (n === -ERRNO.EAGAIN) socket.poll(this.fd, socket.POLLOUT, WAIT_SLICE_MS);
    }
  }

  close(): void {
    if (this.owned) sys.close(this.fd);
  }
}
