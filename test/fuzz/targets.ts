// targets.ts - tsvm's fuzz targets, after crosvm's: every parser and device that untrusted input
// reaches (the guest, a device process, a vhost-user peer, the control socket, image and kernel files).
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { socket, sys } from "../../ffi/mod.ts";
import { ByteWriter } from "../../src/base/codec.ts";
import { EventFd } from "../../src/base/event_fd.ts";
import { KernelLoaderError } from "../../src/arch/x86_64/kernel_image.ts";
import { loadKernel } from "../../src/arch/x86_64/kernel_loader.ts";
import { createQcow2, openDiskImage, Qcow2Error } from "../../src/disk/qcow2.ts";
import { decodeTubeMessage } from "../../src/devices/sandbox/messages.ts";
import { VhostUserBackend } from "../../src/devices/vhost_user/backend.ts";
import { DEVICE_TYPES } from "../../src/devices/vhost_user/device_types.ts";
import { VhostUserFrontend } from "../../src/devices/vhost_user/frontend.ts";
import { encodeMemoryTable, encodeU64, encodeVringAddress, encodeVringState } from "../../src/devices/vhost_user/protocol.ts";
import { Balloon } from "../../src/devices/virtio/balloon.ts";
import { Block } from "../../src/devices/virtio/block/block.ts";
import { Console } from "../../src/devices/virtio/console.ts";
import { Rng } from "../../src/devices/virtio/rng.ts";
import type { VirtioDevice } from "../../src/devices/virtio/virtio_device.ts";
import { StreamSocket } from "../../src/base/stream_socket.ts";
import { HOST_CID, VSOCK_OP } from "../../src/devices/virtio/vsock/packet.ts";
import { MAX_CONNECTIONS, Vsock } from "../../src/devices/virtio/vsock/vsock.ts";
import { FakeHost, GUEST_CID, VsockDriver } from "../support/vsock_driver.ts";
import { DiskFile } from "../../src/disk/disk_file.ts";
import { GuestMemory, guestAddress as ga } from "../../src/memory/mod.ts";
import { EMBEDDED_POLICIES } from "../../src/sandbox/policies.ts";
import { parsePolicy, PolicyError } from "../../src/sandbox/policy.ts";
import { compilePolicy } from "../../src/sandbox/bpf.ts";
import { decodeRequest, decodeResponse } from "../../src/vm_control/messages.ts";
import { craftBzImage } from "../support/images.ts";
import { VirtioPciDriver } from "../support/virtio_pci_driver.ts";
import { VirtqueueDriver, BUFFERS } from "../support/virtqueue_driver.ts";
import { TestFrontend, TestLoop } from "../support/vhost_user_driver.ts";
import type { FuzzTarget, Random } from "./harness.ts";

const ROOT = resolve(import.meta.dir, "../..");
const VERSION_1 = 1n << 32n;
const entropy = (b: Uint8Array): number => {
  b.fill(0x33);
  return b.byteLength;
};
const scratchDir = (): string => mkdtempSync(join(tmpdir(), "tsvm-fuzz-"));

/** The virtqueue: random descriptor tables and avail rings straight at Queue.pop. */
const queue: FuzzTarget = {
  name: "virtqueue",
  setUp() {
    const d = new VirtqueueDriver(16);
    const ram = d.memory.regions[0]!.bytes;
    return {
      run(r) {
        for (let i = 0; i < 8; i++) ram[0x1000 + r.below(256)] = r.u32() & 0xff;
        d.writeDesc(r.below(16), { addr: r.oneIn(2) ? BUFFERS + r.below(0x1000) : r.u32() * 4096, len: r.below(512), flags: r.u32() & 7, next: r.below(20) });
        if (r.oneIn(2)) d.publish(r.below(18));
        if (r.oneIn(64)) d.setAvailIdx(r.u32());
        const got = d.queue.pop();
        if (got?.kind === "chain") {
          const total = [...got.chain.readable, ...got.chain.writable].reduce((n, b) => n + b.byteLength, 0);
          if (total !== got.chain.readableLength + got.chain.writableLength) throw new Error("chain views do not add up to its lengths");
          for (const b of [...got.chain.readable, ...got.chain.writable]) if (b.buffer !== ram.buffer) throw new Error("a view outside guest RAM");
          d.queue.addUsed(got.chain.head, 0);
        }
        if (got?.kind === "fatal") {
          d.queue.reset();
          Object.assign(d.queue.config, { size: 16, desc: 0x1000n, driver: 0x2000n, device: 0x3000n, ready: true });
          d.queue.activate(d.memory, { eventIdx: r.oneIn(2), indirect: true });
          d.setAvailIdx(0);
        }
      },
      tearDown() {},
    };
  },
};

