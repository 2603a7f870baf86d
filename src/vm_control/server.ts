// server.ts - the VM's control socket: listens at --socket PATH (mode 0600) and answers requests.
import { lstatSync, unlinkSync } from "node:fs";
import { socket, sys } from "../../ffi/mod.ts";
import { errnoName } from "../base/errno.ts";
import { OwnedFd } from "../base/owned_fd.ts";
import { Tube } from "../base/tube.ts";
import { decodeRequest, encodeResponse, type VmRequest, type VmResponse } from "./messages.ts";

const ECONNREFUSED = 111;

/** Raised when the socket path cannot be ours (a live VM owns it, or it is not a socket). */
export class ControlSocketError extends Error {
  override readonly name = "ControlSocketError";
}

/** The listening socket; `close` removes the file. */
export class ControlServer extends OwnedFd {
  readonly #clients = new Map<number, Tube>();

  private constructor(fd: number, readonly path: string) {
    super(fd);
  }

  /** Listens at `path`: refuses a path a live VM answers on or that is not a socket; replaces a stale socket. */
  static listen(path: string): ControlServer {
    let stat: ReturnType<typeof lstatSync> | null = null;
    try {
      stat = lstatSync(path);
    } catch {
      stat = null;
    }
    if (stat) {
      if (!stat.isSocket()) throw new ControlSocketError(`${path} exists and is not a socket; not replacing it`);
      const probe = socket.unixConnect(path);
      if (probe >= 0) {
        sys.close(probe);
        throw new ControlSocketError(`a running VM already owns the control socket ${path}`);
      }
      if (-probe !== ECONNREFUSED) throw new ControlSocketError(`failed to check the control socket ${path}: ${errnoName(-probe)}`);
      unlinkSync(path); // stale: left by a VM that is gone
    }
    const fd = socket.unixListen(path);
    if (fd < 0) throw new ControlSocketError(`failed to listen on ${path}: ${errnoName(-fd)}`);
    return new ControlServer(fd, path);
  }

  /** Accepts a pending connection and returns its fd (to watch), or null. */
  accept(): number | null {
    const fd = socket.accept(this.fd);
    if (fd < 0) return null;
    this.#clients.set(fd, new Tube(fd));
    return fd;
  }

  /** Reads one request from client `fd` and answers it with `handle`; returns false when the client is gone. */
  serve(fd: number, handle: (request: VmRequest) => VmResponse): boolean {
    const tube = this.#clients.get(fd);
    if (!tube) return false;
    let reply: VmResponse;
    try {
      const message = tube.receive(0);
      if (message.kind === "closed") return this.#drop(fd);
      if (message.kind === "timeout") return true;
      for (const fd of message.fds) sys.close(fd); // clients have no business sending fds
      const request = decodeRequest(message.bytes);
      reply = request.ok ? handle(request.value) : { kind: "error", message: `malformed request: ${request.reason}` };
    } catch {
      return this.#drop(fd);
    }
    try {
      tube.send(encodeResponse(reply));
    } catch {
      return this.#drop(fd);
    }
    return true;
  }

  #drop(fd: number): false {
    this.#clients.get(fd)?.close();
    this.#clients.delete(fd);
    return false;
  }

  override close(): void {
    for (const fd of [...this.#clients.keys()]) this.#drop(fd);
    super.close();
    try {
      unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}
