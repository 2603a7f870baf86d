// serve_devices.ts - `tsvm devices`: tsvm's virtio devices as vhost-user back-ends for any VMM
// (QEMU, Cloud Hypervisor, crosvm, another tsvm), each on its own socket.
//
// Each device runs jailed exactly like `tsvm run`'s device processes, with the listening socket as
// its fd 3: it accepts one front-end at a time, and when that front-end goes (or is dropped for
// breaking the protocol) it waits for the next. This process only opens what the user named,
// starts the devices, relays their log lines, and on SIGTERM/SIGINT ends them and removes the sockets.
import { event as eventFfi, socket, sys } from "../ffi/mod.ts";
import { runCleanup } from "./base/cleanup.ts";
import { EventFd } from "./base/event_fd.ts";
import { flushLog, log, setLogLevel, useNonBlockingStderr } from "./base/log.ts";
import { OutputRelay } from "./base/stream_output.ts";
import { listenUnix } from "./base/unix_listener.ts";
import { ConfigError } from "./config.ts";
import { createDevice, loadDeviceKinds } from "./devices/create_device.ts";
import { closeResources, consoleToStdout, type DeviceResources, openResources, resourceFds } from "./devices/device_resources.ts";
import { jailIdBase, JailedProcess } from "./devices/sandbox/jailed_process.ts";
import { DEVICE_JSC, VMM_JSC } from "./base/in_process_jsc.ts";
import { restartWithJsc } from "./base/exec_self.ts";
import { VhostUserBackend } from "./devices/vhost_user/backend.ts";
import type { DevicesConfig } from "./devices_config.ts";
import { ControlLoop, DeviceLoop } from "./vmm/control_loop.ts";
import { IN_PROCESS_HOST } from "./vmm/virtio_devices.ts";
import { serveHandOff, tapFds } from "./vmm/hand_off.ts";

const SIGINT = 2;
const SIGTERM = 15;

/**
 * Serves the devices that the program before this exec handed over (vmm/hand_off.ts); resolves to
 * the exit code (a state it cannot read is a usage error).
 */
export async function serveHandedOff(): Promise<number> {
  return await serveHandOff("devices", (state) => serveDevices(state.config, state.filters));
}

/**
 * Serves every device in `config` until SIGTERM or SIGINT (exit 0) or a device process fails (exit
 * 1). `filters` are the jailed devices' compiled seccomp filters when the caller compiled them already.
 */
export async function serveDevices(config: DevicesConfig, compiled: ReadonlyMap<string, Uint8Array> | null = null): Promise<number> {
  // Returns only when the settings are in place (the hand-off has usually put them there already).
  restartWithJsc(config.sandbox ? VMM_JSC : { ...VMM_JSC, ...DEVICE_JSC }, tapFds({ command: "devices", config }));
  setLogLevel(config.logLevel);
  useNonBlockingStderr();
  const cleanup: (() => void)[] = [];
  const loop = new ControlLoop();
  cleanup.push(() => loop.close());
  loop.everyTick(flushLog);
  try {
    const opened: { resources: DeviceResources; listenFd: number; socket: string }[] = [];
    if (!config.sandbox) await loadDeviceKinds(config.devices.map((d) => d.spec.kind));
    const filters = !config.sandbox
      ? new Map<string, Uint8Array>()
      : compiled ?? await (await import("./vmm/device_filters.ts")).filtersOf(config.devices.map((d) => d.spec.kind), config.seccompPolicyDir, config.seccompLogFailures);
    for (const d of config.devices) {
      const filter = config.sandbox ? filters.get(d.spec.kind)! : null;
      const resources = openResources(d.spec);
      if (!resources.ok) throw new ConfigError(`${d.spec.label}: ${resources.error}`);
      cleanup.push(() => closeResources(resources.value));
      const listening = listenUnix(d.socket, socket.SOCK_STREAM, "the vhost-user socket");
      if (!listening.ok) throw new ConfigError(listening.error);
      cleanup.push(() => {
        sys.close(listening.value);
        sys.unlink(d.socket); // an error: already gone
      });
      opened.push({ resources: resources.value, listenFd: listening.value, socket: d.socket });
      // A vsock device's host side (its Unix sockets) stays in this process, as in `tsvm run`.
      const broker = resources.value.kind === "vsock" ? resources.value.broker : null;
      if (filter !== null) {
        // A console writing to stdout gets a pipe that this process copies out, as under `tsvm run`:
        // the jailed device never holds the terminal.
        const piped = consoleToStdout(resources.value);
        const given = piped?.given ?? resources.value;
        const started = JailedProcess.spawn({
          setup: { spec: d.spec, logLevel: config.logLevel, filter, listen: true, resourceFds: resourceFds(given).length },
          vhostUserFd: listening.value, resourceFds: resourceFds(given), idBase: jailIdBase(process.pid, opened.length - 1), loop,
          onFailure: (message) => loop.end({ code: 1, message: `stopping: ${message}` }),
          ...(broker ? { hostConnect: (port: number) => broker.connect(port) } : {}),
        });
        if (piped) {
          closeResources(piped.given);
          if (!started.ok) sys.close(piped.read);
        }
        if (!started.ok) throw new Error(started.error);
        if (piped && resources.value.kind === "console") {
          const relay = new OutputRelay(loop, piped.read, resources.value.output!);
          cleanup.push(() => relay.close());
        }
        const child = started.value;
        // As under `tsvm run`: the spawn settles on the loop's first turn, and a process that does
        // not say READY in time is ended (and this program with it) instead of serving nobody.
        loop.everyTick(() => child.checkDeadlines(performance.now()));
        broker?.start(loop, (host, port) => child.sendHostConnection(host, port));
        cleanup.push(() => child.close());
      } else {
        const device = createDevice(d.spec, resources.value, IN_PROCESS_HOST);
        broker?.start(loop, (host, port) => device.acceptHost?.(host, port));
        serveInProcess(loop, d.spec.label, device, listening.value, cleanup);
      }
      log.info(`${d.spec.label}: serving vhost-user on ${d.socket}`);
    }
    for (const signal of [SIGINT, SIGTERM]) {
      const fd = new EventFd();
      eventFfi.notifySignal(signal, fd.fd);
      loop.watch(fd.fd, () => loop.end({ code: 0, message: null }));
      cleanup.push(() => {
        eventFfi.defaultSignal(signal);
        fd.close();
      });
    }
    const ending = await loop.run();
    if (ending.message) log.error(ending.message);
    return ending.code;
  } finally {
    runCleanup(cleanup);
  }
}

/** Serves a device on this process's loop (--disable-sandbox), one front-end at a time. */
function serveInProcess(loop: ControlLoop, label: string, device: ReturnType<typeof createDevice>, listenFd: number, cleanup: (() => void)[]): void {
  const deviceLoop = new DeviceLoop(loop, label);
  const backend = new VhostUserBackend(device, deviceLoop, {
    disconnected: (reason) => log.info(`${label}: front-end gone (${reason}); waiting for the next one`),
    log: (level, message) => log[level](`${label}: ${message}`),
  });
  deviceLoop.onError = (message) => backend.disconnect(message);
  loop.watch(listenFd, () => {
    const fd = socket.accept(listenFd);
    if (fd >= 0) backend.serve(fd);
  });
  cleanup.push(() => {
    loop.unwatch(listenFd);
    backend.close();
  });
}
