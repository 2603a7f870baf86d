// device_process.ts - `tsvm device`: the jailed process that runs one virtio device.
//
// fds: 3 the tube to the VMM, 4 the guest-memory memfd, 5 the device's own file (disk image, tap,
// output) when it has one. The process maps guest memory and opens its device, compiles its seccomp
// policy, locks itself down, then serves the VMM's requests and its queues on its own WaitContext.
import { jail, sys } from "../../../ffi/mod.ts";
import { setLogLevel, type LogLevel } from "../../base/log.ts";
import { Tube } from "../../base/tube.ts";
import { WaitContext } from "../../base/wait_context.ts";
import { GuestMemory } from "../../memory/mod.ts";
import { compilePolicy } from "../../sandbox/bpf.ts";
import { parsePolicy } from "../../sandbox/policy.ts";
import type { IrqLine } from "../interrupt.ts";
import { FdOutput } from "../serial_output.ts";
import { Balloon, memfdReleaser } from "../virtio/balloon.ts";
import { Block } from "../virtio/block/block.ts";
import { DiskFile } from "../virtio/block/disk_file.ts";
import { Qcow2Image, isQcow2 } from "../virtio/block/qcow2.ts";
import { Console } from "../virtio/console.ts";
import type { MsiRouter } from "../virtio/msix.ts";
import { Net, parseMac } from "../virtio/net/net.ts";
import { Tap } from "../virtio/net/tap.ts";
import { Rng } from "../virtio/rng.ts";
import type { DeviceEventLoop, VirtioDevice } from "../virtio/virtio_device.ts";
import { VirtioPciDevice } from "../virtio/virtio_pci_device.ts";
import { type DeviceSetup, MessageReader, MessageWriter, NOTICE, REQUEST } from "./messages.ts";

const TUBE_FD = 3;
const MEMORY_FD = 4;
const DEVICE_FD = 5;
/** fds a device process may hold: its own few, Bun's event loops and eventfds. */
const MAX_FDS = 256;
const FALLOC_PUNCH_HOLE_KEEP_SIZE = 0x03;

