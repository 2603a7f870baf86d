// The vCPU -> control loop hop: a Worker's accesses are served by the Bus on this thread.
import { describe, expect, test } from "bun:test";
import { socket } from "../../ffi/mod.ts";
import { EventFd } from "../../src/base/event_fd.ts";
import { Bus, type BusAccess, type BusDevice } from "../../src/devices/bus.ts";
import { type AddressSpace, BusMailbox } from "../../src/vcpu/bus_mailbox.ts";
import { VcpuShared } from "../../src/vcpu/vcpu_shared.ts";
import type { MailboxJob } from "../support/mailbox_worker.ts";

class Register implements BusDevice {
  readonly debugLabel = "register";
  value = Uint8Array.of(1, 2, 3, 4);
  read(_a: BusAccess, data: Uint8Array): void {
    data.set(this.value.subarray(0, data.byteLength));
  }
  write(_a: BusAccess, data: Uint8Array): void {
    this.value = data.slice();
  }
}

class Broken implements BusDevice {
  readonly debugLabel = "broken";
  read(): void {
    throw new Error("device bug");
  }
  write(): void {
    throw new Error("device bug");
  }
}

/** Runs `accesses` from a Worker while this thread serves the mailbox; resolves to the Worker's results. */
async function fromWorker(buses: Record<AddressSpace, Bus>, accesses: MailboxJob["accesses"], unhandled: string[] = []) {
  const shared = new VcpuShared(1);
  const mailbox = new BusMailbox(shared, 0);
  using wake = new EventFd();
  const worker = new Worker(new URL("../support/mailbox_worker.ts", import.meta.url).href);
  const done = new Promise<{ answered: boolean; data: number[] }[]>((resolve) => {
    worker.onmessage = (e) => resolve(e.data);
  });
  worker.postMessage({ shared: shared.buffer, wakeFd: wake.fd, accesses } satisfies MailboxJob);
  const state: { results: { answered: boolean; data: number[] }[] | null } = { results: null };
  void done.then((r) => {
    state.results = r;
  });
  while (state.results === null) {
    if (socket.waitReadable(wake.fd, 10) > 0) {
      wake.read();
      mailbox.serve(buses, 0, (space, address) => unhandled.push(`${space}:${address.toString(16)}`));
    }
    await Bun.sleep(0);
  }
  worker.terminate();
  return state.results;
}

describe("BusMailbox", () => {
  test("a Worker's write and read reach the device on the serving thread", async () => {
    const io = new Bus();
    const reg = new Register();
    io.insert(reg, 0x100, 4);
    const results = await fromWorker({ io, mmio: new Bus() }, [
      { space: "io", write: true, address: 0x100, data: [9, 8, 7, 6] },
      { space: "io", write: false, address: 0x100, data: [0, 0] },
    ]);
    expect(results).toEqual([{ answered: true, data: [9, 8, 7, 6] }, { answered: true, data: [9, 8] }]);
  });

  test("an address nobody claims reads as all ones and is reported", async () => {
    const unhandled: string[] = [];
    const results = await fromWorker({ io: new Bus(), mmio: new Bus() }, [{ space: "mmio", write: false, address: 0xd000_0000, data: [0, 0, 0, 0] }], unhandled);
    expect([results, unhandled]).toEqual([[{ answered: true, data: [255, 255, 255, 255] }], ["mmio:d0000000"]]);
  });

  test("a device that throws still answers its vCPU (all ones), and serving goes on", async () => {
    const mmio = new Bus();
    mmio.insert(new Broken(), 0x1000, 8);
    const reg = new Register();
    mmio.insert(reg, 0x2000, 4);
    const results = await fromWorker({ io: new Bus(), mmio }, [
      { space: "mmio", write: false, address: 0x1000, data: [0] },
      { space: "mmio", write: false, address: 0x2000, data: [0] },
    ]);
    expect(results).toEqual([{ answered: true, data: [255] }, { answered: true, data: [1] }]);
  });

  test("cancel releases a waiting vCPU without an answer", async () => {
    const shared = new VcpuShared(1);
    const mailbox = new BusMailbox(shared, 0);
    using wake = new EventFd();
    const worker = new Worker(new URL("../support/mailbox_worker.ts", import.meta.url).href);
    const done = new Promise<{ answered: boolean }[]>((resolve) => {
      worker.onmessage = (e) => resolve(e.data);
    });
    worker.postMessage({ shared: shared.buffer, wakeFd: wake.fd, accesses: [{ space: "io", write: false, address: 0x80, data: [0] }] } satisfies MailboxJob);
    expect(socket.waitReadable(wake.fd, 5000)).toBe(1); // the request is in the mailbox
    mailbox.cancel();
    expect((await done)[0]!.answered).toBe(false);
    worker.terminate();
  });
});
