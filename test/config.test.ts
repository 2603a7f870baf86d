import { describe, expect, test } from "bun:test";
import { kernelCmdline, parseByteSize, parseRunConfig, parseSerial, parseSharedDir, parseSize, parseVhostUser, virtioDeviceSpecs } from "../src/config.ts";

const MIB = 1024 * 1024;

describe("parseSize", () => {
  test("a bare number is MiB; K, M, G and T suffixes scale", () => {
    expect([parseSize("512"), parseSize("512M"), parseSize("2G"), parseSize("64k"), parseSize("1GiB")]).toEqual([512 * MIB, 512 * MIB, 2048 * MIB, 65536, 1024 * MIB]);
  });

  test("garbage is not a size", () => {
    expect([parseSize("lots"), parseSize("-1"), parseSize("1.5G"), parseSize("")]).toEqual([null, null, null, null]);
  });

  test("a size too large to count in bytes is Infinity, so --mem says what its limit is instead of 'expected a size'", () => {
    expect([parseSize("99999T"), parseByteSize("99999T"), parseByteSize("9007199254740991")]).toEqual([Infinity, Infinity, 9007199254740991]);
    expect(() => parseRunConfig({ mem: "99999T" })).toThrow(/--mem: must be at most 1T/);
  });
});

describe("parseSerial", () => {
  test("reads crosvm's key=value syntax", () => {
    expect(parseSerial("type=file,num=2,path=/tmp/x,console=true")).toEqual({ type: "file", hardware: "serial", num: 2, path: "/tmp/x", console: true, stdin: false });
  });

  test("names an unknown key and lists the accepted ones", () => {
    expect(() => parseSerial("type=stdout,num=1,speed=9600")).toThrow('unknown key "speed" (accepted: type, hardware, num, path, console, stdin)');
  });

  test("rejects port numbers outside 1-4", () => {
    expect(() => parseSerial("type=stdout,num=5")).toThrow(/port number 1-4/);
  });

  test("type=file needs a path", () => {
    expect(() => parseSerial("type=file,num=1")).toThrow(/needs path=PATH/);
  });

  test("rejects unknown types", () => {
    expect(() => parseSerial("type=syslog2,num=1")).toThrow(/expected one of stdout, file, sink/);
  });
});

describe("parseRunConfig", () => {
  test("defaults follow crosvm: 256 MiB, 1 CPU, COM1 on stdout as the console", () => {
    expect(parseRunConfig({})).toEqual({
      kernel: null, initrd: null, memorySize: 256 * MIB, cpus: 1, params: [],
      serials: [{ type: "stdout", hardware: "serial", num: 1, console: true, stdin: true }], logLevel: "warn", rng: true, balloon: true, blocks: [], nets: [], vhostUser: [], sharedDirs: [], virtiofsd: null, vsock: null, cid: null, socket: null, sandbox: true, seccompPolicyDir: null, seccompLogFailures: false,
    });
  });

  test("--mem 0 is refused with the flag named", () => {
    expect(() => parseRunConfig({ mem: "0" })).toThrow('--mem: must be at least 16 MiB (got "0")');
    expect(() => parseRunConfig({ mem: "1x" })).toThrow('--mem: expected a size such as 512, 512M or 2G (got "1x")');
  });

  test("--mem with garbage is refused", () => {
    expect(() => parseRunConfig({ mem: "lots" })).toThrow(/--mem: expected a size/);
  });

  test("--cpus must be a whole number in range", () => {
    expect(() => parseRunConfig({ cpus: "0" })).toThrow(/--cpus: expected at least 1 CPU/);
    expect(() => parseRunConfig({ cpus: "1.5" })).toThrow(/--cpus: expected a whole number/);
    expect(() => parseRunConfig({ cpus: "300" })).toThrow(/--cpus: expected at most 254/);
  });

  test("the same serial port twice is refused", () => {
    expect(() => parseRunConfig({ serial: ["type=sink,num=1", "type=stdout,num=1"] })).toThrow(/num=1 is configured twice/);
  });
});

