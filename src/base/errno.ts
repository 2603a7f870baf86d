// errno.ts - errno values in one place, their names, and the error raised when a system call fails.

/** Linux x86-64 errno values tsvm looks at (asm-generic/errno-base.h, errno.h). */
export const ERRNO = {
  EPERM: 1, ENOENT: 2, ESRCH: 3, EINTR: 4, EIO: 5, ENXIO: 6, E2BIG: 7, ENOEXEC: 8, EBADF: 9, ECHILD: 10,
  EAGAIN: 11, ENOMEM: 12, EACCES: 13, EFAULT: 14, EBUSY: 16, EEXIST: 17, ENODEV: 19, ENOTDIR: 20,
  EISDIR: 21, EINVAL: 22, ENFILE: 23, EMFILE: 24, ENOTTY: 25, EFBIG: 27, ENOSPC: 28, ESPIPE: 29, EROFS: 30,
  EPIPE: 32, ERANGE: 34, ENAMETOOLONG: 36, ENOSYS: 38, ELOOP: 40, ENODATA: 61, EPROTO: 71, ENOTSOCK: 88,
  EMSGSIZE: 90, EPROTOTYPE: 91, EOPNOTSUPP: 95, EADDRINUSE: 98, ECONNRESET: 104, ENOTCONN: 107,
  ETIMEDOUT: 110, ECONNREFUSED: 111,
} as const;
export type ErrnoName = keyof typeof ERRNO;

const NAMES: ReadonlyMap<number, string> = new Map(Object.entries(ERRNO).map(([name, value]) => [value, name]));

/** Returns the symbolic name of an errno value (`EINVAL`), or `errno N` when unknown. */
export function errnoName(errno: number): string {
  return NAMES.get(errno) ?? `errno ${errno}`;
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
