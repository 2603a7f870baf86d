// jailed_process.ts - the VMM's side of one jailed device process: spawn, setup, commands, its log
// lines, and its end.
//
// The VMM never blocks on a device process and never trusts it. Everything it sends arrives as an
// event on the VMM's loop and is checked; a malformed or unexpected message, a closed tube, a
// command not answered in time, or a start that takes too long ends the process: SIGKILL, reap,
// and one `failure` line naming the device, its pid and what it did. Its log lines come through a
// pipe the VMM reads, prefixed with its name, escaped and rate-limited; it never holds a terminal.
import { jail, socket, sys } from "../../../ffi/mod.ts";
import { ERRNO } from "../../base/errno.ts";
import { BURST_DEVICE_JSC, BURST_DEVICE_KINDS, DEVICE_JSC, DEVICE_LIBRARY_FD_ENV, DEVICE_PROCESS_JSC } from "../../base/in_process_jsc.ts";
import type { DeviceKind } from "../device_spec.ts";
import { log, sanitize, writeLog } from "../../base/log.ts";
import { describeError, err, ok, type Result } from "../../base/result.ts";
import type { StreamSocket } from "../../base/stream_socket.ts";
import { Tube } from "../../base/tube.ts";
import { DEVICE_SLICE_NS, LOOP_POLL_NS } from "../../base/wait_context.ts";
import { GUEST_HUGE_PAGES } from "../../memory/guest_memory.ts";
import type { DeviceEventLoop } from "../virtio/virtio_device.ts";
import type { DeviceCommand, DeviceReply } from "../virtio/device_control.ts";
import { decodeTubeMessage, type DeviceSetup, encodeCommand, encodeHostConnected, encodeHostConnection, encodeSetup } from "./messages.ts";

/**
 * A device process's whole environment. No transpiler cache (it has no files to keep one in), and no
 * FTL, JSC's top JIT tier: a device's time goes to system calls, not to its few small loops, and
 * FTL's compiler and code kept about 1.5 MiB more in a block device process after a few thousand
 * requests, for no request rate we could measure (test/devices/sandbox/device_memory.test.ts). One
 * GC marker: a device's heap is a few MiB, and parallel marking woke JSC's helper threads at every
 * collection (thousands a second while a driver notifies fast), which the scheduler put on whatever
 * CPU was free, often the one a vCPU was about to run on. The baseline JIT late (DEVICE_PROCESS_JSC
 * says why). And the VMM's loop-polling, device-slice and huge-page settings, and its
 * TSVM_AIO_OFFLOAD and TSVM_AIO_THREADS if set.
 */
const DEVICE_ENV = [
  "BUN_RUNTIME_TRANSPILER_CACHE_PATH=0", ...Object.entries({ ...DEVICE_JSC, ...DEVICE_PROCESS_JSC }).map(([k, v]) => `${k}=${v}`),
  `TSVM_LOOP_POLL_NS=${LOOP_POLL_NS}`, `TSVM_DEVICE_SLICE_NS=${DEVICE_SLICE_NS}`, `TSVM_GUEST_HUGE_PAGES=${GUEST_HUGE_PAGES ? 1 : 0}`,
  ...(process.env.TSVM_AIO_OFFLOAD === "1" ? ["TSVM_AIO_OFFLOAD=1"] : []),
  ...(process.env.TSVM_AIO_THREADS === "1" ? ["TSVM_AIO_THREADS=1"] : []),
];
/** The environment of a device of `kind`: DEVICE_ENV, and no DFG for devices whose work is only bursts (BURST_DEVICE_JSC). */
export function deviceEnv(kind: DeviceKind): readonly string[] {
  return BURST_DEVICE_KINDS.has(kind) ? [...DEVICE_ENV, ...Object.entries(BURST_DEVICE_JSC).map(([k, v]) => `${k}=${v}`)] : DEVICE_ENV;
}

/**
 * How long a device process may take to start and lock itself down (about 40 ms on a normal host).
 * TSVM_DEVICE_START_TIMEOUT_MS raises it on hosts that run far slower (everything under emulation).
 */