describe("disk flags", () => {
  test("--block reads crosvm's syntax, with a bare path first", () => {
    expect(parseRunConfig({ block: ["disk.img,ro=true,id=vol1"] }).blocks).toEqual([{ path: "disk.img", ro: true, id: "vol1", root: false, o_direct: false, backing_files: "dir" }]);
  });

  test("--block backing_files= says which backing files a qcow2 image may name: dir (the default), any or off", () => {
    expect(parseRunConfig({ block: ["disk.qcow2,backing_files=any"] }).blocks[0]!.backing_files).toBe("any");
    expect(() => parseRunConfig({ block: ["disk.qcow2,backing_files=yes"] })).toThrow(/backing_files.*expected one of dir, any, off/);
  });

  test("--block o_direct=true asks for O_DIRECT, and only true or false is taken", () => {
    expect(parseRunConfig({ block: ["path=disk.img,o_direct=true"] }).blocks[0]!.o_direct).toBe(true);
    expect(() => parseRunConfig({ block: ["path=disk.img,o_direct=yes"] })).toThrow(/o_direct.*expected true or false|expected true or false/);
  });

  test("--block num-queues=N sets the request queues (1-16); without it a disk gets one per vCPU up to 16", () => {
    const specs = (flags: Parameters<typeof parseRunConfig>[0]) =>
      virtioDeviceSpecs(parseRunConfig(flags), () => "52:54:00:00:00:01").flatMap((s) => (s.kind === "block" ? [s.queues] : []));
    expect(specs({ block: ["path=a.img,num-queues=4", "b.img"] })).toEqual([4, 1]);
    expect(specs({ block: ["a.img"], cpus: 6 })).toEqual([6]);
    expect(specs({ block: ["a.img"], cpus: 64 })).toEqual([16]);
    for (const bad of ["0", "17", "two", "1.5", ""]) {
      expect(() => parseRunConfig({ block: [`path=a.img,num-queues=${bad}`] })).toThrow(/num-queues.*expected a number of queues from 1 to 16|expected a number of queues from 1 to 16/);
    }
  });

  test("-d/--disk is read-only and --rwdisk read-write", () => {
    expect(parseRunConfig({ disk: ["a.img"], rwdisk: ["b.img"] }).blocks.map((b) => [b.path, b.ro])).toEqual([["a.img", true], ["b.img", false]]);
  });

  test("-r/--root comes first and adds root=/dev/vda ro to the command line", () => {
    const config = parseRunConfig({ rwdisk: ["data.img"], root: "rootfs.img" });
    expect(config.blocks.map((b) => b.path)).toEqual(["rootfs.img", "data.img"]);
    expect(kernelCmdline(config)).toBe("root=/dev/vda ro console=ttyS0");
  });

  test("--rwroot mounts read-write", () => {
    expect(kernelCmdline(parseRunConfig({ rwroot: "rootfs.img" }))).toBe("root=/dev/vda rw console=ttyS0");
  });

  test("two root disks are refused", () => {
    expect(() => parseRunConfig({ root: "a.img", rwroot: "b.img" })).toThrow(/only one disk can be the root/);
  });

  test("an id longer than virtio-blk's 20 bytes is refused", () => {
    expect(() => parseRunConfig({ block: ["path=a.img,id=" + "x".repeat(21)] })).toThrow(/id is at most 20 characters/);
  });

  test("a block without a path is refused", () => {
    expect(() => parseRunConfig({ block: ["ro=true"] })).toThrow(/path=PATH is required/);
  });
});

describe("network flags", () => {
  test("--net takes a tap name or an fd, and an optional MAC", () => {
    expect(parseRunConfig({ net: ["tap-name=tap0,mac=52:54:00:12:34:56", "tap-fd=5"] }).nets).toEqual([
      { kind: "tap-name", name: "tap0", mac: "52:54:00:12:34:56" },
      { kind: "tap-fd", fd: 5, mac: undefined },
    ]);
  });

  test("--net needs exactly one of tap-name and tap-fd", () => {
    expect(() => parseRunConfig({ net: ["tap-name=a,tap-fd=4"] })).toThrow(/exactly one of tap-name=NAME or tap-fd=N/);
    expect(() => parseRunConfig({ net: ["mac=52:54:00:12:34:56"] })).toThrow(/exactly one/);
  });

  test("a malformed MAC is refused", () => {
    expect(() => parseRunConfig({ net: ["tap-name=t,mac=52:54:00"] })).toThrow(/expected a MAC address/);
  });

  test("--host_ip, --netmask and --mac create a tap together", () => {
    expect(parseRunConfig({ hostIp: "192.168.10.1", netmask: "255.255.255.0", mac: "52:54:00:00:00:01" }).nets).toEqual([
      { kind: "create", hostIp: "192.168.10.1", netmask: "255.255.255.0", mac: "52:54:00:00:00:01" },
    ]);
    expect(() => parseRunConfig({ hostIp: "192.168.10.1" })).toThrow(/go together/);
    expect(() => parseRunConfig({ hostIp: "300.1.1.1", netmask: "255.0.0.0", mac: "52:54:00:00:00:01" })).toThrow(/IPv4/);
  });
});

