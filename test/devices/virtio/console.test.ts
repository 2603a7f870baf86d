import { describe, expect, test } from "bun:test";
import { closeSync, openSync } from "node:fs";
import { Console } from "../../../src/devices/virtio/console.ts";
import { GuestMemory, guestAddress as ga } from "../../../src/memory/mod.ts";
import { VirtioPciDriver } from "../../support/virtio_pci_driver.ts";

const VERSION_1 = 1n << 32n;
const EMERG_WRITE = 1n << 2n;
const RX = { desc: 0x1000, avail: 0x2000, used: 0x3000 };
const TX = { desc: 0x5000, avail: 0x6000, used: 0x7000 };

function setup(features = 0n) {
  const written: string[] = [];
  const memory = GuestMemory.fromBuffers([{ base: 0, bytes: new Uint8Array(1 << 20) }]);
  const console = new Console({ fd: -1, write: (b) => (written.push(new TextDecoder().decode(b)), b.byteLength) });
  const d = new VirtioPciDriver(console, memory);
  expect(d.negotiate(VERSION_1 | features)).toBe(true);
  d.setupQueue(0, 8, RX.desc, RX.avail, RX.used);
  d.setupQueue(1, 8, TX.desc, TX.avail, TX.used);
  d.driverOk();
  const post = (q: typeof RX, index: number, address: number, length: number, writable: boolean): void => {
    const slot = index % 8;
    memory.writeU64(ga(q.desc + slot * 16), BigInt(address));
    memory.writeU32(ga(q.desc + slot * 16 + 8), length);
    memory.writeU16(ga(q.desc + slot * 16 + 12), writable ? 2 : 0);
    memory.writeU16(ga(q.avail + 4 + slot * 2), slot);
    memory.writeU16(ga(q.avail + 2), index + 1);
  };
  return { memory, console, d, written, post };
}

describe("virtio-console", () => {
  test("transmit buffers go to the output in order", () => {
    const { memory, d, written, post } = setup();
    memory.write(ga(0x40000), new TextEncoder().encode("hello "));
    memory.write(ga(0x41000), new TextEncoder().encode("world\n"));
    post(TX, 0, 0x40000, 6, false);
    post(TX, 1, 0x41000, 6, false);
    d.kick(1);
    expect([written.join(""), memory.readU16(ga(TX.used + 2))]).toEqual(["hello world\n", 2]);
  });

  test("host input fills receive buffers as they come, split across them", () => {
    const { memory, console, d, post } = setup();
    expect(console.control({ kind: "console_input", bytes: new TextEncoder().encode("abcdef") })).toEqual({ kind: "console_accepted", count: 6 });
    post(RX, 0, 0x50000, 4, true);
    d.kick(0);
    post(RX, 1, 0x51000, 4, true);
    d.kick(0);
    const text = (a: number, n: number): string => new TextDecoder().decode(memory.slice(ga(a), n)!);
    expect([memory.readU16(ga(RX.used + 2)), text(0x50000, 4), text(0x51000, 2), memory.readU32(ga(RX.used + 4 + 8 + 4))]).toEqual([2, "abcd", "ef", 2]);
  });

  test("host input waiting for the guest is bounded at 64 KiB", () => {
    const { console } = setup();
    expect(console.queueInput(new Uint8Array(60_000))).toBe(60_000);
    expect(console.queueInput(new Uint8Array(10_000))).toBe(64 * 1024 - 60_000);
    expect(console.queueInput(new Uint8Array(1))).toBe(0);
  });

  test("an emergency write prints one character before any queue exists", () => {
    const { d, written } = setup(EMERG_WRITE);
    d.write(0x2000 + 8, 0x21, 4);
    expect(written).toEqual(["!"]);
  });

  test("an output that is full holds the guest's buffers until it has room, then takes them in order", () => {
    // A real descriptor's number, so no eventfd of the device (the loop's keys are fd numbers) can have it.
    const OUTPUT_FD = openSync("/dev/null", "w");
    let room = 4;
    let broken = false;
    const written: number[] = [];
    const memory = GuestMemory.fromBuffers([{ base: 0, bytes: new Uint8Array(1 << 20) }]);
    const console = new Console({
      fd: OUTPUT_FD,
      write: (b) => {
        if (broken) return "broken";
        const n = Math.min(room, b.byteLength);
        written.push(...b.subarray(0, n));
        room -= n;
        return n;
      },
    });
    const d = new VirtioPciDriver(console, memory);
    expect(d.negotiate(VERSION_1)).toBe(true);
    d.setupQueue(0, 8, RX.desc, RX.avail, RX.used);
    d.setupQueue(1, 8, TX.desc, TX.avail, TX.used);
    d.driverOk();
    const post = (index: number, address: number, text: string): void => {
      memory.write(ga(address), new TextEncoder().encode(text));
      memory.writeU64(ga(TX.desc + index * 16), BigInt(address));
      memory.writeU32(ga(TX.desc + index * 16 + 8), text.length);
      memory.writeU16(ga(TX.desc + index * 16 + 12), 0);
      memory.writeU16(ga(TX.avail + 4 + index * 2), index);
      memory.writeU16(ga(TX.avail + 2), index + 1);
    };
    const used = (): number => memory.readU16(ga(TX.used + 2));
    const text = (): string => new TextDecoder().decode(Uint8Array.from(written));
    post(0, 0x40000, "hello ");
    post(1, 0x41000, "world");
    d.kick(1);
    // 4 bytes went; both buffers stay with the device, which waits for room instead of blocking.
    expect([text(), used(), d.loop.writable.has(OUTPUT_FD)]).toEqual(["hell", 0, true]);
    post(2, 0x42000, "!");
    d.kick(1); // more from the guest while full: held behind the others
    expect([text(), used()]).toEqual(["hell", 0]);
    room = 3;
    d.loop.handlers.get(OUTPUT_FD)!(); // the output has room for 3
    expect([text(), used(), d.loop.writable.has(OUTPUT_FD)]).toEqual(["hello w", 1, true]);
    room = 100;
    d.loop.handlers.get(OUTPUT_FD)!();
    expect([text(), used(), d.loop.writable.has(OUTPUT_FD)]).toEqual(["hello world!", 3, false]);
    // A reader that is gone: the buffers come back at once and their bytes are dropped.
    broken = true;
    post(3, 0x43000, "lost");
    d.kick(1);
    expect([text(), used(), d.loop.writable.has(OUTPUT_FD)]).toEqual(["hello world!", 4, false]);
    closeSync(OUTPUT_FD);
  });

  test("a device without commands other than input refuses them by name", () => {
    expect(setup().console.control({ kind: "flush" })).toEqual({ kind: "error", message: "the console device does not take flush requests" });
  });
});