export const START_TIMEOUT_MS = Number(process.env.TSVM_DEVICE_START_TIMEOUT_MS ?? "") || 8000;
/**
 * How long a device process may take to answer one command or vhost-user request; raised, like the
 * start timeout, with TSVM_DEVICE_TIMEOUT_MS on hosts that run everything far slower.
 */
export const COMMAND_TIMEOUT_MS = Number(process.env.TSVM_DEVICE_TIMEOUT_MS ?? "") || 5000;
/** Log lines a device may print per second before the rest are dropped (and counted). */
const LOG_LINES_PER_SECOND = 20;
const LOG_CHUNK = 4096;
const SIGSYS = 31;
const SIGKILL = 9;
/** How long a failing process gets to finish dying on its own before it is killed. */
const GRACE_MS = 100;
/** How long a killed process gets to be reaped (it cannot survive SIGKILL unless stuck in the kernel). */
const REAP_MS = 1000;
const O_NONBLOCK = 0o4000;
/** Host ids of jailed processes start here; see `jailIdBase`. */
const JAIL_ID_FLOOR = 0x4000_0000;
/** Device processes per VM with ids of their own (PCI bus 0 has 31 free slots). */
const MAX_DEVICES_PER_VM = 32;
/** Host connections a (vsock) device may ask for per second; more is a device flooding the VMM. */
const MAX_HOST_CONNECTS_PER_SECOND = 1000;

/**
 * Returns the host uid/gid pair a VM's device `index` runs as: a range chosen from the VMM's pid, so
 * no two running VMs (nor two devices of one VM) ever share an id. Ids from 2^30 up are far above
 * any real user's.
 */
export function jailIdBase(vmmPid: number, index: number): number {
  return JAIL_ID_FLOOR + (vmmPid % 2 ** 22) * MAX_DEVICES_PER_VM * 2 + (index % MAX_DEVICES_PER_VM) * 2;
}

/** What a jailed device process is started with. */
export type JailedProcessOptions = {
  readonly setup: DeviceSetup;
  /** fd 3 of the child: its vhost-user socket (connected, or listening for `tsvm devices`). */
  readonly vhostUserFd: number;
  /** fds 5.. of the child: its resources. */
  readonly resourceFds: readonly number[];
  readonly idBase: number;
  readonly loop: DeviceEventLoop;
  /** Called once when the process fails or ends; `message` names it, its pid and what happened. */
  readonly onFailure: (message: string) => void;
  /** The program to run instead of `tsvm device` (tests play a hostile device with it). */
  readonly command?: readonly string[];
  /** Connects a vsock device to the host program serving `port`; without it such a request breaks the protocol. */
  readonly hostConnect?: (port: number) => Result<StreamSocket>;
};

type Pending = { readonly onReply: (reply: DeviceReply) => void; readonly deadline: number };

/**
 * A jailed device process. It is started by the C library's spawner thread (the namespaces and the
 * exec take ~1-2 ms a device, more when the child waits for a CPU), so the VMM goes on attaching
 * the next device meanwhile; `settle` waits until it has started, and says why it could not.
 */
export class JailedProcess {
  readonly label: string;
  /** Until the spawn is settled. */
  #job: jail.SpawnJob | null;
  /** The process's id once settled; 0 when it could not be started. */
  #pid = 0;
  readonly #tube: Tube;
  readonly #stderr: number;
  readonly #loop: DeviceEventLoop;
  readonly #onFailure: (message: string) => void;
  readonly #pending = new Map<number, Pending>();
  readonly #startDeadline: number;
  #nextId = 1;
  #ready = false;
  #ended: string | null = null;
  #failing = false;
  #released = false;
  #logWindow = { start: 0, lines: 0, dropped: 0 };
  #connectWindow = { start: 0, count: 0 };
  readonly #hostConnect: ((port: number) => Result<StreamSocket>) | null;
  #logCarry = "";

