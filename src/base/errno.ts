// errno.ts - the error raised when a system call fails, named by its errno.

/** Linux x86-64 errno names for the values tsvm's system calls report. */
const ERRNO_NAMES: Readonly<Record<number, string>> = {
  1: "EPERM", 2: "ENOENT", 3: "ESRCH", 4: "EINTR", 5: "EIO", 6: "ENXIO", 7: "E2BIG", 8: "ENOEXEC",
  9: "EBADF", 10: "ECHILD", 11: "EAGAIN", 12: "ENOMEM", 13: "EACCES", 14: "EFAULT", 16: "EBUSY",
  17: "EEXIST", 19: "ENODEV", 20: "ENOTDIR", 21: "EISDIR", 22: "EINVAL", 23: "ENFILE", 24: "EMFILE",
  25: "ENOTTY", 27: "EFBIG", 28: "ENOSPC", 29: "ESPIPE", 30: "EROFS", 32: "EPIPE", 34: "ERANGE",
  38: "ENOSYS", 61: "ENODATA", 90: "EMSGSIZE", 95: "EOPNOTSUPP", 98: "EADDRINUSE", 104: "ECONNRESET",
  107: "ENOTCONN", 110: "ETIMEDOUT", 111: "ECONNREFUSED",
};

/** Returns the symbolic name of an errno value (`EINVAL`), or `errno N` when unknown. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

/** A failed system call: `failed to <what>: <ENAME>`. */
export class SysError extends Error {
  override readonly name = "SysError";
  readonly errno: number;
  constructor(what: string, errno: number) {
    super(`failed to ${what}: ${errnoName(errno)}`);
    this.errno = errno;
  }
}

/** Returns `result` when it is not negative, else throws the SysError for `-result`. */
export function checked(result: number, what: string): number {
  if (result < 0) throw new SysError(what, -result);
  return result;
}