/** A whole device behind VirtioPciDevice: configuration space, BAR accesses (the PCI_CFG window too) and random rings. */
function pciDevice(name: string, make: () => { device: VirtioDevice; close(): void }): FuzzTarget {
  return {
    name,
    setUp() {
      const memory = GuestMemory.create([{ base: 0, size: 1 << 20 }]);
      const ram = memory.regions[0]!.bytes;
      const made = make();
      const d = new VirtioPciDriver(made.device, memory);
      const start = (r: Random): void => {
        d.negotiate(VERSION_1 | (1n << 28n) | (r.oneIn(2) ? 1n << 29n : 0n));
        for (let q = 0; q < made.device.queueMaxSizes.length; q++) d.setupQueue(q, 16, 0x1000 + q * 0x4000, 0x2000 + q * 0x4000, 0x3000 + q * 0x4000);
        d.driverOk();
      };
      return {
        run(r) {
          switch (r.below(6)) {
            case 0: d.pci.readConfig(r.below(256), r.pick([1, 2, 4])); break;
            case 1: d.pci.writeConfig(r.below(256), r.pick([1, 2, 4]), r.interesting32()); break;
            case 2: d.pci.readBar(r.below(2), r.below(0x8400), new Uint8Array(r.pick([1, 2, 4, 8]))); break;
            case 3: d.pci.writeBar(r.below(2), r.below(0x8400), r.bytes(r.pick([1, 2, 4, 8]))); break;
            case 4: if (r.oneIn(8)) start(r); break;
            default: {
              // Scribble on a queue's rings and descriptors, then notify it.
              const q = r.below(made.device.queueMaxSizes.length);
              for (let i = 0; i < 6; i++) ram[0x1000 + q * 0x4000 + r.below(0x3000)] = r.u32() & 0xff;
              const slot = 0x1000 + q * 0x4000 + r.below(16) * 16;
              memory.writeU64(ga(slot), BigInt(r.oneIn(3) ? r.u32() * 65536 : 0x80000 + r.below(0x8000)));
              memory.writeU32(ga(slot + 8), r.below(0x2000));
              memory.writeU16(ga(0x2002 + q * 0x4000), (memory.readU16(ga(0x2002 + q * 0x4000)) + r.below(3)) & 0xffff);
              d.kick(q);
            }
          }
        },
        tearDown() {
          d.pci.close();
          made.close();
          memory.close();
        },
      };
    },
  };
}

/**
 * virtio-vsock's protocol: well-formed rings carrying random headers and payloads (ops, ports, CIDs,
 * lengths, credit), against host programs that write, close and connect at random.
 */
