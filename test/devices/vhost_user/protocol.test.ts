import { describe, expect, test } from "bun:test";
import {
  decodeConfig, decodeMemoryTable, decodeVringAddress, decodeVringFile, decodeVringState, encodeConfig, encodeMemoryTable,
  encodeMessage, encodeU64, encodeVringAddress, encodeVringState, VHOST_USER, VHOST_USER_VERSION,
} from "../../../src/devices/vhost_user/protocol.ts";

describe("vhost-user payloads", () => {
  test("the header is request, flags with the version, and size", () => {
    expect([...encodeMessage(VHOST_USER.GET_FEATURES, 0, new Uint8Array(0))]).toEqual([1, 0, 0, 0, VHOST_USER_VERSION, 0, 0, 0, 0, 0, 0, 0]);
  });

  test("vring state, address, memory table and config round-trip", () => {
    const addr = { index: 1, flags: 0, descriptor: 0x1000n, used: 0x3000n, available: 0x2000n, log: 0n };
    expect(decodeVringState(encodeVringState({ index: 2, num: 256 }))).toEqual({ ok: true, value: { index: 2, num: 256 } });
    expect(decodeVringAddress(encodeVringAddress(addr))).toEqual({ ok: true, value: addr });
    const regions = [{ guestAddress: 0n, size: 0x1000_0000n, userAddress: 0x7f00_0000_0000n, mmapOffset: 0n }];
    expect(decodeMemoryTable(encodeMemoryTable(regions))).toEqual({ ok: true, value: regions });
    const config = { offset: 0, size: 4, flags: 0, data: Uint8Array.of(1, 2, 3, 4) };
    expect(decodeConfig(encodeConfig(config))).toEqual({ ok: true, value: config });
  });

  test("QEMU's fixed eight-region table with zero padding is accepted", () => {
    const one = encodeMemoryTable([{ guestAddress: 0n, size: 0x1000n, userAddress: 0n, mmapOffset: 0n }]);
    const padded = new Uint8Array(8 + 8 * 32);
    padded.set(one);
    expect(decodeMemoryTable(padded).ok).toBe(true);
  });

  test("malformed payloads are errors, never exceptions", () => {
    expect(decodeVringState(Uint8Array.of(1, 2, 3))).toEqual({ ok: false, error: "truncated message: 4 bytes needed at offset 0 of 3" });
    expect(decodeMemoryTable(encodeMemoryTable([]))).toEqual({ ok: false, error: "a memory table of 0 regions (1-8 allowed)" });
    const nine = new Uint8Array(8);
    new DataView(nine.buffer).setUint32(0, 9, true);
    expect(decodeMemoryTable(nine)).toEqual({ ok: false, error: "a memory table of 9 regions (1-8 allowed)" });
    expect(decodeConfig(encodeConfig({ offset: 0, size: 300, flags: 0, data: new Uint8Array(300) }))).toEqual({ ok: false, error: "configuration access of 300 bytes at 0 is beyond 256 bytes" });
    expect(decodeConfig(encodeConfig({ offset: 0, size: 8, flags: 0, data: new Uint8Array(4) }))).toEqual({ ok: false, error: "truncated message: 8 bytes needed at offset 12 of 16" });
  });

  test("vring file payloads carry an index and an optional no-fd flag, nothing else", () => {
    expect(decodeVringFile(encodeU64(3))).toEqual({ ok: true, value: { index: 3, hasFd: true } });
    expect(decodeVringFile(encodeU64(0x103))).toEqual({ ok: true, value: { index: 3, hasFd: false } });
    expect(decodeVringFile(encodeU64(0x1000))).toEqual({ ok: false, error: "unknown bits in vring file payload 0x1000" });
  });
});
