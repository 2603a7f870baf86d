import { describe, expect, test } from "bun:test";
import { kernelCmdline, parseRunConfig, parseSerial, parseSize } from "../src/config.ts";

const MIB = 1024 * 1024;

describe("parseSize", () => {
  test("a bare number is MiB; K, M, G and T suffixes scale", () => {
    expect([parseSize("512"), parseSize("512M"), parseSize("2G"), parseSize("64k"), parseSize("1GiB")]).toEqual([512 * MIB, 512 * MIB, 2048 * MIB, 65536, 1024 * MIB]);
  });

  test("garbage is not a size", () => {
    expect([parseSize("lots"), parseSize("-1"), parseSize("1.5G"), parseSize("")]).toEqual([null, null, null, null]);
  });
});

describe("parseSerial", () => {
  test("reads crosvm's key=value syntax", () => {
    expect(parseSerial("type=file,num=2,path=/tmp/x,console=true")).toEqual({ type: "file", hardware: "serial", num: 2, path: "/tmp/x", console: true, stdin: false });
  });

  test("names an unknown key and lists the accepted ones", () => {
    expect(() => parseSerial("type=stdout,num=1,speed=9600")).toThrow('unknown key "speed" (accepted: type, hardware, num, path, console, stdin)');
  });

  test("rejects port numbers outside 1-4", () => {
    expect(() => parseSerial("type=stdout,num=5")).toThrow(/port number 1-4/);
  });

  test("type=file needs a path", () => {
    expect(() => parseSerial("type=file,num=1")).toThrow(/needs path=PATH/);
  });

  test("rejects unknown types", () => {
    expect(() => parseSerial("type=syslog2,num=1")).toThrow(/expected one of stdout, file, sink/);
  });
});

describe("parseRunConfig", () => {
  test("defaults follow crosvm: 256 MiB, 1 CPU, COM1 on stdout as the console", () => {
    expect(parseRunConfig({})).toEqual({
      kernel: null, initrd: null, memorySize: 256 * MIB, cpus: 1, params: [],
      serials: [{ type: "stdout", hardware: "serial", num: 1, console: true, stdin: true }], logLevel: "warn", rng: true, balloon: true, blocks: [], nets: [], socket: null,
    });
  });

  test("--mem 0 is refused with the flag named", () => {
    expect(() => parseRunConfig({ mem: "0" })).toThrow("--mem: must be at least 16 MiB (got 0)");
  });

  test("--mem with garbage is refused", () => {
    expect(() => parseRunConfig({ mem: "lots" })).toThrow(/--mem: expected a size/);
  });

  test("--cpus must be a whole number in range", () => {
    expect(() => parseRunConfig({ cpus: "0" })).toThrow(/--cpus: expected at least 1 CPU/);
    expect(() => parseRunConfig({ cpus: "1.5" })).toThrow(/--cpus: expected a whole number/);
    expect(() => parseRunConfig({ cpus: "300" })).toThrow(/--cpus: expected at most 254/);
  });

  test("the same serial port twice is refused", () => {
    expect(() => parseRunConfig({ serial: ["type=sink,num=1", "type=stdout,num=1"] })).toThrow(/num=1 is configured twice/);
  });
});

describe("kernelCmdline", () => {
  test("joins -p values and adds the console port", () => {
    expect(kernelCmdline(parseRunConfig({ params: ["quiet", "root=/dev/vda"] }))).toBe("quiet root=/dev/vda console=ttyS0");
  });

  test("a virtio-console console port becomes hvc0", () => {
    expect(kernelCmdline(parseRunConfig({ serial: ["type=stdout,hardware=virtio-console,num=1,console=true"] }))).toBe("console=hvc0");
  });

  test("keeps a console the user chose", () => {
    expect(kernelCmdline(parseRunConfig({ params: ["console=hvc0"] }))).toBe("console=hvc0");
  });
});
