// control_requests.ts - carries out control-socket requests (tsvm stop, suspend, resume, balloon,
// balloon_stats, disk resize) against a running VM. Requests that need a device are answered when
// the device replies (from the control loop), never by waiting on it.
import { describeError } from "../base/result.ts";
import type { BuiltVm } from "../arch/x86_64/build_vm.ts";
import type { DeviceReply } from "../devices/virtio/device_control.ts";
import type { VmRequest, VmResponse } from "../vm_control/messages.ts";
import type { ControlLoop } from "./control_loop.ts";
import { EXIT_CODE, type Vcpus } from "./vcpus.ts";
import type { VirtioHandle } from "./virtio_devices.ts";

/** The balloon counts 4 KiB pages. */
const BALLOON_PAGE_SIZE = 4096;
const SECTOR_SIZE = 512;

/** What requests act on. */
export type ControlTargets = {
  readonly built: BuiltVm;
  readonly loop: ControlLoop;
  readonly vcpus: Vcpus;
  readonly devices: readonly VirtioHandle[];
  readonly memorySize: number;
};

/** The VM's suspend state and the requests' handler. */
export class ControlRequests {
  readonly #t: ControlTargets;
  #suspended = false;
  #savedClock: bigint | null = null;

  constructor(targets: ControlTargets) {
    this.#t = targets;
  }

  get suspended(): boolean {
    return this.#suspended;
  }

  /** Carries out `request` and answers through `respond` (at once or later). */
  handle(request: VmRequest, respond: (response: VmResponse) => void): void {
    try {
      this.#handle(request, respond);
    } catch (e) {
      respond({ kind: "error", message: describeError(e) });
    }
  }

  #handle(request: VmRequest, respond: (response: VmResponse) => void): void {
    const needsRunning = request.kind === "balloon" || request.kind === "balloon_stats" || request.kind === "disk_resize" || request.kind === "vsock_stats";
    if (needsRunning && this.#suspended) return respond({ kind: "error", message: "the VM is suspended; resume it first" });
    switch (request.kind) {
      case "stop":
        if (this.#suspended) this.#resume(); // devices must run to flush
        // Every disk flushes before tsvm says the VM stopped; a disk that fails says so.
        return this.#all(this.#t.devices.filter((d) => d.kind === "block"), () => ({ kind: "flush" }), (replies) => {
          const failed = replies.filter((r) => r.reply.kind === "error");
          this.#t.loop.end({ code: EXIT_CODE.GUEST_EXIT, message: null });
          respond(failed.length === 0 ? { kind: "ok" } : { kind: "error", message: failed.map((f) => `${f.label}: ${errorOf(f.reply)}`).join("; ") });
        });
      case "suspend":
        return respond(this.#suspend());
      case "resume":
        return respond(this.#resume());
      case "balloon": {
        const balloon = this.#t.devices.find((d) => d.kind === "balloon");
        if (!balloon) return respond({ kind: "error", message: "this VM has no balloon device (--no-balloon)" });
        if (request.bytes > this.#t.memorySize) return respond({ kind: "error", message: `balloon size ${request.bytes} is larger than guest memory (${this.#t.memorySize})` });
        return balloon.command({ kind: "balloon_target", pages: Math.floor(request.bytes / BALLOON_PAGE_SIZE) }, (reply) => respond(plain(reply)));
      }
      case "balloon_stats": {
        const balloon = this.#t.devices.find((d) => d.kind === "balloon");
        if (!balloon) return respond({ kind: "error", message: "this VM has no balloon device (--no-balloon)" });
        return balloon.command({ kind: "balloon_stats" }, (reply) => {
          if (reply.kind !== "balloon_stats") return respond(plain(reply));
          const s = reply.stats;
          respond({ kind: "balloon_stats", json: JSON.stringify({ target_bytes: s.target * BALLOON_PAGE_SIZE, actual_bytes: s.actual * BALLOON_PAGE_SIZE, stats: s.stats }) });
        });
      }
      case "vsock_stats": {
        const vsock = this.#t.devices.find((d) => d.kind === "vsock");
        if (!vsock) return respond({ kind: "error", message: "this VM has no vsock device (--vsock cid=N,uds=PATH)" });
        return vsock.command({ kind: "vsock_stats" }, (reply) => {
          if (reply.kind !== "vsock_stats") return respond(plain(reply));
          const s = reply.stats;
          respond({ kind: "vsock_stats", json: JSON.stringify({
            cid: s.cid, connections: s.connections, host_initiated: s.hostInitiated, guest_initiated: s.guestInitiated,
            refused: s.refused, resets: s.resets, malformed_packets: s.malformed, bytes_to_guest: s.bytesToGuest, bytes_from_guest: s.bytesFromGuest,
          }) });
        });
      }
      case "disk_resize": {
        const disks = this.#t.devices.filter((d) => d.kind === "block");
        const disk = disks[request.index];
        if (!disk) return respond({ kind: "error", message: `no disk ${request.index} (this VM has ${disks.length})` });
        if (request.bytes % SECTOR_SIZE !== 0 || request.bytes === 0) return respond({ kind: "error", message: `size ${request.bytes} is not a positive multiple of ${SECTOR_SIZE} bytes` });
        return disk.command({ kind: "disk_resize", bytes: request.bytes }, (reply) => {
          respond(reply.kind === "error" ? { kind: "error", message: `failed to resize disk ${request.index}: ${reply.message}` } : plain(reply));
        });
      }
    }
  }

  /** Sends a command to each of `devices` and calls `done` once all have answered. */
  #all(devices: readonly VirtioHandle[], command: () => Parameters<VirtioHandle["command"]>[0], done: (replies: { label: string; reply: DeviceReply }[]) => void): void {
    const replies: { label: string; reply: DeviceReply }[] = [];
    if (devices.length === 0) return done(replies);
    for (const d of devices) {
      d.command(command(), (reply) => {
        replies.push({ label: d.label, reply });
        if (replies.length === devices.length) done(replies);
      });
    }
  }

  /** Parks every vCPU outside KVM_RUN and stops device processing; kvmclock is held still. */
  #suspend(): VmResponse {
    if (this.#suspended) return { kind: "ok" };
    if (!this.#t.vcpus.park()) return { kind: "error", message: "vCPUs did not park in time" };
    this.#savedClock = this.#t.built.vm.getClock();
    for (const d of this.#t.devices) d.pause(true);
    this.#suspended = true;
    return { kind: "ok" };
  }

  #resume(): VmResponse {
    if (!this.#suspended) return { kind: "ok" };
    if (this.#savedClock !== null) this.#t.built.vm.setClock(this.#savedClock);
    for (const d of this.#t.devices) d.pause(false);
    this.#suspended = false;
    this.#t.vcpus.unpark();
    return { kind: "ok" };
  }
}

function errorOf(reply: DeviceReply): string {
  return reply.kind === "error" ? reply.message : reply.kind;
}

/** A device reply as a control response: ok, or its error. */
function plain(reply: DeviceReply): VmResponse {
  return reply.kind === "error" ? { kind: "error", message: reply.message } : { kind: "ok" };
}
