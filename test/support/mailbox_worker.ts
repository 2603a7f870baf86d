// mailbox_worker.ts - plays a vCPU for bus_mailbox tests: performs the accesses it is sent through a
// BusMailbox and posts back what each returned.
import { EventFd } from "../../src/base/event_fd.ts";
import { type AddressSpace, BusMailbox } from "../../src/vcpu/bus_mailbox.ts";
import { VcpuShared } from "../../src/vcpu/vcpu_shared.ts";

declare const self: Worker;

export type MailboxJob = {
  readonly shared: SharedArrayBuffer;
  readonly wakeFd: number;
  readonly accesses: readonly { space: AddressSpace; write: boolean; address: number; data: number[] }[];
};

self.onmessage = (event: MessageEvent<MailboxJob>) => {
  const job = event.data;
  const mailbox = new BusMailbox(new VcpuShared(job.shared), 0);
  const wake = new EventFd(job.wakeFd);
  const results = job.accesses.map((a) => {
    const data = Uint8Array.from(a.data);
    const answered = mailbox.call(a.space, a.write, a.address, data, wake);
    return { answered, data: [...data] };
  });
  self.postMessage(results);
};
