// device_process.ts - `tsvm device`: the jailed process that runs one virtio device as a vhost-user
// back-end.
//
// fds: 3 the vhost-user socket (connected to the VMM, or with `listen` a listening socket that
// `tsvm devices` accepts front-ends on), 4 the control tube, 5.. the device's resources (disk image
// and its backing chain, tap, output). The process reads its setup, builds its device, locks itself
// down (an empty root, no capabilities, the VMM-compiled seccomp filter), says READY, then serves
// vhost-user and the VMM's commands on one WaitContext until its VMM goes away. A vsock device's
// host sockets come over the tube too: the VMM connects and accepts them for it.
import { jail, socket, sys } from "../../../ffi/mod.ts";
import { setLogLevel, log, type LogLevel } from "../../base/log.ts";
import { describeError, err, ok, type Result } from "../../base/result.ts";
import { StreamSocket } from "../../base/stream_socket.ts";
import { Tube } from "../../base/tube.ts";
import { DEVICE_SLICE_NS, LOOP_POLL_NS, WaitContext } from "../../base/wait_context.ts";
import { createDevice, type CreatedDevice, loadDeviceKinds, resourcesFromFds } from "../create_device.ts";
import { VhostUserBackend } from "../vhost_user/backend.ts";
import type { DeviceEventLoop } from "../virtio/virtio_device.ts";
import type { VsockHost } from "../virtio/vsock/vsock.ts";
import { decodeTubeMessage, encodeFailed, encodeHostConnect, encodeReady, encodeReply } from "./messages.ts";

const VHOST_USER_FD = 3;
const TUBE_FD = 4;
const FIRST_RESOURCE_FD = 5;
/** bounds the resources one device takes (an image and its backing chain at most) */
const MAX_RESOURCE_FDS = 16;
/** fds a device process may hold: its own few, a front-end's memory and eventfds, Bun's loops. */
const MAX_FDS = 256;
/** How long the VMM may take to send the setup. */
const SETUP_TIMEOUT_MS = 30_000;
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
/** Events served between two collections of the young generation (see the loop at the end). */
const EVENTS_PER_COLLECTION = 256;
/** How long a device idles after serving before it collects its whole heap (see the loop at the end). */
const IDLE_COLLECTION_MS = 500;
/** Host connections a vsock device waits for at once (its connection limit bounds them anyway). */
const MAX_PENDING_HOST_CONNECTS = 256;

