// userfault.ts - holds memory's first touch until a test lets it go (userfaultfd), so a system call
// that copies into it stays in the kernel as long as the test needs.
import { dlopen, ptr } from "bun:ffi";

const SYS_USERFAULTFD = 323;
const SYS_IOCTL = 16;
const SYS_CLOSE = 3;
const O_CLOEXEC = 0o2000000;
const UFFD_API = 0xaa;
const UFFDIO_API = 0xc018aa3f; // _IOWR(0xAA, 0x3F, struct uffdio_api): 24 bytes
const UFFDIO_REGISTER = 0xc020aa00; // _IOWR(0xAA, 0x00, struct uffdio_register): 32 bytes
const UFFDIO_REGISTER_MODE_MISSING = 1;

// (syscall is variadic in C; on x86-64 its integer arguments pass as a plain call's do)
const libc = dlopen("libc.so.6", {
  syscall: { args: ["i64", "i64", "i64", "i64"], returns: "i64" },
}).symbols;

/** Memory whose pages not yet touched block whoever touches them (a thread, the kernel copying for one) until `release`. */
export class HeldMemory {
  private constructor(readonly fd: number) {}

  /**
   * Holds `view`'s pages, which must be whole pages of a shared mapping (a memfd's, as GuestMemory's)
   * that nothing has touched yet; null where userfaultfd is not available (not permitted, or no such
   * system call), after saying so.
   */
  static hold(view: Uint8Array): HeldMemory | null {
    const fd = Number(libc.syscall(SYS_USERFAULTFD, O_CLOEXEC, 0, 0));
    if (fd < 0) {
      console.warn("skipping: userfaultfd is not available here");
      return null;
    }
    const held = new HeldMemory(fd);
    const api = new BigUint64Array([BigInt(UFFD_API), 0n, 0n]);
    const register = new BigUint64Array([BigInt(ptr(view)), BigInt(view.byteLength), BigInt(UFFDIO_REGISTER_MODE_MISSING), 0n]);
    if (Number(libc.syscall(SYS_IOCTL, fd, UFFDIO_API, ptr(api))) < 0 || Number(libc.syscall(SYS_IOCTL, fd, UFFDIO_REGISTER, ptr(register))) < 0) {
      held.release();
      throw new Error("userfaultfd would not hold the memory");
    }
    return held;
  }

  /** Lets every touch go, waiting ones included: they retry and find ordinary memory. */
  release(): void {
    libc.syscall(SYS_CLOSE, this.fd, 0, 0, 0);
  }
}
