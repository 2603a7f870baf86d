import { describe, expect, test } from "bun:test";
import type { BusAccess } from "../../src/devices/bus.ts";
import { RecordingIrqLine } from "../../src/devices/interrupt.ts";
import { Serial, type SerialOutput } from "../../src/devices/serial.ts";
import { sys } from "../../ffi/mod.ts";
import type { SerialJob } from "../support/serial_worker.ts";

const THR = 0, IER = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;

class Capture implements SerialOutput {
  bytes: number[] = [];
  write(b: Uint8Array): void {
    this.bytes.push(...b);
  }
}

function uart() {
  const irq = new RecordingIrqLine();
  const out = new Capture();
  const serial = new Serial("test", irq, out);
  const access = (offset: number): BusAccess => ({ offset, address: 0x3f8 + offset, vcpuId: 0 });
  const read = (offset: number): number => {
    const d = new Uint8Array(1);
    serial.read(access(offset), d);
    return d[0]!;
  };
  const write = (offset: number, value: number): void => serial.write(access(offset), Uint8Array.of(value));
  return { serial, irq, out, read, write };
}

describe("Serial", () => {
  test("THR writes go to the output and THR stays empty", () => {
    const u = uart();
    u.write(THR, 0x41);
    u.write(THR, 0x42);
    expect(u.out.bytes).toEqual([0x41, 0x42]);
    expect(u.read(LSR) & 0x60).toBe(0x60);
  });

  test("while a byte is being written out, other threads use the UART and see THR busy; THRE follows the write", () => {
    const irq = new RecordingIrqLine();
    const other = new Serial("other thread", new RecordingIrqLine(), null, undefined);
    const seen: { lsr: number; input: number; line: boolean }[] = [];
    // An output that stands for a reader that stopped reading: while it "blocks", look from another thread.
    const stalled: SerialOutput = {
      write: () => {
        const d = new Uint8Array(1);
        other.read({ offset: LSR, address: 0x3fd, vcpuId: 1 }, d);
        seen.push({ lsr: d[0]!, input: other.queueInput(Uint8Array.of(0x61)), line: irq.level });
      },
    };
    const serial = new Serial("test", irq, stalled, other.state);
    const at = (offset: number): BusAccess => ({ offset, address: 0x3f8 + offset, vcpuId: 0 });
    serial.write(at(IER), Uint8Array.of(0x02));
    serial.read(at(IIR), new Uint8Array(1)); // acknowledge the THRE interrupt that enabling raised
    const started = performance.now();
    serial.write(at(THR), Uint8Array.of(0x41));
    expect(performance.now() - started).toBeLessThan(500); // no lock waited on (the timeout is 1 s)
    // During the write: not all ones (a lock timeout), THR and TEMT busy, input accepted, no THRE interrupt.
    expect(seen).toEqual([{ lsr: 0x00, input: 1, line: false }]);
    const lsr = new Uint8Array(1);
    serial.read(at(LSR), lsr);
    expect(lsr[0]! & 0x60).toBe(0x60);
    expect(irq.level).toBe(true); // THRE, now that the byte is out
  });

  test("the scratch register keeps what was written", () => {
    const u = uart();
    u.write(SCR, 0xa5);
    expect(u.read(SCR)).toBe(0xa5);
  });

  test("DLAB switches offsets 0 and 1 to the divisor latch", () => {
    const u = uart();
    u.write(LCR, 0x83);
    u.write(THR, 0x0c);
    u.write(IER, 0x00);
    expect([u.read(THR), u.read(IER)]).toEqual([0x0c, 0x00]);
    u.write(LCR, 0x03);
    expect(u.out.bytes).toEqual([]);
  });

  test("enabling the THRE interrupt raises it; reading IIR acknowledges it", () => {
    const u = uart();
    u.write(IER, 0x02);
    expect(u.irq.level).toBe(true);
    expect(u.read(IIR) & 0x0f).toBe(0x02);
    expect(u.irq.level).toBe(false);
    expect(u.read(IIR) & 0x0f).toBe(0x01);
  });

  test("a THR write re-arms the THRE interrupt", () => {
    const u = uart();
    u.write(IER, 0x02);
    u.read(IIR);
    u.write(THR, 0x30);
    expect(u.irq.level).toBe(true);
  });

  test("host input sets DR and raises the receive interrupt until read", () => {
    const u = uart();
    u.write(IER, 0x01);
    expect(u.serial.queueInput(Uint8Array.of(0x61))).toBe(1);
    expect(u.read(LSR) & 0x01).toBe(1);
    expect(u.read(IIR) & 0x0f).toBe(0x04);
    expect(u.read(THR)).toBe(0x61);
    expect(u.read(LSR) & 0x01).toBe(0);
    expect(u.irq.level).toBe(false);
  });

  test("with the FIFO enabled, 16 bytes wait in the receiver", () => {
    const u = uart();
    u.write(FCR, 0x01);
    u.serial.queueInput(new Uint8Array(20).map((_, i) => i));
    const got = Array.from({ length: 20 }, () => u.read(THR));
    expect(got).toEqual(Array.from({ length: 20 }, (_, i) => i));
    expect(u.read(IIR) & 0xc0).toBe(0xc0);
  });

  test("loopback returns transmitted bytes and wires MCR to MSR", () => {
    const u = uart();
    u.write(MCR, 0x1a);
    expect(u.read(MSR) & 0xf0).toBe(0x90);
    u.write(THR, 0x42);
    expect(u.out.bytes).toEqual([]);
    expect(u.read(THR)).toBe(0x42);
  });

  test("a full receiver reports overrun in LSR, cleared by reading it", () => {
    const u = uart();
    u.write(MCR, 0x10);
    u.write(THR, 1);
    u.write(THR, 2);
    expect(u.read(LSR) & 0x02).toBe(0x02);
    expect(u.read(LSR) & 0x02).toBe(0);
  });

  test("the default modem status is a connected line", () => {
    expect(uart().read(MSR)).toBe(0xb0);
  });

  test("instances over one state are one UART: what one thread writes, another reads; the line moves once", () => {
    const a = uart();
    const irqB = new RecordingIrqLine();
    const b = new Serial("other", irqB, null, a.serial.state);
    const at = (offset: number) => ({ offset, address: 0x3f8 + offset, vcpuId: 1 });
    a.write(IER, 0x01); // receive interrupt
    expect(b.queueInput(Uint8Array.of(0x41, 0x42))).toBe(2);
    expect([a.irq.level, irqB.level, irqB.changes]).toEqual([false, true, 1]); // raised by whoever changed it
    const d = new Uint8Array(1);
    b.read(at(IER), d);
    expect(d[0]).toBe(0x01);
    expect(a.read(THR)).toBe(0x41); // the next byte moves up: still pending, the line stays up
    expect(a.irq.changes).toBe(0);
    b.read(at(THR), d);
    expect(d[0]).toBe(0x42);
    expect([irqB.level, irqB.changes, a.irq.changes]).toEqual([false, 2, 0]); // lowered by b, which drained it
    b.write(at(SCR), Uint8Array.of(0x5a));
    expect(a.read(SCR)).toBe(0x5a);
  });

  test("host input beyond what the UART holds is refused, to be offered again", () => {
    const u = uart();
    expect(u.serial.queueInput(new Uint8Array(5000))).toBe(4096);
    expect(u.serial.queueInput(Uint8Array.of(1, 2))).toBe(1); // one byte moved on into the receiver
    expect(u.serial.queueInput(Uint8Array.of(1))).toBe(0);
    u.read(THR);
    expect(u.serial.queueInput(Uint8Array.of(1, 2))).toBe(1);
  });

  test("a lock never released (a vCPU stopped inside the UART) costs one access, not a hung thread", () => {
    const u = uart();
    Atomics.store(new Int32Array(u.serial.state, 0, 1), 0, 1);
    const started = performance.now();
    expect(u.read(LSR)).toBe(0xff);
    expect(u.serial.queueInput(Uint8Array.of(1))).toBe(0);
    expect(performance.now() - started).toBeLessThan(10_000);
  });

  test("two vCPU threads writing at once: every byte reaches the output once", async () => {
    const u = uart();
    const [readFd, writeFd] = sys.pipe();
    sys.addFileFlags(readFd, 0o4000); // O_NONBLOCK: a lost byte fails the test instead of hanging it
    const count = 2000;
    const workers = ["x", "y"].map((c) => {
      const w = new Worker(new URL("../support/serial_worker.ts", import.meta.url).href);
      const done = new Promise<void>((resolve) => {
        w.onmessage = () => resolve();
      });
      w.postMessage({ state: u.serial.state, fd: writeFd, byte: c.charCodeAt(0), count } satisfies SerialJob);
      return { w, done };
    });
    const got: number[] = [];
    const buffer = new Uint8Array(4096);
    let finished = false;
    void Promise.all(workers.map((w) => w.done)).then(() => {
      finished = true;
    });
    while (got.length < 2 * count) {
      const writersDone = finished; // read after they finished: whatever is missing was lost
      const n = sys.readRaw(readFd, buffer);
      if (n > 0) got.push(...buffer.subarray(0, n));
      else if (writersDone) break;
      else await new Promise((r) => setTimeout(r, 1));
    }
    for (const { w } of workers) w.terminate();
    sys.close(readFd);
    sys.close(writeFd);
    expect(got.filter((b) => b === 0x78).length).toBe(count);
    expect(got.filter((b) => b === 0x79).length).toBe(count);
    expect(got.length).toBe(2 * count);
  });
});
