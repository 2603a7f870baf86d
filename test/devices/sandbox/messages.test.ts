import { describe, expect, test } from "bun:test";
import {
  decodeTubeMessage, encodeCommand, encodeFailed, encodeHostConnect, encodeHostConnected, encodeHostConnection, encodeReady, encodeReply, encodeSetup,
} from "../../../src/devices/sandbox/messages.ts";
import type { DeviceCommand, DeviceReply } from "../../../src/devices/virtio/device_control.ts";

describe("device tube messages", () => {
  const commands: DeviceCommand[] = [
    { kind: "balloon_stats" }, { kind: "balloon_target", pages: 4096 }, { kind: "console_input", bytes: Uint8Array.of(1, 2, 3) },
    { kind: "disk_resize", bytes: 2 ** 40 }, { kind: "flush" }, { kind: "vsock_stats" },
  ];
  for (const command of commands) {
    test(`${command.kind} commands round-trip`, () => {
      expect(decodeTubeMessage(encodeCommand(9, command))).toEqual({ ok: true, value: { kind: "command", id: 9, command } });
    });
  }
  const replies: DeviceReply[] = [
    { kind: "ok" }, { kind: "error", message: "nope" }, { kind: "console_accepted", count: 5 },
    { kind: "balloon_stats", stats: { target: 1, actual: 2, stats: { "swap-in": 3 } } },
    { kind: "vsock_stats", stats: { cid: 3, connections: 2, hostInitiated: 1, guestInitiated: 4, refused: 5, resets: 6, malformed: 7, bytesToGuest: 2 ** 40, bytesFromGuest: 9 } },
  ];
  for (const reply of replies) {
    test(`${reply.kind} replies round-trip`, () => {
      expect(decodeTubeMessage(encodeReply(7, reply))).toEqual({ ok: true, value: { kind: "reply", id: 7, reply } });
    });
  }

  test("setup, ready, failed and the vsock host messages round-trip", () => {
    const setup = { spec: { kind: "vsock" as const, label: "vsock", cid: 3, uds: "/run/v" }, logLevel: "warn", filter: Uint8Array.of(1, 2), listen: true, resourceFds: 0 };
    expect(decodeTubeMessage(encodeSetup(setup))).toEqual({ ok: true, value: { kind: "setup", setup } });
    expect(decodeTubeMessage(encodeReady())).toEqual({ ok: true, value: { kind: "ready" } });
    expect(decodeTubeMessage(encodeFailed("why"))).toEqual({ ok: true, value: { kind: "failed", reason: "why" } });
    expect(decodeTubeMessage(encodeHostConnection(1234))).toEqual({ ok: true, value: { kind: "host_connection", port: 1234 } });
    expect(decodeTubeMessage(encodeHostConnect(5, 5000))).toEqual({ ok: true, value: { kind: "host_connect", id: 5, port: 5000 } });
    expect(decodeTubeMessage(encodeHostConnected(5, null))).toEqual({ ok: true, value: { kind: "host_connected", id: 5, error: null } });
    expect(decodeTubeMessage(encodeHostConnected(5, "ENOENT"))).toEqual({ ok: true, value: { kind: "host_connected", id: 5, error: "ENOENT" } });
  });

  test("every truncation of every message is an error, never an exception or a partial message", () => {
    const all = [encodeCommand(1, { kind: "balloon_target", pages: 1 }), encodeHostConnect(1, 2), encodeHostConnected(1, "x"), encodeReply(1, replies[4]!)];
    for (const bytes of all) {
      for (let n = 0; n < bytes.byteLength; n++) expect(decodeTubeMessage(bytes.subarray(0, n)).ok).toBe(false);
      expect(decodeTubeMessage(Uint8Array.of(...bytes, 0)).ok).toBe(false); // trailing bytes too
    }
  });
});
