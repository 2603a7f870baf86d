// unix_listener.ts - listening on an AF_UNIX socket path that may hold a stale socket from a
// process that died, without ever taking over a path something else still owns.
import { socket, sys } from "../../ffi/mod.ts";
import { ERRNO, errnoName } from "./errno.ts";
import { err, ok, type Result } from "./result.ts";

export const SOCK_STREAM = socket.SOCK_STREAM;
export const SOCK_SEQPACKET = socket.SOCK_SEQPACKET;

/**
 * Listens at `path` (created mode 0600) for sockets of `type`. A path where something answers, or
 * that is not a socket at all, is refused; a socket nobody answers on (left by a process that died)
 * is replaced. Returns the listening fd, or why not.
 */
export function listenUnix(path: string, type: number, what: string): Result<number> {
  const st = sys.lstat(path);
  const isSocket = typeof st === "number" ? null /* nothing there */ : (st.mode & sys.S_IFMT) === sys.S_IFSOCK;
  if (isSocket === false) return err(`${path} exists and is not a socket; not replacing it`);
  if (isSocket) {
    const probe = socket.unixConnect(path, type);
    if (probe >= 0) {
      sys.close(probe);
      return err(`something is already listening on ${what} ${path}`);
    }
    if (-probe !== ERRNO.ECONNREFUSED) return err(`failed to check ${what} ${path}: ${errnoName(-probe)}`);
    sys.unlink(path);
  }
  const fd = socket.unixListen(path, type);
  return fd < 0 ? err(`failed to listen on ${what} ${path}: ${errnoName(-fd)}`) : ok(fd);
}
