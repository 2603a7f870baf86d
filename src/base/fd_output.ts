// fd_output.ts - where a port's bytes go: stdout, a file, or any fd; errors never reach the guest.
import { sys } from "../../ffi/mod.ts";
import { ERRNO } from "./errno.ts";

const O_WRONLY = 0o1;
const O_CREAT = 0o100;
const O_TRUNC = 0o1000;

/** Writes every byte to `fd`, retrying short writes; output errors are dropped (the guest keeps running). */
export class FdOutput {
  constructor(readonly fd: number, readonly owned: boolean) {}

  /** Opens (creating or truncating) `path` for a port's output. */
  static file(path: string): FdOutput {
    return new FdOutput(sys.open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644), true);
  }

  write(bytes: Uint8Array): void {
    let done = 0;
    while (done < bytes.byteLength) {
      const n = sys.writeRaw(this.fd, done === 0 ? bytes : bytes.subarray(done));
      if (n === -ERRNO.EINTR || n === -ERRNO.EAGAIN) continue;
      if (n <= 0) return;
      done += n;
    }
  }

  close(): void {
    if (this.owned) sys.close(this.fd);
  }
}
