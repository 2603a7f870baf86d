// vhost_vsock.ts - virtio-vsock served by the host kernel's vhost-vsock (crosvm's `--cid`): guest
// sockets become host AF_VSOCK sockets. The kernel moves the rx and tx rings itself, on the guest's
// memory as mapped in this process (its owner); the VMM only hands over memory, rings, the kick
// ioeventfds and the interrupt irqfds. The event queue stays with the VMM, which never uses it.
import { EventFd } from "../../../base/event_fd.ts";
import { err, ok, type Result } from "../../../base/result.ts";
import { VhostKernel } from "../../../base/vhost_kernel.ts";
import { ringHostAddresses } from "../queue.ts";
import { type ActivateContext, VIRTIO_F, VIRTIO_ID, type VirtioDevice, type VirtioWorker } from "../virtio_device.ts";

export const VHOST_VSOCK_PATH = "/dev/vhost-vsock";
const QUEUE_SIZE = 256;
const CONFIG_SIZE = 8;
/** The rings the kernel serves: rx and tx. */
const KERNEL_RINGS = [0, 1];
/** What tsvm passes on of the kernel's features: the ring's, and stream and seqpacket sockets. */
const PASSED_FEATURES = (1n << VIRTIO_F.VIRTIO_F_VERSION_1) | (1n << VIRTIO_F.VIRTIO_RING_F_INDIRECT_DESC) |
  (1n << VIRTIO_F.VIRTIO_RING_F_EVENT_IDX) | (1n << 0n) /* VIRTIO_VSOCK_F_STREAM */ | (1n << 1n) /* VIRTIO_VSOCK_F_SEQPACKET */;

export class VhostVsock implements VirtioDevice {
  readonly debugLabel = "vhost-vsock";
  readonly deviceType = VIRTIO_ID.VSOCK;
  readonly queueMaxSizes = [QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE];
  readonly features: bigint;
  readonly configSize = CONFIG_SIZE;
  /** Whether the kernel's rings are set up (between activation and reset). */
  #active = false;

  private constructor(readonly cid: number, readonly vhost: VhostKernel, features: bigint) {
    this.features = features;
  }

  /** Opens the kernel device and claims `cid` for this guest; the error says what to do instead. */
  static open(cid: number, path = VHOST_VSOCK_PATH): Result<VhostVsock> {
    const opened = VhostKernel.open(path);
    if (!opened.ok) {
      const why = opened.error === "ENOENT"
        ? `there is no ${path} on this host (modprobe vhost_vsock); --vsock cid=N,uds=PATH gives the guest tsvm's own vsock, which needs no kernel module`
        : `cannot open ${path}: ${opened.error}`;
      return err(`--cid ${cid}: ${why}`);
    }
    const vhost = opened.value;
    const fail = (message: string): Result<VhostVsock> => {
      vhost.close();
      return err(`--cid ${cid}: ${message}`);
    };
    const claimed = vhost.vsockSetGuestCid(cid);
    if (!claimed.ok) return fail(claimed.error.endsWith("EADDRINUSE") ? `CID ${cid} is in use by another VM on this host` : claimed.error);
    const features = vhost.features();
    if (!features.ok) return fail(features.error);
    if (!(features.value & (1n << VIRTIO_F.VIRTIO_F_VERSION_1))) return fail("the kernel's vhost-vsock does not offer VIRTIO_F_VERSION_1");
    return ok(new VhostVsock(cid, vhost, features.value & PASSED_FEATURES));
  }

  readConfig(offset: number, data: Uint8Array): void {
    const config = new DataView(new ArrayBuffer(CONFIG_SIZE));
    config.setBigUint64(0, BigInt(this.cid), true);
    for (let i = 0; i < data.byteLength; i++) data[i] = offset + i < CONFIG_SIZE ? config.getUint8(offset + i) : 0;
  }

  writeConfig(): void {}

  activate(ctx: ActivateContext): VirtioWorker {
    const vhost = this.vhost;
    const started: number[] = [];
    const errors: EventFd[] = [];
    const stop = (): void => {
      this.#active = false;
      vhost.vsockSetRunning(false);
      for (const index of started) vhost.getVringBase(index);
      ctx.interrupt.onNotifiersChanged(null);
      for (const e of errors) {
        ctx.loop.unwatch(e.fd);
        e.close();
      }
    };
    const step = (r: Result<null>): boolean => {
      if (!r.ok) ctx.needsReset(`the kernel refused the device: ${r.error}`);
      return r.ok;
    };
    const regions = ctx.memory.hostMappings().map((m) => ({ guestAddress: BigInt(m.guestBase), size: BigInt(m.size), userAddress: BigInt(m.hostAddress) }));
    if (!step(vhost.setFeatures(ctx.features)) || !step(regions.length > 0 ? vhost.setMemTable(regions) : err("guest memory is not shareable"))) {
      return { stop };
    }
    for (const index of KERNEL_RINGS) {
      const queue = ctx.queues[index];
      if (!queue) continue;
      const addresses = ringHostAddresses(ctx.memory, queue);
      const error = new EventFd();
      errors.push(error);
      ctx.loop.watch(error.fd, () => {
        if (error.read() > 0) ctx.needsReset(`the kernel found queue ${index} broken`);
      });
      const configured = step(addresses === null ? err(`ring ${index} is outside guest RAM`) : ok(null)) &&
        step(vhost.setVringNum(index, queue.config.size)) &&
        step(vhost.setVringBase(index, queue.nextAvail)) &&
        step(vhost.setVringAddr(index, addresses!)) &&
        step(vhost.setVringCall(index, ctx.interrupt.queueNotifier(index).fd)) &&
        step(vhost.setVringErr(index, error.fd)) &&
        step(vhost.setVringKick(index, ctx.kicks[index]!.fd));
      if (!configured) return { stop };
      started.push(index);
    }
    if (!step(vhost.vsockSetRunning(true))) return { stop };
    this.#active = true;
    // When MSI-X masking moves a queue's interrupt between its irqfd and the VMM, tell the kernel.
    ctx.interrupt.onNotifiersChanged(() => {
      for (const index of started) vhost.setVringCall(index, ctx.interrupt.queueNotifier(index).fd);
    });
    return { stop };
  }

  /** Stops the kernel's work on the rings while the VM is suspended (tsvm suspend), and restarts it. */
  pause(paused: boolean): void {
    if (this.#active) this.vhost.vsockSetRunning(!paused);
  }

  close(): void {
    this.vhost.close();
  }
}
