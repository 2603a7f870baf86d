// Starts a real Debian kernel (scripts/fetch_linux.sh) under tsvm: a client nobody on the project wrote
// reads our zero page, e820 map and command line, and prints through our 8250.
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { HAS_KVM, runTsvm, tempDir, TIME_SCALE, TsvmProcess } from "../support/tsvm.ts";

const LINUX = resolve(import.meta.dir, "../../build/linux");
const VMLINUX = join(LINUX, "vmlinux");
const VMLINUZ = join(LINUX, "vmlinuz");
const haveLinux = existsSync(VMLINUX) && existsSync(VMLINUZ);
if (!haveLinux) console.warn(`tsvm tests: no Debian kernel in ${LINUX} (run scripts/fetch_linux.sh); Linux boot tests are skipped`);

/** What Linux prints for tsvm's e820 map of a 512 MiB guest. */
const E820_512M = [
  "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
  "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved",
  "BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable",
  "BIOS-e820: [mem 0x00000000fffbc000-0x00000000fffbffff] reserved",
];

const LAST_E820_LINE = /BIOS-e820: \[mem 0x00000000fffbc000-0x00000000fffbffff\] reserved/;

/** Boots `kernel` until `until` is printed; returns the console output, then stops the VM. */
async function earlyBoot(kernel: string, args: string[], until: RegExp, timeoutMs: number): Promise<string> {
  using vm = new TsvmProcess(["run", "-m", "512", ...args, kernel]);
  await vm.waitForOutput(until, timeoutMs);
  vm.child.kill("SIGTERM");
  expect(await vm.exit(5_000)).toBe(143);
  return vm.stdout.replaceAll("\r", "");
}

describe.skipIf(!HAS_KVM || !haveLinux)("a Debian 6.1 kernel under tsvm", () => {
  test("the ELF vmlinux prints its banner, our command line and e820 map, and finds 2 CPUs in our MADT", async () => {
    const args = ["-c", "2", "-p", "console=ttyS0 earlyprintk=ttyS0 tsvm.marker=elf"];
    const out = await earlyBoot(VMLINUX, args, /smpboot: Allowing \d+ CPUs, \d+ hotplug CPUs\r?\n/, 120_000);
    expect(out).toMatch(/Linux version 6\.1\.\d+/);
    expect(out).toContain("Command line: console=ttyS0 earlyprintk=ttyS0 tsvm.marker=elf\n");
    for (const line of E820_512M) expect(out).toContain(line);
    expect(out).toMatch(/ACPI: RSDP 0x00000000000E0000 000024 \(v02 TSVM  \)/);
    expect(out).toContain("IOAPIC[0]: apic_id 2, version 17, address 0xfec00000, GSI 0-23");
    expect(out).toContain("smpboot: Allowing 2 CPUs, 0 hotplug CPUs");
  }, 150_000 * TIME_SCALE);

  test("the bzImage boots through its decompressor to the same point", async () => {
    const out = await earlyBoot(VMLINUZ, ["-p", "console=ttyS0 earlyprintk=ttyS0 tsvm.marker=bzimage"], LAST_E820_LINE, 400_000);
    expect(out).toMatch(/Linux version 6\.1\.\d+/);
    expect(out).toContain("Command line: console=ttyS0 earlyprintk=ttyS0 tsvm.marker=bzimage\n");
    for (const line of E820_512M) expect(out).toContain(line);
  }, 450_000 * TIME_SCALE);
});

/**
 * A full boot needs guest ring 0 at hardware speed. The probe times a ring-0 loop in the test guest:
 * with hardware virtualization it costs a few TSC cycles per iteration, emulated thousands.
 */
async function ringZeroIsNative(): Promise<boolean> {
  const r = await runTsvm(["run", "-p", "tsvm.bench=spin:100000"], { timeoutMs: 30_000 });
  const cycles = Number(/bench spin loops \d+ tsc-per-exit (\d+)/.exec(r.stdout)?.[1] ?? Infinity);
  return cycles < 100;
}

const native = HAS_KVM && haveLinux && (await ringZeroIsNative());
if (HAS_KVM && haveLinux && !native) {
  console.warn("tsvm tests: guest ring 0 is emulated on this host (KVM without VMX/SVM); the full Linux boot test is skipped");
}

const INITRAMFS = join(LINUX, "initramfs.cpio.gz");
const DISK = join(LINUX, "disk.img");
const haveGuest = existsSync(INITRAMFS) && existsSync(DISK);
if (native && !haveGuest) console.warn("tsvm tests: no Linux guest in build/linux (run scripts/build_linux_guest.sh); the full boot test is skipped");

describe.skipIf(!native || !haveGuest)("a full Linux boot (hardware virtualization only)", () => {
  test("Linux boots on 2 CPUs, loads the virtio modules and uses blk, rng and console, then reboots", async () => {
    // hvc0 goes to a file of its own: the virtio-console process and the serial port would
    // interleave their bytes on one stdout.
    const hvc0 = join(tempDir(), "hvc0.out");
    const r = await runTsvm([
      "run", "-m", "512", "-c", "2", "-p", "console=ttyS0 panic=-1 reboot=k", "-i", INITRAMFS,
      "--block", `path=${DISK},ro=true`, "--serial", "type=stdout,num=1,console=true",
      "--serial", `type=file,path=${hvc0},hardware=virtio-console,num=1`, VMLINUX,
    ], { timeoutMs: 120_000 });
    expect(r.stdout).toContain("smp: Brought up 1 node, 2 CPUs");
    for (const line of ["result blk: ok", "result rng: ok", "result console: ok", "result done"]) {
      expect(r.stdout).toContain(line);
    }
    expect(readFileSync(hvc0, "utf8")).toContain("hello over hvc0");
    expect(r.code).toBe(0);
  }, 150_000 * TIME_SCALE);
});
