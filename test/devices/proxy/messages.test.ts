import { describe, expect, test } from "bun:test";
import { MessageReader, MessageWriter, NOTICE, REQUEST } from "../../../src/devices/proxy/messages.ts";

describe("device process messages", () => {
  test("a BAR write carries bar, offset, length and data", () => {
    const bytes = new MessageWriter(REQUEST.BAR_WRITE).u8(0).u32(0x3004).u8(2).bytes(Uint8Array.of(1, 0)).done();
    const r = new MessageReader(bytes);
    expect([r.kind, r.u8(), r.u32(), r.u8(), [...r.rest()]]).toEqual([REQUEST.BAR_WRITE, 0, 0x3004, 2, [1, 0]]);
  });

  test("an MSI route notice carries GSI, address and data", () => {
    const r = new MessageReader(new MessageWriter(NOTICE.MSI_ROUTE).u32(24).u32(0xfee00000).u32(0).u32(0x41).done());
    expect([r.kind, r.u32(), r.u32(), r.u32(), r.u32()]).toEqual([NOTICE.MSI_ROUTE, 24, 0xfee00000, 0, 0x41]);
  });

  test("an ioeventfd notice carries a 64-bit address exactly", () => {
    const r = new MessageReader(new MessageWriter(NOTICE.IOEVENTFD).f64(0x1_0000_3000).u32(2).u8(1).done());
    expect([r.kind, r.f64(), r.u32(), r.u8()]).toEqual([NOTICE.IOEVENTFD, 0x1_0000_3000, 2, 1]);
  });

  test("text fields round-trip", () => {
    const r = new MessageReader(new MessageWriter(NOTICE.FAILED).text("lockdown failed with errno 1").done());
    expect([r.kind, r.text()]).toEqual([NOTICE.FAILED, "lockdown failed with errno 1"]);
  });

  test("reading past the end of a malformed message gives zeros, not exceptions", () => {
    const r = new MessageReader(Uint8Array.of(REQUEST.CONFIG_WRITE, 4));
    expect([r.u16(), r.u8(), r.u32(), r.f64(), r.rest().byteLength]).toEqual([0, 4, 0, 0, 0]); // u16 needs 2 bytes; u8 takes the one left
    expect(new MessageReader(new Uint8Array(0)).kind).toBe(0);
  });
});
