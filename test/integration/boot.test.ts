// Boots the test guest under real KVM through the tsvm command line.
import { describe, expect, test } from "bun:test";
import { mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { craftBzImage, craftElf } from "../support/images.ts";
import { GUEST_ELF, HAS_KVM, runTsvm, tempDir, TsvmProcess, TIME_SCALE } from "../support/tsvm.ts";

const TIMEOUT = 60_000 * TIME_SCALE;

describe.skipIf(!HAS_KVM)("booting the test guest", () => {
  test("the built-in guest passes its checks on 1 vCPU and resets to exit 0", async () => {
    const r = await runTsvm(["run"]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(r.stdout).toContain("booted by the Linux 64-bit boot protocol");
    for (const check of ["zero-page", "e820", "serial", "cmos", "i8042", "mptable", "acpi", "pci", "virtio-rng", "virtio-balloon"]) {
      expect(r.stdout).toContain(`ok   ${check}:`);
    }
    expect(r.stdout).toMatch(/tsvm-guest: \d+ passed, 0 failed/);
  }, TIMEOUT);

  test("an explicit ELF with -c 2 -m 256 -p, run from /, sees 2 CPUs, its command line and its RAM", async () => {
    const r = await runTsvm(["run", "-c", "2", "-m", "256", "-p", "tsvm.marker=xyz", GUEST_ELF], { cwd: "/" });
    expect(r.stdout).toContain('cmdline "tsvm.marker=xyz console=ttyS0"');
    expect(r.stdout).toContain("mptable cpus 2");
    expect(r.stdout).toContain("smp online 2 of 2");
    expect(r.stdout).toContain(`e820 ram ${256 * 1024 - 385} KiB`); // all but the 385 KiB from the EBDA to 1 MiB
    expect(r.stdout).toContain("acpi madt cpus 2");
    expect(r.stdout).toContain("ok   smp:");
    expect(r.stdout).toMatch(/tsvm-guest: \d+ passed, 0 failed/);
    expect(r.code).toBe(0);
  }, TIMEOUT);

  test("with PCI configuration address writes coalesced by KVM the guest enumerates and configures PCI (2 vCPUs: one ring per VM)", async () => {
    // Every configuration access of the guest's PCI and virtio checks follows an address write that
    // did not exit: a wrong or late latch shows as a failed check.
    const r = await runTsvm(["run", "-c", "2", "--log-level", "debug"]);
    expect(r.stderr).toMatch(/PCI configuration address writes are coalesced by KVM|KVM cannot coalesce port writes/);
    for (const check of ["pci", "virtio-rng", "virtio-balloon", "smp"]) expect(r.stdout).toContain(`ok   ${check}:`);
    expect(r.stdout).toMatch(/tsvm-guest: \d+ passed, 0 failed/);
    expect(r.code).toBe(0);
  }, TIMEOUT);

  test("--no-rng leaves the rng device out", async () => {
    const r = await runTsvm(["run", "--no-rng"]);
    expect(r.stdout).toContain("FAIL virtio-rng: device not found");
    expect(r.stdout).toContain("ok   pci:");
  }, TIMEOUT);

  test("--config supplies options and command-line flags override them", async () => {
    const dir = tempDir();
    const path = join(dir, "vm.json");
    writeFileSync(path, JSON.stringify({ cpus: 2, params: ["tsvm.marker=fromfile"] }));
    const fromFile = await runTsvm(["run", "--config", path]);
    expect(fromFile.stdout).toContain('cmdline "tsvm.marker=fromfile console=ttyS0"');
    expect(fromFile.stdout).toContain("smp online 2 of 2");
    const overridden = await runTsvm(["run", "--config", path, "-c", "1", "-p", "tsvm.marker=flag"]);
    expect(overridden.stdout).toContain('cmdline "tsvm.marker=flag console=ttyS0"');
    expect(overridden.stdout).toContain("mptable cpus 1");
  }, TIMEOUT);

  test("four vCPUs all answer INIT/SIPI, and the APs' port exits are served", async () => {
    const r = await runTsvm(["run", "-c", "4"]);
    expect(r.stdout).toContain("smp online 4 of 4, host bridge id read by 3");
    expect(r.stdout).toContain("ok   smp:");
    expect(r.code).toBe(0);
  }, TIMEOUT);

  test("memory above the 32-bit hole continues at 4 GiB", async () => {
    const r = await runTsvm(["run", "-m", "5G"]);
    expect(r.stdout).toContain("e820 0x100000000-0x170000000 RAM");
    expect(r.stdout).toContain("0 failed");
    expect(r.code).toBe(0);
  }, TIMEOUT);

  test("a FIFO nobody reads as a serial port's file is refused at once, naming the port: exit 2", async () => {
    const fifo = join(tempDir(), "com2");
    Bun.spawnSync(["mkfifo", fifo]);
    const r = await runTsvm(["run", "--serial", `type=file,num=2,path=${fifo}`, "-p", "tsvm.mode=exit"], { timeoutMs: 20_000 });
    expect(r.stderr).toMatch(/--serial num=2: failed to open .*com2: a FIFO that no program has open for reading \(ENXIO\)\n$/);
    expect([r.code, r.timedOut]).toEqual([2, false]);
  }, TIMEOUT);

  test("serial output goes to a file when asked, and nothing to stdout", async () => {
    const path = join(tempDir(), "com1.txt");
    const r = await runTsvm(["run", "--serial", `type=file,num=1,path=${path},console=true`]);
    expect(r.stdout).toBe("");
    expect(readFileSync(path, "utf8")).toMatch(/tsvm-guest: \d+ passed, 0 failed/);
    expect(r.code).toBe(0);
  }, TIMEOUT);

  test("a vCPU that stops is reported with its exit reason and registers, exit 1", async () => {
    const r = await runTsvm(["run", "-p", "tsvm.fault=triple"]);
    expect(r.stderr).toMatch(/vCPU 0 stopped: KVM_EXIT_(SHUTDOWN \(triple fault\)|INTERNAL_ERROR)/);
    expect(r.stderr).toMatch(/RIP=[0-9a-f]{16}/);
    // Intel's KVM reports the registers of the moment the guest triple-faulted (its page tables at
    // 0x9000); AMD's reinitializes the VMCB on a shutdown, so there they read as after a reset.
    const amd = /^vendor_id\s*:\s*AuthenticAMD/m.test(readFileSync("/proc/cpuinfo", "utf8"));
    expect(r.stderr).toMatch(amd ? /CR0=[0-9a-f]+ CR2=[0-9a-f]+ CR3=[0-9a-f]{16}/ : /CR0=[0-9a-f]+ CR2=[0-9a-f]+ CR3=0000000000009000/);
    expect(r.stderr).toContain("EFER=");
    expect(r.code).toBe(1);
  }, TIMEOUT);

  test("SIGTERM stops a running VM promptly and cleanly; it holds one copy of the library", async () => {
    using vm = new TsvmProcess(["run", "-c", "3", "-p", "tsvm.mode=spin"]);
    await vm.waitForOutput(/\d+ passed, 0 failed/, 30_000);
    // The built executable copies libtsvm.so into one memfd (device processes map that one too).
    const libraryCopies = readdirSync(`/proc/${vm.child.pid}/fd`)
      .filter((fd) => readlinkSync(`/proc/${vm.child.pid}/fd/${fd}`).startsWith("/memfd:libtsvm.so")).length;
    expect(libraryCopies).toBe(process.env.TSVM_BIN ? 1 : 0);
    vm.child.kill("SIGTERM");
    expect(await vm.exit(5_000)).toBe(143);
    expect(vm.stderr).toContain("received SIGTERM");
  }, TIMEOUT);
});

// All of this is refused before /dev/kvm is opened, so it runs on machines without KVM too.
describe("bad input is refused with one line and exit 2", () => {
  const dir = tempDir();
  const fifo = join(dir, "fifo");
  Bun.spawnSync(["mkfifo", fifo]);
  const overlayOnFifo = (): string => {
    const overlay = join(dir, "on-fifo.qcow2");
    Bun.spawnSync(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", fifo, "-F", "raw", overlay, "1M"]);
    return overlay;
  };
  const file = (name: string, bytes: Uint8Array): string => {
    const p = join(dir, name);
    writeFileSync(p, bytes);
    return p;
  };
  const cases: [string, () => string[], RegExp][] = [
    ["a missing kernel", () => ["run", join(dir, "nope")], /nope/],
    ["a garbage kernel", () => ["run", file("garbage", new TextEncoder().encode("hello"))], /neither an ELF file nor a bzImage/],
    ["an ELF for another machine", () => ["run", file("arm.elf", craftElf({ entry: 0x200000, machine: 183, segments: [{ paddr: 0x200000, data: Uint8Array.of(0) }] }))], /not x86-64/],
    ["a truncated bzImage", () => ["run", file("short.bzimage", craftBzImage({ truncateBy: 1000 }))], /truncated/],
    ["--mem 0", () => ["run", "--mem", "0"], /--mem: must be at least/],
    ["a size for tsvm balloon too large to count", () => ["balloon", "99999T", "/tmp/no-such.sock"], /SIZE: 99999T is more bytes than tsvm counts \(at most 9007199254740991\)\n$/],
    ["an unknown --serial key", () => ["run", "--serial", "type=stdout,num=1,baud=9600"], /unknown key "baud"/],
    ["a command line that is too long", () => ["run", "-p", "x".repeat(4000)], /command line is 4014 bytes; the kernel accepts at most 2047/],
    ["an unknown flag", () => ["run", "--bogus"], /Unknown argument: bogus/],
    ["a misspelt flag, with a suggestion", () => ["run", "--cpu", "2"], /Unknown argument: cpu; did you mean --cpus\?/],
    ["a misspelt flag of tsvm devices, with a suggestion from its own flags", () => ["devices", "--rgn", "vhost=/tmp/x.sock"], /Unknown argument: rgn; did you mean --rng\?/],
    ["a flag of tsvm run given to tsvm devices, named as such", () => ["devices", "--config", "x.json"], /Unknown argument: config; --config is a flag of tsvm run, not of tsvm devices\n$/],
    ["a FIFO nobody reads as the virtio-console output", () => ["run", "--serial", `type=file,hardware=virtio-console,num=1,path=${fifo}`], /failed to open the virtio-console output: failed to open .*fifo: a FIFO that no program has open for reading \(ENXIO\)\n$/],
    ["a FIFO as the config file", () => ["run", "--config", fifo], /--config .*fifo: cannot read it \(not a regular file\)/],
    ["a config file with an unknown key", () => ["run", "--config", file("bad.json", new TextEncoder().encode('{"memory": "1G"}'))], /memory: unknown key/],
    ["a FIFO as a disk image", () => ["run", "--block", `path=${fifo}`], /failed to open disk image .*fifo: not a regular file or block device/],
    ["a qcow2 whose backing file is a FIFO", () => ["run", "--block", `path=${overlayOnFifo()}`], /fifo: not a regular file\n$/],
    ["a FIFO as the kernel", () => ["run", fifo], /failed to read kernel .*fifo: not a regular file\n$/],
    ["an initrd larger than the guest's memory, refused by its size", () => {
      const big = join(dir, "big.initrd");
      Bun.spawnSync(["truncate", "-s", "64M", big]);
      return ["run", "-m", "16", "--initrd", big];
    }, /failed to read initrd .*big\.initrd: 67108864 bytes do not fit in the guest's 16777216 bytes of memory \(--mem\)\n$/],
    ["a device as the initrd", () => ["run", "--initrd", "/dev/zero"], /failed to read initrd \/dev\/zero: not a regular file\n$/],
    ["a raw image read as qcow2", () => ["run", "--block", `path=${file("raw.img", new Uint8Array(1 << 20))},format=qcow2`], /raw\.img: not a qcow2 image/],
    ["an unknown disk format", () => ["run", "--block", "path=x.img,format=vmdk"], /format: expected one of raw, qcow2/],
  ];
  for (const [name, args, message] of cases) {
    test(name, async () => {
      const r = await runTsvm(args());
      expect(r.stderr).toMatch(message);
      expect(r.stderr.trim().split("\n").length).toBe(1);
      expect([r.code, r.stdout]).toEqual([2, ""]);
    }, TIMEOUT);
  }

  // yargs looks for its program's package.json from the program's folder up to /, and in a single
  // executable that folder is the working directory: every folder above it was listed, and a
  // package.json found there read, even a FIFO, which hung tsvm before it said anything.
  test("no file the user did not name is read: a FIFO named package.json above the working directory", async () => {
    const cwd = join(dir, "inside");
    mkdirSync(cwd);
    Bun.spawnSync(["mkfifo", join(dir, "package.json")]);
    const r = await runTsvm(["run", "--mem", "0"], { cwd, timeoutMs: 10_000 });
    expect(r.timedOut).toBe(false);
    expect([r.code, r.stdout]).toEqual([2, ""]);
    expect(r.stderr).toMatch(/--mem: must be at least/);
    expect((await runTsvm(["--help"], { cwd, timeoutMs: 10_000 })).code).toBe(0);
  }, TIMEOUT);
});