  private constructor(label: string, job: jail.SpawnJob, tube: Tube, stderr: number, options: JailedProcessOptions) {
    this.label = label;
    this.#job = job;
    this.#tube = tube;
    this.#stderr = stderr;
    this.#loop = options.loop;
    this.#onFailure = options.onFailure;
    this.#hostConnect = options.hostConnect ?? null;
    this.#startDeadline = performance.now() + START_TIMEOUT_MS;
  }

  /** Starts the process and sends its setup; the error says why it could not be started. */
  static spawn(options: JailedProcessOptions): Result<JailedProcess> {
    const label = options.setup.spec.label;
    const [ours, theirs] = socket.seqpacketPair();
    const [logRead, logWrite] = sys.pipe();
    const command = options.command ?? (Bun.isStandaloneExecutable ? [process.execPath, "device"] : [process.execPath, Bun.main, "device"]);
    const fds = [options.vhostUserFd, theirs, ...options.resourceFds];
    let env = deviceEnv(options.setup.spec.kind);
    // The device maps the library from this process's sealed memfd, placed after its resources.
    const library = jail.libraryFd();
    if (library !== null) {
      fds.push(library);
      env = [...env, `${DEVICE_LIBRARY_FD_ENV}=${3 + fds.length - 1}`];
    }
    // The job took its own copies of the fds the child gets.
    const job = jail.spawnJailedStart(command[0]!, command, env, fds, logWrite, options.idBase);
    sys.close(theirs);
    sys.close(logWrite);
    if (typeof job === "number") {
      sys.close(ours);
      sys.close(logRead);
      return err(spawnFailure(label, job));
    }
    sys.addFileFlags(logRead, O_NONBLOCK);
    const tube = new Tube(ours);
    const child = new JailedProcess(label, job, tube, logRead, options);
    try {
      tube.send(encodeSetup(options.setup));
    } catch (e) {
      child.#fail(`could not be sent its setup: ${describeError(e)}`);
      return err(child.#ended!);
    }
    options.loop.watch(ours, () => child.#onTube());
    options.loop.watch(logRead, () => child.#onLog());
    return ok(child);
  }

  /** The process's id (settling its spawn first); 0 when it could not be started. */
  get pid(): number {
    this.settle();
    return this.#pid;
  }

  /**
   * Waits until the process has started (exec'd) if it has not yet. One that could not be started
   * is a failure like any other (ended, its fds released, reported once); the error says why.
   * The VMM's loop settles each process on its first turn (checkDeadlines), and so does anything
   * that needs the process.
   */
  settle(): Result<null> {
    return this.#settle(true);
  }

  /** settle; `report`: whether a spawn that failed is reported (close reports nothing). */
  #settle(report: boolean): Result<null> {
    if (this.#job !== null) {
      const pid = jail.spawnJailedFinish(this.#job);
      this.#job = null;
      if (pid > 0) this.#pid = pid;
      else {
        this.#ended = spawnFailure(this.label, pid);
        this.#release();
        if (report) this.#onFailure(this.#ended);
      }
    }
    return this.#pid > 0 ? ok(null) : err(this.#ended ?? `the ${this.label} device process was not started`);
  }

  /** How the process ended, or null while it runs. */
  get ended(): string | null {
    return this.#ended;
  }

  /** Whether it has locked itself down and serves. */
  get ready(): boolean {
    return this.#ready;
  }

  /**
   * Waits (blocking, until the start deadline) for the process to say it is ready; a device's first
   * vhost-user request needs that. Returns why it is not, if it never will be.
   */
  waitReady(): Result<null> {
    while (!this.#ready && this.#ended === null) {
      const left = Math.ceil(this.#startDeadline - performance.now());
      if (left <= 0) {
        this.#fail(`did not start within ${START_TIMEOUT_MS / 1000} s`);
        break;
      }
      const r = socket.waitReadable(this.#tube.fd, left);
      if (r < 0 && r !== -ERRNO.EINTR) this.#fail(`its tube failed (${-r})`);
      else if (r > 0) this.#onTube();
    }
    return this.#ended === null ? ok(null) : err(this.#ended);
  }

  /** Sends `command`; `onReply` runs from the loop when the answer comes (an error reply if the process ends first). */
  command(command: DeviceCommand, onReply: (reply: DeviceReply) => void): void {
    if (this.#ended !== null) {
      onReply({ kind: "error", message: this.#ended });
      return;
    }
    const id = this.#nextId++;
    try {
      this.#tube.send(encodeCommand(id, command));
    } catch (e) {
      this.#fail(`could not be sent a command: ${describeError(e)}`);
      onReply({ kind: "error", message: this.#ended ?? "the device process is gone" });
      return;
    }
    this.#pending.set(id, { onReply, deadline: performance.now() + COMMAND_TIMEOUT_MS });
  }

  /** Ends a process that missed a deadline; the VMM's loop calls this every time round. */
  checkDeadlines(now: number): void {
    if (!this.settle().ok || this.#ended !== null) return;
    if (!this.#ready && now > this.#startDeadline) this.#fail(`did not start within ${START_TIMEOUT_MS / 1000} s`);
    for (const p of this.#pending.values()) {
      if (now > p.deadline) {
        this.#fail(`did not answer a command within ${COMMAND_TIMEOUT_MS / 1000} s`);
        return;
      }
    }
  }

  /** Stops the process (SIGSTOP: tsvm suspend) or lets it go on (SIGCONT). */
  pause(paused: boolean): void {
    if (this.settle().ok && this.#ended === null) process.kill(this.#pid, paused ? "SIGSTOP" : "SIGCONT");
  }

  /** Ends the process and releases its fds (no failure is reported). */
  close(): void {
    this.#settle(false);
    if (this.#ended === null) {
      this.#ended = `device process ${this.label} (pid ${this.pid}) was stopped`;
      this.#kill();
    }
    this.#release();
  }

  /** Hands the device the socket of a host program asking for guest `port` (this process's copy is closed). */
  sendHostConnection(host: StreamSocket, port: number): void {
    if (this.#ended === null) {
      try {
        this.#tube.send(encodeHostConnection(port), [host.fd]);
      } catch (e) {
        this.#fail(`could not be sent a host connection: ${describeError(e)}`);
      }
    }
    host.close();
  }

  /** Ends the process for `what` it did: kill, reap, and report once. */
  fail(what: string): void {
    this.#fail(what);
  }

  #onTube(): void {
    for (;;) {
      if (this.#ended !== null) return;
      let m: ReturnType<Tube["receive"]>;
      try {
        m = this.#tube.receive(0);
      } catch (e) {
        this.#fail(`broke its tube: ${describeError(e)}`);
        return;
      }
      if (m.kind === "timeout") return;
      if (m.kind === "closed") {
        this.#fail("closed its tube");
        return;
      }
      for (const fd of m.fds) sys.close(fd);
      if (m.fds.length > 0) {
        this.#fail("sent fds on its tube");
        return;
      }
      const message = decodeTubeMessage(m.bytes);
      if (!message.ok) {
        this.#fail(`sent a malformed message (${message.error})`);
        return;
      }
      const v = message.value;
      if (v.kind === "ready" && !this.#ready) {
        // A READY that comes after the start deadline is as late as none (the loop's check may
        // not have come round yet).
        this.checkDeadlines(performance.now());
        if (this.#ended === null && !this.#failing) this.#ready = true;
      } else if (v.kind === "failed" && !this.#ready) this.#fail(`failed to start: ${sanitize(v.reason)}`);
      else if (v.kind === "reply" && this.#pending.has(v.id)) {
        const p = this.#pending.get(v.id)!;
        this.#pending.delete(v.id);
        p.onReply(v.reply.kind === "error" ? { kind: "error", message: sanitize(v.reply.message) } : v.reply);
      } else if (v.kind === "host_connect" && this.#ready && this.#hostConnect !== null) {
        const now = performance.now();
        if (now - this.#connectWindow.start > 1000) this.#connectWindow = { start: now, count: 0 };
        if (++this.#connectWindow.count > MAX_HOST_CONNECTS_PER_SECOND) {
          this.#fail(`asked for more than ${MAX_HOST_CONNECTS_PER_SECOND} host connections in a second`);
          return;
        }
        const connected = this.#hostConnect(v.port);
        try {
          this.#tube.send(encodeHostConnected(v.id, connected.ok ? null : connected.error), connected.ok ? [connected.value.fd] : []);
        } catch (e) {
          this.#fail(`could not be sent a host connection: ${describeError(e)}`);
        } finally {
          if (connected.ok) connected.value.close();
        }
        if (this.#ended !== null) return;
      } else {
        this.#fail(`sent an unexpected ${v.kind} message`);
        return;
      }
    }
  }

  #onLog(): void {
    const buf = new Uint8Array(LOG_CHUNK);
    for (;;) {
      const n = sys.readRaw(this.#stderr, buf);
      if (n === -ERRNO.EINTR) continue;
      if (n <= 0) {
        if (n === 0) this.#loop.unwatch(this.#stderr); // the process closed its stderr (it ended)
        return;
      }
      const text = this.#logCarry + new TextDecoder().decode(buf.subarray(0, n));
      const lines = text.split("\n");
      this.#logCarry = lines.pop()!.slice(0, LOG_CHUNK);
      for (const line of lines) this.#printLine(line);
    }
  }

  #printLine(line: string): void {
    const now = performance.now();
    const w = this.#logWindow;
    if (now - w.start > 1000) {
      if (w.dropped > 0) log.warn(`[${this.label}] (${w.dropped} more lines dropped)`);
      this.#logWindow = { start: now, lines: 0, dropped: 0 };
    }
    if (++this.#logWindow.lines > LOG_LINES_PER_SECOND) {
      this.#logWindow.dropped++;
      return;
    }
    // Device lines already carry "[tsvm level]"; keep them whole but escaped, prefixed with the device.
    writeLog(`[${this.label}] ${sanitize(line)}\n`);
  }

  #fail(what: string): void {
    if (!this.settle().ok || this.#ended !== null || this.#failing) return;
    this.#failing = true;
    // A process that died closes its sockets just before it can be reaped: if it is on its way out,
    // its own death is the news (a signal, a seccomp kill), not what its closed sockets looked like.
    let how = this.#reap(GRACE_MS);
    const diedAlone = how !== null;
    if (how === null) {
      this.#kill();
      how = this.#reap(REAP_MS) ?? "could not be reaped";
    }
    const did = diedAlone || what === "" ? how : `${what}; ${how === `was killed by signal ${SIGKILL}` ? "killed" : how}`;
    this.#ended = `device process ${this.label} (pid ${this.pid}) ${did}`;
    for (const p of this.#pending.values()) p.onReply({ kind: "error", message: this.#ended });
    this.#pending.clear();
    this.#release();
    this.#onFailure(this.#ended);
  }

  #kill(): void {
    if (this.#pid <= 0) return;
    try {
      process.kill(this.#pid, "SIGKILL");
    } catch {
      // already gone
    }
  }

  /** Reaps the process if it ends within `waitMs`; returns how it ended, or null if it did not. */
  #reap(waitMs: number): string | null {
    const deadline = performance.now() + waitMs;
    if (this.#pid <= 0) return null;
    for (;;) {
      const [r, status] = jail.waitpid(this.#pid, true);
      if (r > 0) {
        const signal = status & 0x7f;
        if (signal === 0) return `exited with status ${(status >> 8) & 0xff}`;
        if (signal === SIGSYS) return "was killed by SIGSYS: a system call its seccomp policy does not allow";
        return `was killed by signal ${signal}`;
      }
      if (r < 0 || performance.now() > deadline) return null;
      Bun.sleepSync(2);
    }
  }

  #release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#loop.unwatch(this.#tube.fd);
    this.#loop.unwatch(this.#stderr);
    this.#tube.close();
    sys.close(this.#stderr);
  }
}

/** Why the spawn of `label`'s process failed with `errno` (negative), in words. */
function spawnFailure(label: string, errno: number): string {
  const why = -errno === ERRNO.EPERM
    ? "jailing device processes needs root (to create their namespaces and map their ids); run as root or with --disable-sandbox"
    : `errno ${-errno}`;
  return `failed to start the ${label} device process: ${why}`;
}
