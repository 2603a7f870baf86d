import { describe, expect, test } from "bun:test";
import { I8042 } from "../../src/devices/i8042.ts";

function controller() {
  let resets = 0;
  const dev = new I8042(() => resets++);
  const read = (port: number): number => {
    const d = new Uint8Array(1);
    dev.read({ offset: port, address: port, vcpuId: 0 }, d);
    return d[0]!;
  };
  const write = (port: number, v: number): void => dev.write({ offset: port, address: port, vcpuId: 0 }, Uint8Array.of(v));
  return { read, write, resets: () => resets };
}

describe("I8042", () => {
  test("self test answers 0x55 through the output buffer", () => {
    const c = controller();
    c.write(0x64, 0xaa);
    expect(c.read(0x64) & 1).toBe(1);
    expect(c.read(0x60)).toBe(0x55);
    expect(c.read(0x64) & 1).toBe(0);
  });

  test("the command byte can be written and read back", () => {
    const c = controller();
    c.write(0x64, 0x60);
    c.write(0x60, 0x47);
    c.write(0x64, 0x20);
    expect(c.read(0x60)).toBe(0x47);
  });

  test("command 0xfe resets the CPU", () => {
    const c = controller();
    c.write(0x64, 0xfe);
    expect(c.resets()).toBe(1);
  });

  test("clearing output port bit 0 resets the CPU", () => {
    const c = controller();
    c.write(0x64, 0xd1);
    c.write(0x60, 0x02);
    expect(c.resets()).toBe(1);
  });

  test("bytes for an absent keyboard get no answer", () => {
    const c = controller();
    c.write(0x60, 0xff);
    expect(c.read(0x64) & 1).toBe(0);
  });
});
