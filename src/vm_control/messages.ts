// messages.ts - the control socket's requests and responses, and their binary encoding.
//
// Every message: le32 magic "TSVM", le16 protocol version, le16 kind, then the kind's fields in
// base/codec.ts's encoding (strings are le32 length + UTF-8). The protocol is internal: only tsvm's
// own subcommands speak it. Decoding never throws: a malformed message is an error Result.
import { ByteReader, ByteWriter } from "../base/codec.ts";
import { err, type Result } from "../base/result.ts";

export const CONTROL_MAGIC = 0x4d565354; // "TSVM"
export const CONTROL_VERSION = 1;

export type VmRequest =
  | { readonly kind: "stop" }
  | { readonly kind: "suspend" }
  | { readonly kind: "resume" }
  | { readonly kind: "balloon"; readonly bytes: number }
  | { readonly kind: "balloon_stats" }
  | { readonly kind: "disk_resize"; readonly index: number; readonly bytes: number }
  | { readonly kind: "vsock_stats" };

export type VmResponse =
  | { readonly kind: "ok" }
  | { readonly kind: "error"; readonly message: string }
  | { readonly kind: "balloon_stats"; readonly json: string }
  | { readonly kind: "vsock_stats"; readonly json: string };

const REQUEST_KINDS = ["stop", "suspend", "resume", "balloon", "balloon_stats", "disk_resize", "vsock_stats"] as const;
const RESPONSE_KINDS = ["ok", "error", "balloon_stats", "vsock_stats"] as const;
const RESPONSE_BASE = 0x80;

function header(kind: number): ByteWriter {
  return new ByteWriter().u32(CONTROL_MAGIC).u16(CONTROL_VERSION).u16(kind);
}

/** Reads the header; the reader fails (and the kind is -1) when it is not a tsvm control message. */
function readHeader(r: ByteReader): number {
  const magic = r.u32();
  const version = r.u16();
  const kind = r.u16();
  if (r.failure !== null) return -1;
  if (magic !== CONTROL_MAGIC) r.fail("not a tsvm control message");
  else if (version !== CONTROL_VERSION) r.fail(`protocol version ${version}, expected ${CONTROL_VERSION}`);
  return r.failure === null ? kind : -1;
}

export function encodeRequest(r: VmRequest): Uint8Array {
  const w = header(REQUEST_KINDS.indexOf(r.kind));
  if (r.kind === "balloon") w.u64(r.bytes);
  if (r.kind === "disk_resize") w.u32(r.index).u64(r.bytes);
  return w.done();
}

export function decodeRequest(bytes: Uint8Array): Result<VmRequest> {
  const r = new ByteReader(bytes);
  const code = readHeader(r);
  if (code < 0) return err(r.failure!);
  const kind = REQUEST_KINDS[code];
  switch (kind) {
    case "stop":
    case "suspend":
    case "resume":
    case "balloon_stats":
    case "vsock_stats":
      return r.finish({ kind }, true);
    case "balloon":
      return r.finish({ kind, bytes: r.u64() }, true);
    case "disk_resize": {
      const index = r.u32();
      return r.finish({ kind, index, bytes: r.u64() }, true);
    }
    default:
      return err(`unknown request kind ${code}`);
  }
}

export function encodeResponse(r: VmResponse): Uint8Array {
  const w = header(RESPONSE_BASE + RESPONSE_KINDS.indexOf(r.kind));
  if (r.kind === "error") w.str(r.message);
  if (r.kind === "balloon_stats" || r.kind === "vsock_stats") w.str(r.json);
  return w.done();
}

export function decodeResponse(bytes: Uint8Array): Result<VmResponse> {
  const r = new ByteReader(bytes);
  const code = readHeader(r);
  if (code < 0) return err(r.failure!);
  const kind = RESPONSE_KINDS[code - RESPONSE_BASE];
  switch (kind) {
    case "ok":
      return r.finish({ kind }, true);
    case "error":
      return r.finish({ kind, message: r.str() }, true);
    case "balloon_stats":
    case "vsock_stats":
      return r.finish({ kind, json: r.str() }, true);
    default:
      return err(`unknown response kind ${code}`);
  }
}