const vsockPackets: FuzzTarget = {
  name: "virtio-vsock packets and host sockets",
  setUp() {
    const d = new VsockDriver();
    d.host.listening.add(5000);
    d.host.listening.add(5001);
    const programs: number[] = [];
    const ports = [1, 2, 1234, 5000, 5001, 0xffffffff];
    return {
      run(r) {
        for (const list of d.host.accepted.values()) programs.push(...list.splice(0));
        switch (r.below(5)) {
          case 0: {
            // A host program asks for a guest port.
            const [device, program] = socket.socketPair(socket.SOCK_STREAM);
            programs.push(program);
            d.device.acceptHost(StreamSocket.adopt(device), r.pick(ports));
            break;
          }
          case 1: {
            // A host program writes, or goes away.
            const fd = programs.length > 0 ? programs[r.below(programs.length)]! : -1;
            if (fd < 0) break;
            if (r.oneIn(3)) {
              sys.close(fd);
              programs.splice(programs.indexOf(fd), 1);
            } else sys.writeRaw(fd, r.bytes(r.below(3000)));
            break;
          }
          default: {
            const payload = r.bytes(r.oneIn(8) ? r.below(4000) : r.below(64));
            const hostPort = d.device.stats().connections > 0 && r.oneIn(2) ? (1 << 30) + r.below(4) : r.pick(ports);
            d.send({
              srcCid: r.oneIn(16) ? r.u32() : GUEST_CID, dstCid: r.oneIn(16) ? r.u32() : HOST_CID, srcPort: r.pick(ports), dstPort: hostPort,
              op: r.oneIn(10) ? r.below(10) : r.pick([VSOCK_OP.REQUEST, VSOCK_OP.RESPONSE, VSOCK_OP.RW, VSOCK_OP.RW, VSOCK_OP.CREDIT_UPDATE, VSOCK_OP.SHUTDOWN, VSOCK_OP.RST]),
              type: r.oneIn(16) ? r.below(4) : 1, flags: r.below(4), bufAlloc: r.interesting32(), fwdCnt: r.interesting32(),
              len: r.oneIn(10) ? r.interesting32() : payload.byteLength,
            }, payload, r.oneIn(16) ? { chainLength: r.below(60) } : {});
          }
        }
        // Drain writes the device made to host programs (they would block the device's sends otherwise).
        for (const fd of programs) while (socket.poll(fd, socket.POLLIN, 0) > 0 && sys.readRaw(fd, new Uint8Array(65536)) > 0) ;
        d.receive();
        if (d.device.stats().connections > MAX_CONNECTIONS) throw new Error("more connections than the device allows");
        while (programs.length > 96) sys.close(programs.shift()!);
      },
      tearDown() {
        for (const fd of programs) sys.close(fd);
        d.close();
      },
    };
  },
};

/** The vhost-user back-end: random messages, fds of every kind, from a front-end that may hang up. */
const vhostUserBackend: FuzzTarget = {
  name: "vhost-user back-end",
  setUp() {
    const loop = new TestLoop();
    let frontend = new TestFrontend();
    const backend = new VhostUserBackend(new Rng(entropy), loop, { disconnected: () => {}, log: () => {} });
    backend.serve(frontend.backendFd);
    const host = BigInt(frontend.memory.regions[0]!.hostAddress);
    const fdOfKind = (r: Random): number => {
      switch (r.below(3)) {
        case 0: return new EventFd().fd;
        case 1: {
          const [a, b] = sys.pipe();
          sys.close(b);
          return a;
        }
        default: return sys.dup(frontend.memory.regions[0]!.fd);
      }
    };
    return {
      run(r) {
        if (!backend.connected) {
          frontend.close();
          frontend = new TestFrontend();
          backend.serve(frontend.backendFd);
        }
        const request = r.oneIn(10) ? r.below(50) : r.pick([1, 2, 3, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 21, 24, 25, 34]);
        const index = r.below(3);
        const payload = r.pick([
          () => r.bytes(r.below(48)),
          () => encodeU64(r.oneIn(2) ? BigInt(index) : BigInt(r.u32()) | (BigInt(r.u32()) << 32n)),
          () => encodeVringState({ index, num: r.pick([0, 1, 8, 16, 6, 0xffff, r.u32()]) }),
          () => encodeVringAddress({ index, flags: r.below(2), descriptor: host + BigInt(r.below(1 << 21)), used: host + BigInt(r.below(1 << 21)), available: host + BigInt(r.below(1 << 21)), log: 0n }),
          () => encodeMemoryTable([{ guestAddress: BigInt(r.below(4) * 4096), size: BigInt(r.pick([4096, 1 << 20, 1 << 21])), userAddress: host, mmapOffset: BigInt(r.below(2) * 4096) }]),
        ])();
        const fds = Array.from({ length: r.oneIn(3) ? r.below(3) : 0 }, () => fdOfKind(r));
        if (r.oneIn(20)) frontend.sendRaw(r.bytes(r.below(40)), fds);
        else frontend.connection.send(request, r.oneIn(4) ? 1 << 3 : 0, payload, fds, 100);
        for (const fd of fds) sys.close(fd);
        loop.pump();
        // Drain replies so the socket never fills.
        while (frontend.connection.readMessage().ok && socket.waitReadable(frontend.connection.fd, 0) > 0) { /* replies */ }
      },
      tearDown() {
        frontend.close();
        backend.close();
        loop.wait.close();
      },
    };
  },
};