describe("other run flags", () => {
  test("--no-rng and --no-balloon leave the devices out", () => {
    expect(parseRunConfig({ rng: false, balloon: false })).toMatchObject({ rng: false, balloon: false });
  });

  test("--socket must fit a Unix socket address", () => {
    expect(parseRunConfig({ socket: "/tmp/vm.sock" }).socket).toBe("/tmp/vm.sock");
    expect(() => parseRunConfig({ socket: "/" + "x".repeat(200) })).toThrow(/--socket: expected a path of 1-107 bytes/);
  });

  test("--log-level accepts the four levels", () => {
    expect(() => parseRunConfig({ logLevel: "loud" })).toThrow(/--log-level: expected one of error, warn, info, debug/);
  });

  test("sizes for the control subcommands are bytes unless they carry a unit", () => {
    expect([parseByteSize("4096"), parseByteSize("8M"), parseByteSize("1G"), parseByteSize("x")]).toEqual([4096, 8 * MIB, 1024 * MIB, null]);
  });
});

describe("kernelCmdline", () => {
  test("joins -p values and adds the console port", () => {
    expect(kernelCmdline(parseRunConfig({ params: ["quiet", "root=/dev/vda"] }))).toBe("quiet root=/dev/vda console=ttyS0");
  });

  test("a virtio-console console port becomes hvc0", () => {
    expect(kernelCmdline(parseRunConfig({ serial: ["type=stdout,hardware=virtio-console,num=1,console=true"] }))).toBe("console=hvc0");
  });

  test("keeps a console the user chose", () => {
    expect(kernelCmdline(parseRunConfig({ params: ["console=hvc0"] }))).toBe("console=hvc0");
  });
});

describe("vhost-user and shared-directory flags", () => {
  test("--vhost-user takes a type by name or virtio device id, a socket, and reconnect", () => {
    expect(parseVhostUser("block,socket=/run/blk.sock")).toEqual({ type: "block", socket: "/run/blk.sock", localConfig: undefined, reconnect: false });
    expect(parseVhostUser("4,socket=/run/rng.sock,reconnect=true")).toMatchObject({ type: "rng", reconnect: true });
  });

  test("an unknown type, a missing socket or a bad reconnect value is refused with the flag named", () => {
    expect(() => parseVhostUser("gpu,socket=/s")).toThrow(/--vhost-user gpu,socket=\/s: unknown device type "gpu"/);
    expect(() => parseVhostUser("block")).toThrow(/socket=PATH is required/);
    expect(() => parseVhostUser("block,socket=/s,reconnect=yes")).toThrow(/reconnect= takes true or false/);
    expect(() => parseVhostUser(`block,socket=/${"x".repeat(120)}`)).toThrow(/longer than/);
  });

  test("fs needs a tag of at most 36 bytes, which becomes its configuration; other types take none", () => {
    const fs = parseVhostUser("fs,socket=/s,tag=shared");
    expect(new TextDecoder().decode(fs.localConfig!.subarray(0, 6))).toBe("shared");
    expect(fs.localConfig![6]).toBe(0);
    expect(() => parseVhostUser("fs,socket=/s")).toThrow(/fs needs tag=TAG/);
    expect(() => parseVhostUser(`fs,socket=/s,tag=${"t".repeat(37)}`)).toThrow(/fs needs tag=TAG/);
    expect(() => parseVhostUser("rng,socket=/s,tag=x")).toThrow(/tag= is only for fs/);
  });

  test("--shared-dir is PATH:TAG", () => {
    expect(parseSharedDir("/srv/data:data")).toEqual({ path: "/srv/data", tag: "data" });
    expect(() => parseSharedDir("/srv/data")).toThrow(/--shared-dir/);
  });
});

describe("vsock flags", () => {
  test("--vsock takes a CID and a Unix socket path; --cid a CID for the kernel's vhost-vsock", () => {
    expect(parseRunConfig({ vsock: "cid=3,uds=/run/v.sock" }).vsock).toEqual({ cid: 3, uds: "/run/v.sock" });
    expect(parseRunConfig({ cid: "42" }).cid).toBe(42);
    expect(parseRunConfig({ cid: 4294967294 }).cid).toBe(4294967294);
  });

  test("reserved and out-of-range CIDs, a missing path and both flags together are refused", () => {
    expect(() => parseRunConfig({ vsock: "cid=2,uds=/s" })).toThrow(/--vsock cid=2,uds=\/s: cid: expected a CID from 3 to 4294967294 \(0-2 are reserved\)/);
    expect(() => parseRunConfig({ vsock: "cid=3" })).toThrow(/uds=PATH is required/);
    expect(() => parseRunConfig({ vsock: "cid=x,uds=/s" })).toThrow(/expected a CID/);
    expect(() => parseRunConfig({ cid: "4294967295" })).toThrow(/--cid 4294967295: expected a CID from 3 to 4294967294/);
    expect(() => parseRunConfig({ vsock: `cid=3,uds=/${"p".repeat(100)}` })).toThrow(/at most 96 bytes/);
    expect(() => parseRunConfig({ vsock: "cid=3,uds=/s", cid: "4" })).toThrow(/give one of them/);
    expect(() => parseRunConfig({ vsock: "cid=3,uds=/s,port=1" })).toThrow(/--vsock/);
  });
});
