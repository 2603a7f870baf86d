// server.ts - the VM's control socket: listens at --socket PATH (mode 0600) and answers requests.
import { socket, sys } from "../../ffi/mod.ts";
import { listenUnix } from "../base/unix_listener.ts";
import { log } from "../base/log.ts";
import { OwnedFd } from "../base/owned_fd.ts";
import { MAX_MESSAGE_SIZE, Tube } from "../base/tube.ts";
import { decodeRequest, encodeResponse, type VmRequest, type VmResponse } from "./messages.ts";

const EMFILE = 24;
const ENFILE = 23;

/** Raised when the socket path cannot be ours (a live VM owns it, or it is not a socket). */
export class ControlSocketError extends Error {
  override readonly name = "ControlSocketError";
}

/** Clients connected at once; more are accepted and closed at once (they see the connection end). */
export const MAX_CONTROL_CLIENTS = 16;

/** The listening socket; `close` removes the file if it is still ours. */
export class ControlServer extends OwnedFd {
  readonly #clients = new Map<number, Tube>();
  /** The socket file's identity after bind, so `close` never removes a file that replaced it. */
  readonly #identity: string | null;

  private constructor(fd: number, readonly path: string) {
    super(fd);
    this.#identity = fileIdentity(path);
  }

  /** Listens at `path`: refuses a path a live VM answers on or that is not a socket; replaces a stale socket. */
  static listen(path: string): ControlServer {
    const fd = listenUnix(path, socket.SOCK_SEQPACKET, "the control socket");
    if (!fd.ok) throw new ControlSocketError(fd.error.replace("something is already listening on", "a running VM already owns"));
    return new ControlServer(fd.value, path);
  }

  /**
   * Accepts a pending connection and returns its fd (to watch); null when there was none or there
   * are MAX_CONTROL_CLIENTS already (it is closed), and "exhausted" when the process is out of fds
   * (the connection stays pending and the listening socket readable: stop watching it a while).
   */
  accept(): number | null | "exhausted" {
    const fd = socket.accept(this.fd);
    if (fd === -EMFILE || fd === -ENFILE) return "exhausted";
    if (fd < 0) return null;
    if (this.#clients.size >= MAX_CONTROL_CLIENTS) {
      sys.close(fd);
      return null;
    }
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
    let failed = false;
    const respond = (response: VmResponse): void => {
      if (answered) return;
      answered = true;
      if (!this.#clients.has(fd)) return;
      try {
        tube.send(encodeFitting(response));
      } catch {
        // A client that went away, or does not read its answers: it is dropped. Answered now, the
        // caller unwatches it first ("closed"); answered later, it is not being watched.
        failed = true;
        if (!synchronous) this.#drop(fd);
        return;
      }
      if (!synchronous) onAnswered();
    };
    if (!request.ok) respond({ kind: "error", message: `malformed request: ${request.error}` });
    else handle(request.value, respond);
    synchronous = false;
    if (failed) return "closed";
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
    // Another VM may have replaced a socket file someone removed: that one is not ours to remove.
    if (this.#identity === null || fileIdentity(this.path) !== this.#identity) return;
    sys.unlink(this.path); // an error: already gone
  }
}

/**
 * `response` encoded, made to fit one control message: a long error (stop's per-disk reasons, say)
 * is cut short with "...", and any other answer too long to send becomes an error saying so.
 */
export function encodeFitting(response: VmResponse): Uint8Array {
  const bytes = encodeResponse(response);
  if (bytes.byteLength <= MAX_MESSAGE_SIZE) return bytes;
  if (response.kind === "error") {
    const room = response.message.length - (bytes.byteLength - MAX_MESSAGE_SIZE) * 4 - 3; // UTF-8: up to 4 bytes a code unit
    return encodeFitting({ kind: "error", message: `${response.message.slice(0, Math.max(0, room))}...` });
  }
  return encodeResponse({ kind: "error", message: `the ${response.kind} answer is ${bytes.byteLength} bytes, more than a control message holds (${MAX_MESSAGE_SIZE})` });
}

/** The device and inode of the file at `path` (not following a last symbolic link), or null. */
function fileIdentity(path: string): string | null {
  const st = sys.lstat(path);
  return typeof st === "number" ? null : st.identity;
}

/** How long the control socket is left unwatched when the VMM is out of fds (else it stays readable: a busy loop). */
const ACCEPT_BACKOFF_MS = 1000;

/** What answers a request: now, or later through `respond`. */
export type RequestHandler = (request: VmRequest, respond: (response: VmResponse) => void) => void;

/** The loop the control socket is served on (the VMM's ControlLoop). */
export interface ServingLoop {
  watch(fd: number, handler: () => void): void;
  unwatch(fd: number): void;
  everyTick(task: () => void): void;
}

/** Serves `control` on `loop`: one request at a time per client. */
export function serveControl(loop: ServingLoop, control: ControlServer, handle: RequestHandler): void {
  let resumeAt = 0;
  const onListener = (): void => {
    const client = control.accept();
    if (client === "exhausted") {
      log.warn(`the control socket cannot take a connection: tsvm is out of fds; trying again in ${ACCEPT_BACKOFF_MS / 1000} s`);
      loop.unwatch(control.fd);
      resumeAt = performance.now() + ACCEPT_BACKOFF_MS;
      return;
    }
    if (client === null) return;
    // While a request waits for a device the client is not watched: its next request waits its turn.
    const serveClient = (): void => {
      const state = control.serve(client, handle, () => loop.watch(client, serveClient));
      if (state === "answered") return;
      loop.unwatch(client);
      if (state === "closed") control.drop(client);
    };
    loop.watch(client, serveClient);
  };
  loop.watch(control.fd, onListener);
  loop.everyTick(() => {
    if (resumeAt === 0 || performance.now() < resumeAt) return;
    resumeAt = 0;
    loop.watch(control.fd, onListener);
  });
}
