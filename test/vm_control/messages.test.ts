import { describe, expect, test } from "bun:test";
import { decodeRequest, decodeResponse, encodeRequest, encodeResponse, type VmRequest, type VmResponse } from "../../src/vm_control/messages.ts";

describe("control socket messages", () => {
  const requests: VmRequest[] = [
    { kind: "stop" }, { kind: "suspend" }, { kind: "resume" }, { kind: "balloon", bytes: 512 * 1024 * 1024 },
    { kind: "balloon_stats" }, { kind: "disk_resize", index: 3, bytes: 2 ** 40 }, { kind: "vsock_stats" },
  ];
  for (const r of requests) {
    test(`${r.kind} requests round-trip`, () => {
      expect(decodeRequest(encodeRequest(r))).toEqual({ ok: true, value: r });
    });
  }
  const responses: VmResponse[] = [{ kind: "ok" }, { kind: "error", message: "no disk 3 (this VM has 1) — ünïcode" }, { kind: "balloon_stats", json: '{"a":1}' }, { kind: "vsock_stats", json: '{"b":2}' }];
  for (const r of responses) {
    test(`${r.kind} responses round-trip`, () => {
      expect(decodeResponse(encodeResponse(r))).toEqual({ ok: true, value: r });
    });
  }

  test("foreign, truncated and unknown messages decode to reasons, never exceptions", () => {
    expect(decodeRequest(new TextEncoder().encode("hello"))).toEqual({ ok: false, error: "truncated message: 2 bytes needed at offset 4 of 5" });
    expect(decodeRequest(new TextEncoder().encode("hello, world"))).toEqual({ ok: false, error: "not a tsvm control message" });
    const balloon = encodeRequest({ kind: "balloon", bytes: 1 });
    expect(decodeRequest(balloon.subarray(0, 10))).toEqual({ ok: false, error: "truncated message: 8 bytes needed at offset 8 of 10" });
    expect(decodeRequest(Uint8Array.of(...balloon, 0))).toEqual({ ok: false, error: "1 unexpected bytes at the end" });
    const unknown = encodeRequest({ kind: "stop" });
    unknown[6] = 99;
    expect(decodeRequest(unknown)).toEqual({ ok: false, error: "unknown request kind 99" });
    const version = encodeRequest({ kind: "stop" });
    version[4] = 7;
    expect(decodeRequest(version)).toEqual({ ok: false, error: "protocol version 7, expected 1" });
  });
});
