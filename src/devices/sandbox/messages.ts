// messages.ts - what the VMM and a jailed device process say on the device's control tube.
//
// The virtio side (queues, memory, interrupts, configuration) travels over vhost-user on its own
// socket; this tube carries only what vhost-user has no words for: the setup before the jail, the
// device's readiness, the VMM's commands (balloon, disk, console input) with their replies, and for
// vsock the host sockets the VMM opens for the device (it can open none itself).
//
//   VMM -> device:  SETUP (once)             COMMAND id, command
//                   HOST_CONNECTION port + the socket of a host program asking for a guest port
//                   HOST_CONNECTED id, error + on success the socket asked for
//   device -> VMM:  READY | FAILED reason    REPLY id, reply
//                   HOST_CONNECT id, port    (connect me to the host program serving this port)
// Encoding: one kind byte, then ByteWriter fields. Decoding never throws (base/codec.ts).
import { ByteReader, ByteWriter } from "../../base/codec.ts";
import { err, type Result } from "../../base/result.ts";
import type { DeviceSpec } from "../device_spec.ts";
import type { BalloonStats, DeviceCommand, DeviceReply, VsockStats } from "../virtio/device_control.ts";

export const TUBE_MESSAGE = {
  SETUP: 1, COMMAND: 2, HOST_CONNECTION: 3, HOST_CONNECTED: 4, READY: 0x81, FAILED: 0x82, REPLY: 0x83, HOST_CONNECT: 0x84,
} as const;

/** What a device process is told before it locks itself down. */
export type DeviceSetup = {
  readonly spec: DeviceSpec;
  readonly logLevel: string;
  /** The compiled seccomp filter (struct sock_filter[]), built by the VMM from the device's policy. */
  readonly filter: Uint8Array;
  /** Whether fd 3 is a listening socket to accept front-ends on (`tsvm devices`) rather than a connected one. */
  readonly listen: boolean;
  /** How many resource fds follow the tube (at 5, 6, ...). */
  readonly resourceFds: number;
};

/** A message on the tube, decoded. */
export type TubeMessage =
  | { readonly kind: "setup"; readonly setup: DeviceSetup }
  | { readonly kind: "command"; readonly id: number; readonly command: DeviceCommand }
  | { readonly kind: "ready" }
  | { readonly kind: "failed"; readonly reason: string }
  | { readonly kind: "reply"; readonly id: number; readonly reply: DeviceReply }
  | { readonly kind: "host_connection"; readonly port: number }
  | { readonly kind: "host_connected"; readonly id: number; readonly error: string | null }
  | { readonly kind: "host_connect"; readonly id: number; readonly port: number };

const COMMAND_KINDS = ["balloon_stats", "balloon_target", "console_input", "disk_resize", "flush", "vsock_stats"] as const;
const REPLY_KINDS = ["balloon_stats", "console_accepted", "error", "ok", "vsock_stats"] as const;
/** The counters of a vsock statistics reply, in their order on the tube. */
const VSOCK_COUNTERS = ["cid", "connections", "hostInitiated", "guestInitiated", "refused", "resets", "malformed", "bytesToGuest", "bytesFromGuest"] as const;
/** bounds the statistics a balloon reply may carry (virtio defines ten tags) */
const MAX_STATS = 32;

export function encodeSetup(setup: DeviceSetup): Uint8Array {
  return new ByteWriter().u8(TUBE_MESSAGE.SETUP).str(JSON.stringify(setup.spec)).str(setup.logLevel).bytes(setup.filter)
    .u8(setup.listen ? 1 : 0).u8(setup.resourceFds).done();
}

export function encodeCommand(id: number, command: DeviceCommand): Uint8Array {
  const w = new ByteWriter().u8(TUBE_MESSAGE.COMMAND).u32(id).u8(COMMAND_KINDS.indexOf(command.kind));
  switch (command.kind) {
    case "balloon_target": w.u32(command.pages); break;
    case "console_input": w.bytes(command.bytes); break;
    case "disk_resize": w.u64(command.bytes); break;
    default: break;
  }
  return w.done();
}

/** A host program asked for guest `port`; its socket travels with the message. */
export function encodeHostConnection(port: number): Uint8Array {
  return new ByteWriter().u8(TUBE_MESSAGE.HOST_CONNECTION).u32(port).done();
}

/** The answer to HOST_CONNECT `id`: null error means the socket travels with the message. */
export function encodeHostConnected(id: number, error: string | null): Uint8Array {
  return new ByteWriter().u8(TUBE_MESSAGE.HOST_CONNECTED).u32(id).u8(error === null ? 1 : 0).str(error ?? "").done();
}

export function encodeHostConnect(id: number, port: number): Uint8Array {
  return new ByteWriter().u8(TUBE_MESSAGE.HOST_CONNECT).u32(id).u32(port).done();
}

export function encodeReady(): Uint8Array {
  return Uint8Array.of(TUBE_MESSAGE.READY);
}