/** The VMM's side of a vhost-user socket: random answers from a back-end, pre-written into the socket. */
const vhostUserFrontend: FuzzTarget = {
  name: "vhost-user front-end",
  setUp() {
    const loop = new TestLoop();
    return {
      run(r) {
        const [ours, theirs] = socket.socketPair(socket.SOCK_STREAM);
        // A plausible first answer now and then, so cases get past GET_FEATURES.
        const answers = new ByteWriter();
        for (let i = 0; i < r.below(6); i++) {
          const request = r.oneIn(2) ? r.pick([1, 15, 17, 24, 3]) : r.below(40);
          const size = r.oneIn(8) ? r.interesting32() : r.pick([0, 8, 12, 8, 20]);
          answers.u32(request).u32(r.oneIn(4) ? r.u32() : 5).u32(size);
          answers.raw(r.oneIn(2) ? encodeU64(VERSION_1 | (1n << 30n) | BigInt(r.u32())) : r.bytes(Math.min(size, 64)));
        }
        const bytes = answers.done();
        socket.sendWithFds(theirs, bytes, bytes.byteLength, new Int32Array(0));
        const result = VhostUserFrontend.connect(ours, { label: "fuzz", type: DEVICE_TYPES.block, loop, timeoutMs: 5, onFailure: () => {} });
        if (result.ok) {
          const data = new Uint8Array(8);
          result.value.readConfig(r.below(60), data);
          result.value.close();
        }
        sys.close(theirs);
      },
      tearDown() {
        loop.wait.close();
      },
    };
  },
};

/** The device tube and the control socket: random and mutated messages at their decoders. */
const messages: FuzzTarget = {
  name: "device tube and control socket messages",
  setUp() {
    const valid = [
      Uint8Array.of(0x81), new ByteWriter().u8(0x82).str("why").done(), new ByteWriter().u8(0x83).u32(1).u8(3).done(),
      new ByteWriter().u8(0x83).u32(1).u8(0).u32(1).u32(2).u8(1).u32(1).str("free_memory").u64(5).done(),
      new ByteWriter().u32(0x4d565354).u16(1).u16(5).u32(0).u64(1024).done(),
    ];
    return {
      run(r) {
        const base = r.oneIn(3) ? r.bytes(r.below(64)) : r.pick(valid).slice();
        for (let i = 0; i < r.below(4); i++) if (base.byteLength > 0) base[r.below(base.byteLength)] = r.u32() & 0xff;
        const cut = base.subarray(0, r.oneIn(4) ? r.below(base.byteLength + 1) : base.byteLength);
        decodeTubeMessage(cut);
        decodeRequest(cut);
        decodeResponse(cut);
      },
      tearDown() {},
    };
  },
};

/** qcow2 images: mutations of a valid image with data, L2 tables and refcounts, then reads and writes. */
const qcow2: FuzzTarget = {
  name: "qcow2 images",
  expected: (e) => e instanceof Qcow2Error || (e instanceof Error && e.message.startsWith("failed to")),
  setUp() {
    const dir = scratchDir();
    const seed = join(dir, "seed.qcow2");
    createQcow2(seed, 8 << 20);
    const image = openDiskImage(seed, false, "qcow2");
    for (let i = 0; i < 8; i++) image.writeFrom([new Uint8Array(4096).fill(i + 1)], i * 1_000_000);
    image.close();
    const pristine = new Uint8Array(readFileSync(seed));
    const path = join(dir, "case.qcow2");
    return {
      run(r) {
        const bytes = pristine.slice();
        for (let i = 0; i < 1 + r.below(6); i++) {
          // Most mutations hit the metadata: the header, the refcount table and block, the L1 table, L2 tables.
          const at = r.oneIn(4) ? r.below(bytes.byteLength) : r.pick([0, 65536, 131072, 196608, 262144]) + r.below(512);
          bytes[at % bytes.byteLength] = r.oneIn(2) ? r.u32() & 0xff : 0xff;
        }
        writeFileSync(path, bytes);
        const disk = openDiskImage(path, false, r.oneIn(2) ? "qcow2" : null);
        try {
          for (let i = 0; i < 6; i++) {
            const offset = r.below(8 << 20);
            const buf = new Uint8Array(1 + r.below(8192));
            if (r.oneIn(2)) disk.readInto([buf], offset);
            else disk.writeFrom([buf], offset);
          }
        } finally {
          disk.close();
        }
      },
      tearDown() {
        rmSync(dir, { recursive: true });
      },
    };
  },
};