/** Runs the device process; resolves to its exit code. */
export function runDeviceProcess(): number {
  const tube = new Tube(TUBE_FD);
  const first = tube.receive(10_000);
  if (first.kind !== "message" || first.bytes[0] !== REQUEST.SETUP) return 3;
  const setup = JSON.parse(new MessageReader(first.bytes).text()) as DeviceSetup;
  setLogLevel(setup.logLevel as LogLevel);
  const fail = (message: string): number => {
    tube.send(new MessageWriter(NOTICE.FAILED).text(message).done());
    return 4;
  };
  let device: VirtioDevice;
  let pci: VirtioPciDevice;
  const memory = GuestMemory.fromFd(MEMORY_FD, setup.memory);
  const wait = new WaitContext<() => void>();
  const loop: DeviceEventLoop = {
    watch: (fd, onReadable) => wait.add(fd, onReadable),
    unwatch: (fd) => wait.delete(fd),
  };
  const gsis = [...setup.gsis];
  const router: MsiRouter = {
    allocateGsi: () => gsis.shift() ?? 0,
    setMsiRoute: (gsi, lo, hi, data) => tube.send(new MessageWriter(NOTICE.MSI_ROUTE).u32(gsi).u32(lo).u32(hi).u32(data).done()),
    attachIrqfd: (fd, gsi) => tube.send(new MessageWriter(NOTICE.IRQFD).u32(gsi).done(), [fd]),
    detachIrqfd: () => {},
  };
  const intx: IrqLine = {
    setLevel: (level) => tube.send(new MessageWriter(NOTICE.IRQ_LINE).u32(setup.intxGsi).u8(level ? 1 : 0).done()),
  };
  try {
    device = makeDevice(setup, memory);
    pci = new VirtioPciDevice(device, {
      memory, router, intx, intxLine: setup.intxGsi, loop,
      ioeventfd: (fd, address, length, assign) =>
        tube.send(new MessageWriter(NOTICE.IOEVENTFD).f64(address).u32(length).u8(assign ? 1 : 0).done(), [fd]),
    });
    const filter = compilePolicy(parsePolicy(setup.policy, (name) => setup.policies[name] ?? null), setup.logFailures ? "log" : "kill");
    // Touch what initializes lazily before the jail: the RNG (madvise WIPEONFORK) and time zones.
    crypto.getRandomValues(new Uint8Array(16));
    void new Date().toString();
    const locked = jail.lockdown(filter, MAX_FDS);
    if (locked < 0) return fail(`lockdown failed with errno ${-locked}`);
  } catch (e) {
    return fail(e instanceof Error ? e.message : String(e));
  }
  tube.send(new MessageWriter(NOTICE.READY).done());

  const result = (w: MessageWriter): void => tube.send(w.done());
  wait.add(TUBE_FD, () => {
    const m = tube.receive(0);
    if (m.kind === "closed") process.exit(0);
    if (m.kind !== "message") return;
    for (const fd of m.fds) sys.close(fd);
    const r = new MessageReader(m.bytes);
    const out = new MessageWriter(NOTICE.RESULT);
    switch (r.kind) {
      case REQUEST.CONFIG_READ: {
        const offset = r.u16();
        const length = r.u8();
        return result(out.u32(pci.readConfig(offset, [1, 2, 4].includes(length) ? length : 4)));
      }
      case REQUEST.CONFIG_WRITE: {
        const offset = r.u16();
        const length = r.u8();
        if ([1, 2, 4].includes(length)) pci.writeConfig(offset, length, r.u32());
        return result(out);
      }
      case REQUEST.BAR_READ: {
        const bar = r.u8();
        const offset = r.u32();
        const data = new Uint8Array(Math.min(8, r.u8()));
        pci.readBar(bar, offset, data);
        return result(out.bytes(data));
      }
      case REQUEST.BAR_WRITE: {
        const bar = r.u8();
        const offset = r.u32();
        const length = Math.min(8, r.u8());
        pci.writeBar(bar, offset, r.rest().subarray(0, length));
        return result(out);
      }
      case REQUEST.INPUT:
        return result(out.u32(device instanceof Console ? device.queueInput(r.rest()) : 0));
      case REQUEST.BALLOON_TARGET:
        if (device instanceof Balloon) device.setTarget(r.u32());
        return result(out);
      case REQUEST.BALLOON_STATS: {
        if (!(device instanceof Balloon)) return result(out);
        const json = JSON.stringify({ target: device.targetPages, actual: device.actualPages, stats: device.stats });
        device.requestStats();
        return result(out.text(json));
      }
      case REQUEST.DISK_RESIZE: {
        if (!(device instanceof Block)) return result(out.text("not a disk"));
        const problem = device.disk.resize(r.f64());
        if (!problem) {
          device.refreshCapacity();
          pci.notifyConfigChanged();
        }
        return result(out.text(problem ?? ""));
      }
      case REQUEST.FLUSH:
        return result(out.u8(device instanceof Block && !device.disk.flush() ? 1 : 0));
      default:
        return result(out);
    }
  });
  for (;;) for (const { token } of wait.wait(-1)) token();
}

function makeDevice(setup: DeviceSetup, memory: GuestMemory): VirtioDevice {
  switch (setup.kind) {
    case "rng":
      return new Rng();
    case "console":
      return new Console(new FdOutput(DEVICE_FD, true));
    case "net":
      return new Net(Tap.fromFd(DEVICE_FD), parseMac(setup.net!.mac)!);
    case "balloon":
      return new Balloon(memfdReleaser(memory, (fd, offset, length) => sys.fallocate(fd, FALLOC_PUNCH_HOLE_KEEP_SIZE, offset, length) === 0));
    case "block": {
      const file = DiskFile.fromFd(DEVICE_FD, setup.block!.readOnly);
      const magic = new Uint8Array(4);
      const image = file.size >= 4 && file.preadExact(magic, 0) && isQcow2(magic) ? Qcow2Image.open(file, "") : file;
      return new Block(image, setup.block!.id, setup.label);
    }
  }
}