export function encodeFailed(reason: string): Uint8Array {
  return new ByteWriter().u8(TUBE_MESSAGE.FAILED).str(reason).done();
}

export function encodeReply(id: number, reply: DeviceReply): Uint8Array {
  const w = new ByteWriter().u8(TUBE_MESSAGE.REPLY).u32(id).u8(REPLY_KINDS.indexOf(reply.kind));
  switch (reply.kind) {
    case "balloon_stats": {
      const s = reply.stats;
      const entries = Object.entries(s.stats ?? {}).slice(0, MAX_STATS);
      w.u32(s.target).u32(s.actual).u8(s.stats === null ? 0 : 1).u32(entries.length);
      for (const [name, value] of entries) w.str(name).u64(Math.max(0, Math.min(Number.MAX_SAFE_INTEGER, Math.floor(value))));
      break;
    }
    case "console_accepted": w.u32(reply.count); break;
    case "vsock_stats":
      for (const name of VSOCK_COUNTERS) w.u64(Math.max(0, Math.min(Number.MAX_SAFE_INTEGER, Math.floor(reply.stats[name]))));
      break;
    case "error": w.str(reply.message); break;
    case "ok": break;
  }
  return w.done();
}

/** Decodes a tube message; anything malformed is an error Result saying why. */
export function decodeTubeMessage(bytes: Uint8Array): Result<TubeMessage> {
  const r = new ByteReader(bytes);
  const kind = r.u8();
  switch (kind) {
    case TUBE_MESSAGE.SETUP: {
      const specText = r.str();
      const logLevel = r.str();
      const filter = r.bytes().slice();
      const listen = r.u8() === 1;
      const resourceFds = r.u8();
      let spec: DeviceSpec;
      try {
        spec = JSON.parse(specText) as DeviceSpec;
      } catch {
        return err("the setup's device spec is not JSON");
      }
      return r.finish({ kind: "setup", setup: { spec, logLevel, filter, listen, resourceFds } }, true);
    }
    case TUBE_MESSAGE.COMMAND: {
      const id = r.u32();
      const command = decodeCommand(r);
      return r.finish({ kind: "command", id, command }, true);
    }
    case TUBE_MESSAGE.HOST_CONNECTION:
      return r.finish({ kind: "host_connection", port: r.u32() }, true);
    case TUBE_MESSAGE.HOST_CONNECTED: {
      const id = r.u32();
      const succeeded = r.u8() === 1;
      const error = r.str();
      return r.finish({ kind: "host_connected", id, error: succeeded ? null : error }, true);
    }
    case TUBE_MESSAGE.HOST_CONNECT: {
      const id = r.u32();
      const port = r.u32();
      return r.finish({ kind: "host_connect", id, port }, true);
    }
    case TUBE_MESSAGE.READY:
      return r.finish({ kind: "ready" }, true);
    case TUBE_MESSAGE.FAILED:
      return r.finish({ kind: "failed", reason: r.str() }, true);
    case TUBE_MESSAGE.REPLY: {
      const id = r.u32();
      const reply = decodeReply(r);
      return r.finish({ kind: "reply", id, reply }, true);
    }
    default:
      return err(bytes.byteLength === 0 ? "an empty message" : `unknown message kind ${kind}`);
  }
}

function decodeCommand(r: ByteReader): DeviceCommand {
  const kind = COMMAND_KINDS[r.u8()];
  switch (kind) {
    case "balloon_stats": return { kind };
    case "balloon_target": return { kind, pages: r.u32() };
    case "console_input": return { kind, bytes: r.bytes().slice() };
    case "disk_resize": return { kind, bytes: r.u64() };
    case "flush": return { kind };
    case "vsock_stats": return { kind };
    default:
      r.fail("unknown command");
      return { kind: "flush" };
  }
}

function decodeReply(r: ByteReader): DeviceReply {
  const kind = REPLY_KINDS[r.u8()];
  switch (kind) {
    case "balloon_stats": {
      const target = r.u32();
      const actual = r.u32();
      const hasStats = r.u8() === 1;
      const count = r.u32();
      if (count > MAX_STATS) {
        r.fail(`${count} balloon statistics`);
        return { kind: "ok" };
      }
      const stats: Record<string, number> = {};
      for (let i = 0; i < count; i++) stats[r.str()] = r.u64();
      const result: BalloonStats = { target, actual, stats: hasStats ? stats : null };
      return { kind, stats: result };
    }
    case "console_accepted": return { kind, count: r.u32() };
    case "vsock_stats": {
      const values = VSOCK_COUNTERS.map(() => r.u64());
      return { kind, stats: Object.fromEntries(VSOCK_COUNTERS.map((name, i) => [name, values[i]!])) as unknown as VsockStats };
    }
    case "error": return { kind, message: r.str() };
    case "ok": return { kind };
    default:
      r.fail("unknown reply");
      return { kind: "ok" };
  }
}
