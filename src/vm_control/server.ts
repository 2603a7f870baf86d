// server.ts - the VM's control socket: listens at --socket PATH (mode 0600) and answers requests.
import { unlinkSync } from "node:fs";
import { socket, sys } from "../../ffi/mod.ts";
import { listenUnix } from "../base/unix_listener.ts";
import { OwnedFd } from "../base/owned_fd.ts";
import { Tube } from "../base/tube.ts";
import { decodeRequest, encodeResponse, type VmRequest, type VmResponse } from "./messages.ts";


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
    const fd = listenUnix(path, socket.SOCK_SEQPACKET, "the control socket");
    if (!fd.ok) throw new ControlSocketError(fd.error.replace("something is already listening on", "a running VM already owns"));
    return new ControlServer(fd.value, path);
  }

  /** Accepts a pending connection and returns its fd (to watch), or null. */
  accept(): number | null {
    const fd = socket.accept(this.fd);
    if (fd < 0) return null;
    this.#clients.set(fd, new Tube(fd));
    return fd;
  }

  /**
   * Reads one request from client `fd` and hands it to `handle`, which answers through `respond`
   * (at once, or later from the loop: a request may wait for a device). A client gets one request
   * answered at a time. Returns "closed" when the client is gone, "nothing" when no request was
   * waiting, "answered" when the answer went out at once, and "pending" when it will come later:
   * the caller stops watching the client until `onAnswered` runs.
   */
  serve(
    fd: number, handle: (request: VmRequest, respond: (response: VmResponse) => void) => void, onAnswered: () => void,
  ): "answered" | "closed" | "nothing" | "pending" {
    const tube = this.#clients.get(fd);
    if (!tube) return "closed";
    let message: ReturnType<Tube["receive"]>;
    try {
      message = tube.receive(0);
    } catch {
      this.#drop(fd);
      return "closed";
    }
    if (message.kind === "closed") {
      this.#drop(fd);
      return "closed";
    }
    if (message.kind === "timeout") return "nothing";
    for (const received of message.fds) sys.close(received); // clients have no business sending fds
    const request = decodeRequest(message.bytes);
    let answered = false;
    let synchronous = true;
    const respond = (response: VmResponse): void => {
      if (answered) return;
      answered = true;
      if (!this.#clients.has(fd)) return;
      try {
        tube.send(encodeResponse(response));
      } catch {
        this.#drop(fd);
        return;
      }
      if (!synchronous) onAnswered();
    };
    if (!request.ok) respond({ kind: "error", message: `malformed request: ${request.error}` });
    else handle(request.value, respond);
    synchronous = false;
    return answered ? "answered" : "pending";
  }

  /** Forgets client `fd` (after its watcher was removed). */
  drop(fd: number): void {
    this.#drop(fd);
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
