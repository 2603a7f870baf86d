// sandboxed_device.ts - a device in its own jailed process, seen by the transport as a VirtioDevice:
// a vhost-user front-end on a private socket to the process's back-end.
//
// Device processes start in parallel and finish starting while the VM already runs: the queue sizes
// and configuration size come from the device type, and the first thing that needs the device itself
// (the driver reading its features, say) waits for it, within the start deadline.
import { socket, sys } from "../../../ffi/mod.ts";
import { err, ok, type Result } from "../../base/result.ts";
import type { StreamSocket } from "../../base/stream_socket.ts";
import type { DeviceResources } from "../device_resources.ts";
import type { DeviceSpec } from "../device_spec.ts";
import { resourceFds } from "../device_resources.ts";
import { DEVICE_TYPES, withQueueCount, type DeviceTypeInfo } from "../vhost_user/device_types.ts";
import { VhostUserFrontend } from "../vhost_user/frontend.ts";
import type { DeviceCommand, DeviceReply } from "../virtio/device_control.ts";
import type { ActivateContext, DeviceEventLoop, VirtioDevice, VirtioWorker } from "../virtio/virtio_device.ts";
import { COMMAND_TIMEOUT_MS, JailedProcess } from "./jailed_process.ts";

/** How long the device process may take to answer one vhost-user request. */
const REQUEST_TIMEOUT_MS = COMMAND_TIMEOUT_MS;

/** What a sandboxed device needs beside its spec and resources. */
export type SandboxOptions = {
  readonly filter: Uint8Array;
  readonly logLevel: string;
  readonly idBase: number;
  readonly loop: DeviceEventLoop;
  /** Called once when the device fails; the message names the device, its pid and what happened. */
  readonly onFailure: (message: string) => void;
  /** The program to run instead of `tsvm device` (tests that are not tsvm's main module). */
  readonly command?: readonly string[];
  /** For vsock: connects the device to the host program serving a port (see JailedProcess). */
  readonly hostConnect?: (port: number) => Result<StreamSocket>;
};

/** A virtio device served by a jailed device process. */
export class SandboxedDevice implements VirtioDevice {
  readonly debugLabel: string;
  readonly deviceType: number;
  readonly queueMaxSizes: readonly number[];
  readonly configSize: number;
  readonly process: JailedProcess;
  readonly #type: DeviceTypeInfo;
  readonly #socket: number;
  readonly #loop: DeviceEventLoop;
  #frontend: VhostUserFrontend | null = null;
  #configListener: (() => void) | null = null;

  private constructor(spec: DeviceSpec, process: JailedProcess, fd: number, loop: DeviceEventLoop) {
    const type = withQueueCount(DEVICE_TYPES[spec.kind], spec.kind === "block" ? spec.queues : 1);
    this.debugLabel = spec.label;
    this.deviceType = type.deviceType;
    this.queueMaxSizes = type.queueMaxSizes;
    this.configSize = type.configSize;
    this.#type = type;
    this.process = process;
    this.#socket = fd;
    this.#loop = loop;
  }

  /** Starts the device's process (without waiting for it); the resources' fds are handed to it. */
  static spawn(spec: DeviceSpec, resources: DeviceResources, options: SandboxOptions): Result<SandboxedDevice> {
    const [ours, theirs] = socket.socketPair(socket.SOCK_STREAM);
    const fds = resourceFds(resources);
    const started = JailedProcess.spawn({
      setup: { spec, logLevel: options.logLevel, filter: options.filter, listen: false, resourceFds: fds.length },
      vhostUserFd: theirs, resourceFds: fds, idBase: options.idBase, loop: options.loop, onFailure: options.onFailure,
      ...(options.command ? { command: options.command } : {}),
      ...(options.hostConnect ? { hostConnect: options.hostConnect } : {}),
    });
    sys.close(theirs);
    if (!started.ok) {
      sys.close(ours);
      return err(started.error);
    }
    return ok(new SandboxedDevice(spec, started.value, ours, options.loop));
  }

  get features(): bigint {
    return this.#ensure()?.features ?? 0n;
  }

  readConfig(offset: number, data: Uint8Array): void {
    const frontend = this.#ensure();
    if (frontend) frontend.readConfig(offset, data);
    else data.fill(0);
  }

  writeConfig(offset: number, data: Uint8Array): void {
    this.#ensure()?.writeConfig(offset, data);
  }

  activate(ctx: ActivateContext): VirtioWorker {
    const frontend = this.#ensure();
    if (frontend === null) return { stop: () => {} };
    return frontend.activate(ctx);
  }

  /** Sends a VMM command (balloon, disk, console input); `onReply` runs from the loop. */
  command(command: DeviceCommand, onReply: (reply: DeviceReply) => void): void {
    this.process.command(command, onReply);
  }

  /** Sets the one listener told when the device says its configuration changed. */
  onConfigChanged(listener: (() => void) | null): void {
    this.#configListener = listener;
    this.#frontend?.onConfigChanged(listener);
  }

  close(): void {
    this.#frontend?.close();
    if (this.#frontend === null) sys.close(this.#socket);
    this.process.close();
  }

  /** Connects to the process's back-end the first time the device is needed; null once it failed. */
  #ensure(): VhostUserFrontend | null {
    if (this.#frontend !== null) return this.process.ended === null ? this.#frontend : null;
    if (this.process.ended !== null) return null;
    const ready = this.process.waitReady();
    if (!ready.ok) return null;
    const connected = VhostUserFrontend.connect(this.#socket, {
      label: this.debugLabel, type: this.#type, queues: this.queueMaxSizes.length, loop: this.#loop, timeoutMs: REQUEST_TIMEOUT_MS,
      onFailure: (reason) => this.process.fail(`broke the vhost-user protocol: ${reason}`),
    });
    if (!connected.ok) {
      this.process.fail(connected.error);
      return null;
    }
    this.#frontend = connected.value;
    this.#frontend.onConfigChanged(this.#configListener);
    return this.#frontend;
  }
}
