// serial_output.ts - where a serial port's bytes go: stdout, a file, or nowhere.
import { sys } from "../../ffi/mod.ts";
import type { SerialOutput } from "./serial.ts";

const O_WRONLY = 0o1;
const O_CREAT = 0o100;
const O_TRUNC = 0o1000;
const EAGAIN = 11;
const EINTR = 4;

/** Writes every byte to `fd`, retrying short writes; output errors are dropped (the guest keeps running). */
export class FdOutput implements SerialOutput {
  constructor(readonly fd: number, readonly owned: boolean) {}

  /** Opens (creating or truncating) `path` for a port's output. */
  static file(path: string): FdOutput {
    return new FdOutput(sys.open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644), true);
  }

  write(bytes: Uint8Array): void {
    let done = 0;
    while (done < bytes.byteLength) {
      const n = sys.writeRaw(this.fd, done === 0 ? bytes : bytes.subarray(done));
      if (n === -EINTR || n === -EAGAIN) continue;
      if (n <= 0) return;
      done += n;
    }
  }

  close(): void {
    if (this.owned) sys.close(this.fd);
  }
}
