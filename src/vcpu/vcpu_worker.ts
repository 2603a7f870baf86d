// vcpu_worker.ts - the exit server's Worker: it starts the C threads of vCPUs 1 and up and serves
// their exits (vcpu_runner.ts says why those vCPUs run that way and vCPU 0 on the main thread).
import { EventFd } from "../base/event_fd.ts";
import { drainLog, setLogLevel, useNonBlockingStderr } from "../base/log.ts";
import { BusMailbox, RemoteBusDevice } from "./bus_mailbox.ts";
import { type RunnerHost, VcpuRunner, type VcpuWorkerInit } from "./vcpu_runner.ts";

export type { VcpuWorkerInit };

declare const self: Worker;

/** A Worker reaches the devices the control loop owns through each vCPU's mailbox (bus_mailbox.ts). */
const workerHost: RunnerHost = {
  remote: (init, shared) => {
    const wake = new EventFd(init.busRequestFd);
    const mailboxes = init.vcpuFds.map((_, id) => new BusMailbox(shared, id));
    return { io: new RemoteBusDevice("remote port", "io", mailboxes, wake), mmio: new RemoteBusDevice("remote MMIO", "mmio", mailboxes, wake) };
  },
  outputWaits: null,
};

function start(init: VcpuWorkerInit): void {
  setLogLevel(init.logLevel);
  useNonBlockingStderr(); // a vCPU never waits for a stderr reader (base/log.ts)
  const runner = new VcpuRunner(init, workerHost);
  try {
    runner.prepare();
    runner.runServer();
  } catch (e) {
    runner.abandon(e instanceof Error ? e.message : String(e));
  }
}

self.onmessage = (event: MessageEvent<VcpuWorkerInit>) => {
  start(event.data);
  drainLog(100);
  self.onmessage = null;
  process.exit(0);
};
