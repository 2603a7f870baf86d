// user_file.ts - reads a whole file the user named (a kernel, an initrd, a --config file) without
// trusting what it is: it must be a regular file, and no larger than its caller allows. A FIFO
// would hang the start (its open waits for a writer, its read for data), and a device such as
// /dev/zero never ends. Through the C library, so the VMM reading a kernel loads no Node file module.
import { sys } from "../../ffi/mod.ts";
import { ERRNO, errnoName } from "./errno.ts";
import { err, ok, type Result } from "./result.ts";

const O_RDONLY = 0;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;

/** Why a file could not be read: in words (an errno's name, or what the file is), and the errno if a call failed. */
export type UserFileError = {
  readonly reason: string;
  readonly errno: number | null;
  /** The file's size, when that is why it was refused (more than the caller allows). */
  readonly tooLarge: number | null;
};

const failed = (errno: number): Result<never, UserFileError> => err({ reason: errnoName(errno), errno, tooLarge: null });
const refused = (reason: string, tooLarge: number | null = null): Result<never, UserFileError> => err({ reason, errno: null, tooLarge });

/** The bytes of the regular file at `path` (at most `maxBytes`), or why they cannot be had. */
export function readUserFile(path: string, maxBytes: number): Result<Uint8Array, UserFileError> {
  // Opened non-blocking (a FIFO's open would wait for a writer), then checked on that fd.
  const fd = sys.openRaw(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return failed(-fd);
  try {
    const stat = sys.fstat(fd);
    if (typeof stat === "number") return failed(-stat);
    if ((stat.mode & sys.S_IFMT) !== sys.S_IFREG) return refused("not a regular file");
    if (stat.size > maxBytes) return refused(`${stat.size} bytes is more than ${maxBytes}`, stat.size);
    const bytes = new Uint8Array(stat.size);
    for (let done = 0; done < bytes.byteLength;) {
      const n = sys.preadRaw(fd, bytes.subarray(done), done);
      if (n === -ERRNO.EINTR) continue;
      if (n < 0) return failed(-n);
      if (n === 0) return refused(`it ended at ${done} of the ${stat.size} bytes it had when opened`);
      done += n;
    }
    return ok(bytes);
  } finally {
    sys.close(fd);
  }
}
