// serial_worker.ts - plays a vCPU writing to a UART it shares with other threads: for each byte, polls
// LSR for an empty THR, then writes THR, as Linux's 8250 console does.
import { FdOutput } from "../../src/base/fd_output.ts";
import { Serial } from "../../src/devices/serial.ts";

declare const self: Worker;

export type SerialJob = { readonly state: SharedArrayBuffer; readonly fd: number; readonly byte: number; readonly count: number };

self.onmessage = (event: MessageEvent<SerialJob>) => {
  const { state, fd, byte, count } = event.data;
  const serial = new Serial("shared", { setLevel: () => {} }, new FdOutput(fd, false), state);
  const lsr = { offset: 5, address: 0x3fd, vcpuId: 1 };
  const thr = { offset: 0, address: 0x3f8, vcpuId: 1 };
  const d = new Uint8Array(1);
  for (let i = 0; i < count; i++) {
    do serial.read(lsr, d); while (!(d[0]! & 0x20));
    serial.write(thr, Uint8Array.of(byte));
  }
  self.postMessage("done");
};
