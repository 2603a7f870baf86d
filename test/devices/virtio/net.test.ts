import { afterEach, describe, expect, test } from "bun:test";
import { Net, VNET_HDR_SIZE } from "../../../src/devices/virtio/net/net.ts";
import { GuestMemory, guestAddress as ga } from "../../../src/memory/mod.ts";
import { SocketTap } from "../../support/socket_tap.ts";
import { VirtioPciDriver } from "../../support/virtio_pci_driver.ts";

const VERSION_1 = 1n << 32n;
const MRG_RXBUF = 1n << 15n;
const GUEST_CSUM = 1n << 1n;
const RX = { desc: 0x1000, avail: 0x2000, used: 0x3000 };
const TX = { desc: 0x5000, avail: 0x6000, used: 0x7000 };
const MAC = Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56);

const taps: SocketTap[] = [];
afterEach(() => {
  for (const t of taps.splice(0)) t.close();
});

function setup(features: bigint) {
  const memory = GuestMemory.fromBuffers([{ base: 0, bytes: new Uint8Array(1 << 20) }]);
  const tap = new SocketTap();
  taps.push(tap);
  const d = new VirtioPciDriver(new Net(tap, MAC), memory);
  expect(d.negotiate(VERSION_1 | features)).toBe(true);
  d.setupQueue(0, 8, RX.desc, RX.avail, RX.used);
  d.setupQueue(1, 8, TX.desc, TX.avail, TX.used);
  d.driverOk();
  let rxIdx = 0;
  let txIdx = 0;
  /** Posts `count` writable receive buffers of `size` bytes at 0x10000 + i * 0x1000. */
  const postRx = (count: number, size: number): void => {
    for (let i = 0; i < count; i++) {
      const slot = rxIdx % 8;
      memory.writeU64(ga(RX.desc + slot * 16), BigInt(0x10000 + slot * 0x1000));
      memory.writeU32(ga(RX.desc + slot * 16 + 8), size);
      memory.writeU16(ga(RX.desc + slot * 16 + 12), 2);
      memory.writeU16(ga(RX.avail + 4 + slot * 2), slot);
      memory.writeU16(ga(RX.avail + 2), ++rxIdx);
    }
    d.kick(0);
  };
  /** Sends `frame` (a vnet header and the Ethernet frame) through the transmit queue. */
  const transmit = (frame: Uint8Array): void => {
    const slot = txIdx % 8;
    memory.write(ga(0x40000), frame);
    memory.writeU64(ga(TX.desc + slot * 16), 0x40000n);
    memory.writeU32(ga(TX.desc + slot * 16 + 8), frame.byteLength);
    memory.writeU16(ga(TX.avail + 4 + slot * 2), slot);
    memory.writeU16(ga(TX.avail + 2), ++txIdx);
    d.kick(1);
  };
  /** Runs the device's tap handler as the loop would when the tap is readable. */
  const tapReadable = (): void => d.loop.handlers.get(tap.fd)?.();
  return { memory, tap, d, postRx, transmit, tapReadable };
}

const frame = (payload: number, length: number): Uint8Array => {
  const f = new Uint8Array(VNET_HDR_SIZE + length);
  f.fill(payload, VNET_HDR_SIZE);
  return f;
};

describe("virtio-net", () => {
  test("offers its MAC and link-up status, and applies the offloads the driver accepted", () => {
    const { d, tap } = setup(GUEST_CSUM);
    expect([...Array.from({ length: 6 }, (_, i) => d.read(0x2000 + i, 1)), d.read(0x2006, 2)]).toEqual([...MAC, 1]);
    expect([tap.headerSize, tap.offload]).toEqual([12, 1]);
  });

  test("a transmitted frame reaches the tap whole, and its buffer is returned", () => {
    const { tap, transmit, memory } = setup(0n);
    transmit(frame(0xab, 60));
    expect(tap.received()).toEqual(frame(0xab, 60));
    expect(memory.readU16(ga(TX.used + 2))).toBe(1);
  });

  test("a received frame fills one buffer with num_buffers 1", () => {
    const { tap, postRx, tapReadable, memory } = setup(MRG_RXBUF);
    postRx(2, 2048);
    tap.send(frame(0x11, 100));
    tapReadable();
    expect([memory.readU16(ga(RX.used + 2)), memory.readU32(ga(RX.used + 8)), memory.readU16(ga(0x10000 + 10))]).toEqual([1, VNET_HDR_SIZE + 100, 1]);
    expect(memory.slice(ga(0x10000 + VNET_HDR_SIZE), 100)!.every((b) => b === 0x11)).toBe(true);
  });

  test("with mergeable buffers a frame larger than one buffer spans several", () => {
    const { tap, postRx, tapReadable, memory } = setup(MRG_RXBUF);
    postRx(4, 1024);
    tap.send(frame(0x22, 2500));
    tapReadable();
    expect([memory.readU16(ga(RX.used + 2)), memory.readU16(ga(0x10000 + 10))]).toEqual([3, 3]);
  });

  test("without buffers a frame waits (the tap is not watched) and is delivered once buffers come", () => {
    const { tap, postRx, tapReadable, memory, d } = setup(MRG_RXBUF);
    tap.send(frame(0x33, 64));
    tapReadable();
    expect([memory.readU16(ga(RX.used + 2)), d.loop.handlers.has(tap.fd)]).toEqual([0, false]);
    postRx(1, 2048);
    expect([memory.readU16(ga(RX.used + 2)), d.loop.handlers.has(tap.fd)]).toEqual([1, true]);
  });

  test("without mergeable buffers, a frame too big for its buffer is dropped and the buffer returned empty", () => {
    const { tap, postRx, tapReadable, memory } = setup(0n);
    postRx(1, 64);
    tap.send(frame(0x44, 200));
    tapReadable();
    expect([memory.readU16(ga(RX.used + 2)), memory.readU32(ga(RX.used + 8))]).toEqual([1, 0]);
  });
});