/** Runs the device process; resolves to its exit code (it normally ends with its VMM). */
export async function runDeviceProcess(): Promise<number> {
  const tube = new Tube(TUBE_FD);
  const first = tube.receive(SETUP_TIMEOUT_MS);
  if (first.kind !== "message") return 3;
  const decoded = decodeTubeMessage(first.bytes);
  if (!decoded.ok || decoded.value.kind !== "setup") return 3;
  const setup = decoded.value.setup;
  // Before any thread of ours starts (the I/O pool's inherit it); a kernel before 6.12 ignores it.
  if (DEVICE_SLICE_NS > 0) sys.schedSlice(0, DEVICE_SLICE_NS);
  setLogLevel(setup.logLevel as LogLevel);
  const label = setup.spec.label;
  const fail = (reason: string): number => {
    tube.send(encodeFailed(reason));
    return 4;
  };

  const wait = new WaitContext<() => void>({ pollNs: LOOP_POLL_NS });
  const loop: DeviceEventLoop = { watch: (fd, handler, events) => wait.add(fd, handler, events), unwatch: (fd) => wait.delete(fd) };
  // A vsock device asks the VMM for host connections; the answers come back on the tube.
  const pendingConnects = new Map<number, (socket: Result<StreamSocket>) => void>();
  let nextConnectId = 1;
  const vsockHost: VsockHost = {
    connect: (port, done) => {
      if (pendingConnects.size >= MAX_PENDING_HOST_CONNECTS) return done(err("too many host connections pending"));
      const id = nextConnectId++;
      pendingConnects.set(id, done);
      tube.send(encodeHostConnect(id, port));
    },
  };
  let device: CreatedDevice;
  let backend: VhostUserBackend;
  try {
    if (setup.resourceFds > MAX_RESOURCE_FDS) return fail(`${setup.resourceFds} resource fds`);
    await loadDeviceKinds([setup.spec.kind]); // only this device's code, and before the jail
    const fds = Array.from({ length: setup.resourceFds }, (_, i) => FIRST_RESOURCE_FD + i);
    const resources = resourcesFromFds(setup.spec, fds);
    if (!resources.ok) return fail(resources.error);
    device = createDevice(setup.spec, resources.value, {
      entropy: sys.getrandom,
      punchHole: (fd, offset, length) => sys.fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, offset, length) === 0,
      vsock: vsockHost,
    });
    backend = new VhostUserBackend(device, loop, {
      disconnected: (reason) => {
        if (setup.listen) log.info(`${label}: front-end gone (${reason}); waiting for the next one`);
        else process.exit(0); // the VMM is gone, or broke the protocol: nothing left to serve
      },
      log: (level, message) => log[level](`${label}: ${message}`),
    });
    // Touch what initializes lazily before the jail: the RNG (madvise WIPEONFORK). Nothing here
    // formats dates: time zone data costs megabytes, and in the jail ICU finds no files (openat
    // fails with ENOENT) and settles for UTC.
    crypto.getRandomValues(new Uint8Array(16));
    const locked = jail.lockdown(setup.filter, MAX_FDS);
    if (locked < 0) return fail(`lockdown failed with errno ${-locked}`);
  } catch (e) {
    return fail(describeError(e));
  }
  // What setting up left behind (the setup message, the policy, parsing's garbage) goes now, in
  // one full collection (~1 ms), rather than staying in the heap until enough requests come.
  Bun.gc(true);
  tube.send(encodeReady());

  if (setup.listen) {
    wait.add(VHOST_USER_FD, () => {
      const fd = socket.accept(VHOST_USER_FD);
      if (fd >= 0) backend.serve(fd);
    });
  } else {
    backend.serve(VHOST_USER_FD);
  }
  wait.add(TUBE_FD, () => {
    const m = tube.receive(0);
    if (m.kind === "closed") process.exit(0);
    if (m.kind !== "message") return;
    const message = decodeTubeMessage(m.bytes);
    const v = message.ok ? message.value : null;
    // A host socket travels with exactly these messages; any other fd is closed unused.
    const carriesSocket = v !== null && (v.kind === "host_connection" || (v.kind === "host_connected" && v.error === null));
    const socketFd = carriesSocket && m.fds.length === 1 ? m.fds[0]! : -1;
    for (const fd of m.fds) if (fd !== socketFd) sys.close(fd);
    if (v === null || (carriesSocket && socketFd < 0)) {
      log.warn(`${label}: malformed message from the VMM: ${message.ok ? `${message.value.kind} without its socket` : message.error}`);
      process.exit(5);
    }
    switch (v.kind) {
      case "command": {
        const reply = device.control ? device.control(v.command) : { kind: "error" as const, message: `the ${label} device takes no commands` };
        tube.send(encodeReply(v.id, reply));
        return;
      }
      case "host_connection":
        if (device.acceptHost) device.acceptHost(StreamSocket.adopt(socketFd), v.port);
        else sys.close(socketFd);
        return;
      case "host_connected": {
        const done = pendingConnects.get(v.id);
        pendingConnects.delete(v.id);
        const result: Result<StreamSocket> = v.error === null ? ok(StreamSocket.adopt(socketFd)) : err(v.error);
        if (done) done(result);
        else if (result.ok) result.value.close();
        return;
      }
      default:
        log.warn(`${label}: unexpected ${v.kind} message from the VMM`);
        process.exit(5);
    }
  });
  // JSC collects once a cycle has allocated GC_CYCLE_BYTES (in_process_jsc.ts); its other
  // collections run on timers of Bun's event loop, which never run while this loop blocks in epoll.
  // So that a burst's garbage does not wait for the next one, once enough events were served and
  // nothing is ready, collect the young generation (tens of microseconds on a heap this small)
  // before blocking again.
  // And once the device has gone idle for IDLE_COLLECTION_MS after serving, a full collection gives
  // back what the burst left (a block process held 0.2-0.3 MiB less after one), then the loop
  // blocks until the next event.
  let served = 0;
  let collectedSinceLastEvent = true;
  for (;;) {
    const events = wait.wait(served >= EVENTS_PER_COLLECTION ? 0 : collectedSinceLastEvent ? -1 : IDLE_COLLECTION_MS);
    if (events.length === 0) {
      if (served >= EVENTS_PER_COLLECTION) {
        Bun.gc(false);
        served = 0;
      } else {
        Bun.gc(true);
        collectedSinceLastEvent = true;
      }
      continue;
    }
    served += events.length;
    collectedSinceLastEvent = false;
    for (const { token } of events) {
      try {
        token();
      } catch (e) {
        // A bug must not take the device down with a front-end still attached: drop that front-end.
        log.error(`${label}: ${describeError(e)}`);
        backend.disconnect(`internal error: ${describeError(e)}`);
      }
    }
  }
}
