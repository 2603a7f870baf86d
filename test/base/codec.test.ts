import { describe, expect, test } from "bun:test";
import { ByteReader, ByteWriter } from "../../src/base/codec.ts";

describe("ByteWriter and ByteReader", () => {
  test("fields round-trip in order, little-endian", () => {
    const bytes = new ByteWriter(4).u8(7).u16(0x1234).u32(0xdeadbeef).u64(2 ** 40).str("hé").bytes(Uint8Array.of(1, 2)).done();
    expect([...bytes.subarray(0, 3)]).toEqual([7, 0x34, 0x12]);
    const r = new ByteReader(bytes);
    const value = { a: r.u8(), b: r.u16(), c: r.u32(), d: r.u64(), e: r.str(), f: [...r.bytes()] };
    expect(r.finish(value, true)).toEqual({ ok: true, value: { a: 7, b: 0x1234, c: 0xdeadbeef, d: 2 ** 40, e: "hé", f: [1, 2] } });
  });

  test("a truncated message fails the reader once, at the first short read, and later reads give zeros", () => {
    const r = new ByteReader(new ByteWriter().u32(5).u16(3).done());
    const value = [r.u32(), r.u32(), r.u8()];
    expect(value).toEqual([5, 0, 0]);
    expect(r.finish(value)).toEqual({ ok: false, error: "truncated message: 4 bytes needed at offset 4 of 6" });
  });

  test("a length prefix larger than the message is a truncation, not an allocation", () => {
    const r = new ByteReader(new ByteWriter().u32(0xffff_ffff).done());
    expect(r.bytes().byteLength).toBe(0);
    expect(r.failure).toBe("truncated message: 4294967295 bytes needed at offset 4 of 4");
  });

  test("64-bit values beyond 2^53 fail u64() but not u64n()", () => {
    const bytes = new ByteWriter().u64(2n ** 60n).u64(2n ** 60n).done();
    const r = new ByteReader(bytes);
    expect(r.u64n()).toBe(2n ** 60n);
    expect(r.u64()).toBe(0);
    expect(r.failure).toBe("64-bit value 1152921504606846976 is too large");
  });

  test("text that is not UTF-8 fails the reader", () => {
    const r = new ByteReader(new ByteWriter().bytes(Uint8Array.of(0xff, 0xfe)).done());
    expect(r.str()).toBe("");
    expect(r.failure).toBe("text is not valid UTF-8");
  });

  test("exact finish refuses trailing bytes", () => {
    const r = new ByteReader(Uint8Array.of(1, 2));
    r.u8();
    expect(r.finish(null, true)).toEqual({ ok: false, error: "1 unexpected bytes at the end" });
  });
});
