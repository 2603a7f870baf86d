// The test guest drives tsvm's virtio devices under real KVM as a spec-following (and a hostile) driver.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { HAS_NETNS, TapNamespace, withTapFd } from "../support/net_ns.ts";
import { HAS_KVM, runTsvm, tempDir, tsvmCommand, TsvmProcess, TIME_SCALE } from "../support/tsvm.ts";

if (HAS_KVM && !HAS_NETNS) console.warn("tsvm tests: no root, ip or python3 here; the virtio-net test is skipped");

const TIMEOUT = 60_000 * TIME_SCALE;
const DISK_SIZE = 1 << 20;

/** Makes a 1 MiB image named `name` in a fresh temporary directory, or in `dir`. */
function makeDisk(name: string, dir = tempDir()): string {
  const path = join(dir, name);
  const bytes = new Uint8Array(DISK_SIZE);
  bytes.set(new TextEncoder().encode("TSVMDISK"));
  writeFileSync(path, bytes);
  return path;
}

describe.skipIf(!HAS_KVM)("virtio devices under the test guest", () => {
  test("virtio-blk: the guest's write lands in the file; a read-only disk refuses writes", async () => {
    const rw = makeDisk("rw.img");
    const ro = makeDisk("ro.img");
    const r = await runTsvm(["run", "--block", `path=${rw},id=disk-one`, "--disk", ro]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
    expect(r.stdout).toContain('virtio-blk0 capacity 2048 sectors, id "disk-one", read-write');
    expect(r.stdout).toContain('virtio-blk0 sector 0 starts "TSVMDISK"');
    expect(r.stdout).toContain("ok   virtio-blk0:");
    expect(r.stdout).toContain("virtio-blk1 capacity 2048 sectors");
    expect(r.stdout).toContain("read-only");
    expect(r.stdout).toContain("ok   virtio-blk1:");
    expect(r.code).toBe(0);
    expect(new TextDecoder().decode(readFileSync(rw).subarray(512, 542))).toBe("written by the tsvm test guest");
    expect(readFileSync(ro).subarray(512, 542).every((b) => b === 0)).toBe(true);
  }, TIMEOUT);

  test("virtio-blk at queue depth 32, driven from guest ring 3: every read and write completes, the writes land", async () => {
    const path = makeDisk("depth.img");
    const reads = await runTsvm(["run", "-p", "tsvm.bench=blkq:sr:64:32:200", "--block", `path=${path}`]);
    expect([reads.code, reads.stderr]).toEqual([0, ""]);
    expect(reads.stdout).toMatch(/bench blkq read sequential bytes 65536 depth 32 ring 3 requests 200 failures 0 tsc-per-request \d+/);
    const writes = await runTsvm(["run", "-p", "tsvm.bench=blkq:rw:4:32:400", "--block", `path=${path}`]);
    expect([writes.code, writes.stderr]).toEqual([0, ""]);
    expect(writes.stdout).toMatch(/bench blkq write random bytes 4096 depth 32 ring 3 requests 400 failures 0 tsc-per-request \d+/);
    // Request slot r writes 4 KiB of 0x41 + r wherever it lands.
    const disk = readFileSync(path);
    let written = 0;
    for (let at = 0; at < DISK_SIZE; at += 4096) {
      const block = disk.subarray(at, at + 4096);
      if (block[0]! >= 0x41 && block[0]! < 0x41 + 32 && block.every((b) => b === block[0])) written++;
    }
    expect(written).toBeGreaterThan(32);
    // An untimed pass of WARM requests first (the 7th field), then N timed: sequential writes go on
    // where the untimed pass stopped, so 100 + 60 distinct blocks are written, and 60 are counted.
    const fresh = makeDisk("warm.img");
    const warm = await runTsvm(["run", "-p", "tsvm.bench=blkq:sw:4:32:60:3:100", "--block", `path=${fresh}`]);
    expect([warm.code, warm.stderr]).toEqual([0, ""]);
    expect(warm.stdout).toMatch(/bench blkq write sequential bytes 4096 depth 32 ring 3 requests 60 failures 0 tsc-per-request \d+/);
    const blocks = readFileSync(fresh);
    let sequential = 0;
    for (let at = 0; at < DISK_SIZE; at += 4096) if (blocks[at]! >= 0x41 && blocks.subarray(at, at + 4096).every((b) => b === blocks[at])) sequential++;
    expect(sequential).toBe(160);
  }, TIMEOUT);

  test("with o_direct=true at depth 32, huge pages asked for, every read and write completes in the jailed device, which collapses guest memory under its transfers (its policy allows MADV_COLLAPSE) and moves small blocks through io_submit", async () => {
    // TSVM_TEST_DIRECT_DIR: a directory with O_DIRECT where the temporary one has none (test_kvm.sh
    // sets it under nested KVM, whose /tmp is a tmpfs).
    const dir = process.env.TSVM_TEST_DIRECT_DIR ? mkdtempSync(join(process.env.TSVM_TEST_DIRECT_DIR, "direct-")) : tempDir();
    try {
      const path = makeDisk("direct.img", dir);
      const env = { TSVM_GUEST_HUGE_PAGES: "1" }; // whatever the host's THP setting
      const reads = await runTsvm(["run", "-p", "tsvm.bench=blkq:sr:64:32:400", "--block", `path=${path},o_direct=true`], { env });
      if (/does not support O_DIRECT/.test(reads.stderr)) return console.warn("skipping: the temporary directory does not support O_DIRECT");
      expect([reads.code, reads.stderr]).toEqual([0, ""]);
      expect(reads.stdout).toMatch(/bench blkq read sequential bytes 65536 depth 32 ring 3 requests 400 failures 0 tsc-per-request \d+/);
      // 4 KiB random reads and writes: these go to the kernel's asynchronous I/O (io_submit, in
      // batches), which the block policy must allow in the jail.
      const small = await runTsvm(["run", "-p", "tsvm.bench=blkq:rr:4:32:400", "--block", `path=${path},o_direct=true`], { env });
      expect([small.code, small.stderr]).toEqual([0, ""]);
      expect(small.stdout).toMatch(/bench blkq read random bytes 4096 depth 32 ring 3 requests 400 failures 0 tsc-per-request \d+/);
      const writes = await runTsvm(["run", "-p", "tsvm.bench=blkq:rw:4:32:400", "--block", `path=${path},o_direct=true`], { env });
      expect([writes.code, writes.stderr]).toEqual([0, ""]);
      expect(writes.stdout).toMatch(/bench blkq write random bytes 4096 depth 32 ring 3 requests 400 failures 0 tsc-per-request \d+/);
      // Request slot r writes 4 KiB of 0x41 + r wherever it lands.
      const disk = readFileSync(path);
      let written = 0;
      for (let at = 0; at < DISK_SIZE; at += 4096) if (disk[at]! >= 0x41 && disk[at]! < 0x41 + 32 && disk.subarray(at, at + 4096).every((b) => b === disk[at])) written++;
      expect(written).toBeGreaterThan(32);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, TIMEOUT);

  test("a disk image another VM holds read-write is refused with exit 2", async () => {
    const path = makeDisk("shared.img");
    using first = new TsvmProcess(["run", "-p", "tsvm.mode=spin", "--rwdisk", path]);
    await first.waitForOutput(/passed, 0 failed/, 30_000);
    const second = await runTsvm(["run", "--rwdisk", path]);
    expect(second.stderr).toContain(`failed to lock disk image ${path}: another VM has it open`);
    expect(second.code).toBe(2);
  }, TIMEOUT);

  test("virtio-console: a guest line reaches the host and host input reaches the guest", async () => {
    const r = await runTsvm(
      ["run", "-p", "tsvm.console_rx=1", "--serial", "type=stdout,num=1,console=true", "--serial", "type=stdout,hardware=virtio-console,num=1,stdin=true"],
      { stdin: "ping from the host\n" },
    );
    expect(r.stdout).toContain("hello from the guest over virtio-console\n");
    // Two devices share stdout: the console's line (one write) may land inside the UART's bytes,
    // which its vCPU writes as the guest sends them.
    const serial = r.stdout.replace("hello from the guest over virtio-console\n", "");
    expect(serial).toContain('virtio-console received "ping from the host');
    expect(serial).toContain("ok   virtio-console:");
    expect(r.code).toBe(0);
  }, TIMEOUT);

  // The test guest sends a frame to the peer on tap0 and waits for one back. The VM starts only once
  // the peer listens, so the guest's frame is not sent into the void.
  const netRound = async (ns: TapNamespace, prefix: readonly string[], net: string, extra: readonly string[] = []): Promise<void> => {
    const peer = await ns.startPeer();
    const vm = Bun.spawn([...ns.exec, ...prefix, ...tsvmCommand(), "run", "-p", "tsvm.net_rx=1", "--net", net, ...extra], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    const timer = setTimeout(() => vm.kill("SIGKILL"), 60_000 * TIME_SCALE);
    const [out, err] = await Promise.all([new Response(vm.stdout).text(), new Response(vm.stderr).text()]);
    await vm.exited;
    clearTimeout(timer);
    const peerText = await peer.output;
    if (!peerText.includes("from guest: hello from the tsvm guest")) throw new Error(`the peer saw no frame: ${peerText}\ntsvm exited ${vm.exitCode}; stdout:\n${out}\nstderr:\n${err}`);
    expect(out).toContain("virtio-net mac 0x52:0x54:0x0:0x12:0x34:0x56");
    expect(out).toContain('virtio-net received "hello from the host side"');
    expect(out).toContain("ok   virtio-net:");
    expect(vm.exitCode).toBe(0);
  };

  test.skipIf(!HAS_NETNS)("virtio-net: frames cross a tap in a private network namespace, both directions", async () => {
    using ns = new TapNamespace(`tsvmtest${process.pid}`);
    await netRound(ns, [], "tap-name=tap0,mac=52:54:00:12:34:56");
  }, TIMEOUT);

  // A command line read without yargs runs the VM in the first program; `--logLevel` (a spelling
  // only yargs reads) makes tsvm hand off to a program of its own, whose exec the fd must survive.
  for (const [how, extra] of [["in place", []], ["across tsvm's own exec", ["--logLevel", "warn"]]] as const) {
    test.skipIf(!HAS_NETNS)(`virtio-net on a tap fd the caller opened (tap-fd=N) keeps it, ${how}`, async () => {
      using ns = new TapNamespace(`tsvmfd${process.pid}`);
      await netRound(ns, withTapFd(9), "tap-fd=9,mac=52:54:00:12:34:56", extra);
    }, TIMEOUT);
  }

  test("a hostile driver cannot crash the rng device, which works again after a reset", async () => {
    const r = await runTsvm(["run", "-p", "tsvm.hostile=1"]);
    expect(r.stdout).toContain("hostile loop len 0, beyond-RAM len 0, needs reset after the jump");
    expect(r.stdout).toContain("ok   hostile:");
    expect(r.stderr).toContain("avail index jumped by 100 on a queue of 8; the device needs a reset");
    expect(r.code).toBe(0);
  }, TIMEOUT);

  for (const home of [[], ["--disable-sandbox"]]) {
    test(`a guest moving one device's BAR over another's breaks that device, not tsvm${home.length ? " (--disable-sandbox)" : ""}`, async () => {
      const r = await runTsvm(["run", ...home, "-p", "tsvm.hostile=bars"]);
      expect(r.stderr).toMatch(/virtio-rng: cannot catch notifications at BAR 0 0x[0-9a-f]+: failed to register ioeventfd at 0x[0-9a-f]+: EEXIST; the device needs a reset/);
      expect(r.stdout).toContain("hostile-bars overlap refused, balloon served, rng works after reset");
      expect(r.stdout).toContain("ok   hostile-bars:");
      expect(r.code).toBe(0);
    }, TIMEOUT);
  }
});