/** The kernel loaders: mutations of the test guest's ELF and of a crafted bzImage. */
const kernelLoaders: FuzzTarget = {
  name: "ELF and bzImage loaders",
  expected: (e) => e instanceof KernelLoaderError,
  setUp() {
    const elf = new Uint8Array(readFileSync(join(ROOT, "build/guest/tsvm-guest.elf")));
    const bz = craftBzImage();
    const memory = GuestMemory.fromBuffers([{ base: 0, bytes: new Uint8Array(32 << 20) }]);
    return {
      run(r) {
        const image = (r.oneIn(2) ? elf : bz).slice();
        for (let i = 0; i < 1 + r.below(8); i++) {
          const at = r.oneIn(3) ? r.below(image.byteLength) : r.below(Math.min(image.byteLength, 0x300));
          image[at] = r.oneIn(3) ? r.pick([0, 0xff, 0x7f, 0x80]) : r.u32() & 0xff;
        }
        loadKernel(memory, image.subarray(0, r.oneIn(8) ? r.below(image.byteLength) : image.byteLength), 32 << 20);
      },
      tearDown() {},
    };
  },
};

/** The seccomp policy parser and compiler: mutated policy files. */
const policies: FuzzTarget = {
  name: "seccomp policy parser",
  expected: (e) => e instanceof PolicyError,
  setUp() {
    const names = Object.keys(EMBEDDED_POLICIES);
    const tokens = ["@include ", "arg0", " == ", " || ", " && ", "return ", "~", "|", "&", " in ", ":", "1", "0x", "PROT_EXEC", "\n", "#", "read", "  ", "99999999999999999999", "-1", "arg9"];
    return {
      run(r) {
        const files: Record<string, string> = { ...EMBEDDED_POLICIES };
        const name = r.pick(names);
        let text = files[name]!;
        for (let i = 0; i < 1 + r.below(4); i++) {
          const at = r.below(text.length + 1);
          text = r.oneIn(2) ? text.slice(0, at) + r.pick(tokens) + text.slice(at) : text.slice(0, at) + text.slice(at + r.below(8));
        }
        files[name] = text;
        compilePolicy(parsePolicy(name, (n) => files[n] ?? null));
      },
      tearDown() {},
    };
  },
};

/** Every target, in the order a campaign runs them. */
export const FUZZ_TARGETS: readonly FuzzTarget[] = [
  queue,
  pciDevice("virtio-rng through VirtioPciDevice", () => ({ device: new Rng(entropy), close: () => {} })),
  pciDevice("virtio-blk through VirtioPciDevice", () => {
    const dir = scratchDir();
    writeFileSync(join(dir, "d.img"), new Uint8Array(1 << 20));
    const disk = DiskFile.open(join(dir, "d.img"), false);
    return {
      device: new Block(disk, "fuzz"),
      close: () => {
        disk.close();
        rmSync(dir, { recursive: true });
      },
    };
  }),
  pciDevice("virtio-console through VirtioPciDevice", () => ({ device: new Console(null), close: () => {} })),
  pciDevice("virtio-balloon through VirtioPciDevice", () => ({ device: new Balloon(() => true), close: () => {} })),
  pciDevice("virtio-vsock through VirtioPciDevice", () => ({ device: new Vsock(GUEST_CID, new FakeHost()), close: () => {} })),
  vsockPackets,
  vhostUserBackend,
  vhostUserFrontend,
  messages,
  qcow2,
  kernelLoaders,
  policies,
];
