// client.ts - the subcommands' side of the control socket: one request, one response, with a deadline.
import { lstatSync } from "node:fs";
import { socket, sys } from "../../ffi/mod.ts";
import { errnoName } from "../base/errno.ts";
import { Tube } from "../base/tube.ts";
import { decodeResponse, encodeRequest, type VmRequest, type VmResponse } from "./messages.ts";

/** How long a VM may take to answer. */
export const RESPONSE_TIMEOUT_MS = 5000;
const ENOENT = 2;
const ECONNREFUSED = 111;
const ENOTSOCK = 88;
const EPROTOTYPE = 91;

/** A request that could not be carried out; the message says why. */
export class ControlError extends Error {
  override readonly name = "ControlError";
}

/** Sends `request` to the VM at `path` and returns its response; throws ControlError otherwise. */
export function sendRequest(path: string, request: VmRequest, timeoutMs = RESPONSE_TIMEOUT_MS): VmResponse {
  try {
    if (!lstatSync(path).isSocket()) throw new ControlError(`${path} is not a tsvm control socket (not a socket at all)`);
  } catch (e) {
    if (e instanceof ControlError) throw e;
  }
  const fd = socket.unixConnect(path);
  if (fd < 0) {
    const errno = -fd;
    if (errno === ENOENT) throw new ControlError(`no control socket at ${path}`);
    if (errno === ECONNREFUSED) throw new ControlError(`no VM is listening on ${path} (a stale socket)`);
    if (errno === ENOTSOCK || errno === EPROTOTYPE) throw new ControlError(`${path} is not a tsvm control socket`);
    throw new ControlError(`failed to connect to ${path}: ${errnoName(errno)}`);
  }
  using tube = new Tube(fd);
  tube.send(encodeRequest(request));
  const reply = tube.receive(timeoutMs);
  if (reply.kind === "timeout") throw new ControlError(`the VM at ${path} did not answer within ${timeoutMs / 1000} s`);
  if (reply.kind === "closed") throw new ControlError(`${path} closed the connection without answering (not a tsvm VM?)`);
  for (const fd of reply.fds) sys.close(fd); // a VM has no business sending fds
  const decoded = decodeResponse(reply.bytes);
  if (!decoded.ok) throw new ControlError(`${path} is not speaking tsvm's control protocol: ${decoded.error}`);
  return decoded.value;
}
