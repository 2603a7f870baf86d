import { describe, expect, test } from "bun:test";
import { MSIX_CONTROL_ENABLE, MSIX_CONTROL_FUNCTION_MASK, MsixConfig } from "../../../src/devices/virtio/msix.ts";
import { FakeRouter } from "../../support/virtio_pci_driver.ts";

/** Writes table entry `vector` a dword at a time, as a driver does: address, data, then the mask bit. */
function program(msix: MsixConfig, vector: number, data: number, masked: boolean): void {
  const dword = (offset: number, value: number): void => msix.writeTable(vector * 16 + offset, new Uint8Array(Uint32Array.of(value).buffer));
  dword(0, 0xfee00000);
  dword(4, 0);
  dword(8, data);
  dword(12, masked ? 1 : 0);
}

function pba(msix: MsixConfig): number {
  const bits = new Uint8Array(8);
  msix.readPba(0, bits);
  return bits[0]!;
}

describe("MsixConfig", () => {
  test("programming an entry sets its GSI's MSI route", () => {
    const router = new FakeRouter();
    const msix = new MsixConfig(2, router);
    program(msix, 1, 0x41, false);
    expect(router.routes.get(25)).toEqual([0xfee00000, 0, 0x41]);
  });

  test("a masked vector records a pending bit and fires when unmasked", () => {
    const msix = new MsixConfig(2, new FakeRouter());
    msix.setControl(MSIX_CONTROL_ENABLE);
    program(msix, 0, 0x40, true);
    msix.trigger(0);
    expect(pba(msix)).toBe(1);
    program(msix, 0, 0x40, false);
    expect(pba(msix)).toBe(0);
  });

  test("the function mask holds every vector pending", () => {
    const msix = new MsixConfig(2, new FakeRouter());
    msix.setControl(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
    program(msix, 1, 0x41, false);
    msix.trigger(1);
    expect(pba(msix)).toBe(2);
    msix.setControl(MSIX_CONTROL_ENABLE);
    expect(pba(msix)).toBe(0);
  });

  test("vectors the table does not have are ignored", () => {
    const msix = new MsixConfig(2, new FakeRouter());
    msix.setControl(MSIX_CONTROL_ENABLE);
    msix.trigger(7);
    expect(pba(msix)).toBe(0);
  });

  test("table reads return what was written; entries start masked", () => {
    const msix = new MsixConfig(1, new FakeRouter());
    const ctrl = new Uint8Array(4);
    msix.readTable(12, ctrl);
    expect(ctrl[0]).toBe(1);
    program(msix, 0, 0x42, false);
    const data = new Uint8Array(4);
    msix.readTable(8, data);
    expect(data[0]).toBe(0x42);
  });
});
