// owned_fd.ts - the base of every object that owns one file descriptor and closes it once.
import { sys } from "../../ffi/mod.ts";

/** Owns `fd`: close() is idempotent and `using` closes it at the end of the scope. */
export class OwnedFd {
  readonly fd: number;
  #closed = false;

  constructor(fd: number) {
    this.fd = fd;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    sys.close(this.fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
