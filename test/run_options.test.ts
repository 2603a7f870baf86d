// The fast reading of `tsvm run`'s command line must give what yargs gives, or step aside.
import { describe, expect, test } from "bun:test";
import yargs from "yargs";
import { declareRunOptions, fastRunArgs, rawRunOptions, RUN_OPTIONS } from "../src/run_options.ts";

/** What `tsvm run ARGV` comes to: the options parseRunConfig is given, or the error's message. */
type Outcome = { readonly options: unknown } | { readonly error: string };

function outcome(read: () => Readonly<Record<string, unknown>>): Outcome {
  try {
    return { options: rawRunOptions(read()) };
  } catch (e) {
    return { error: (e as Error).message };
  }
}

/** yargs configured as src/main.ts configures it for `run`. */
async function viaYargs(argv: readonly string[]): Promise<Outcome> {
  let result: Outcome = { error: "the run command did not run" };
  try {
    await yargs(["run", ...argv])
      .command("run [kernel]", "run", (y) => declareRunOptions(y), (args) => {
        result = outcome(() => args);
      })
      .strict()
      .exitProcess(false)
      .fail((message, error) => {
        throw error ?? new Error(message);
      })
      .parseAsync();
  } catch (e) {
    return { error: `yargs: ${(e as Error).message}` };
  }
  return result;
}

function viaFast(argv: readonly string[]): Outcome | null {
  const args = fastRunArgs(argv);
  return args === null ? null : outcome(() => args);
}

describe("tsvm run's command line without yargs", () => {
  const common: string[][] = [
    [],
    ["vmlinux"],
    ["-m", "512", "-c", "2", "-p", "console=ttyS0", "--block", "path=disk.img", "vmlinux"],
    ["vmlinux", "--mem=1G", "--cpus=4", "--params", "root=/dev/vda rw", "-p", "quiet"],
    ["--no-rng", "--no-balloon", "--disable-sandbox", "--seccomp-log-failures", "bzImage"],
    ["--rng", "--balloon", "-i", "initrd.img", "vmlinux"],
    ["--serial", "type=stdout,num=1,console=true", "--serial", "type=file,num=2,path=/tmp/x", "--log-level", "debug"],
    ["-s", "/tmp/vm.sock", "--root", "rootfs.img", "-d", "a.img", "-d", "b.img", "--rwdisk", "c.img"],
    ["--rwroot", "root.img", "--net", "tap-name=tap0", "--vhost-user", "block,socket=/tmp/b.sock", "--shared-dir", "/srv:srv"],
    ["--vsock", "cid=3,uds=/tmp/v.sock", "--host_ip", "10.0.0.1", "--netmask", "255.255.255.0", "--mac", "02:00:00:00:00:01"],
    ["--cid", "3", "--config", "vm.json", "--virtiofsd", "/usr/lib/qemu/virtiofsd", "--seccomp-policy-dir", "/etc/tsvm"],
    ["--block=path=a.img,ro=true", "--block", "path=b.img", "-m", "0x1000", "-c", "1"],
    // Errors both must report alike: a flag given once given twice, values valibot refuses later.
    ["--root", "a.img", "--root", "b.img"],
    ["--socket", "a", "-s", "b"],
    ["-m", "512", "--mem", "1G"],
  ];
  for (const argv of common) {
    test(`reads ${JSON.stringify(argv)} as yargs does`, async () => {
      const fast = viaFast(argv);
      expect(fast).not.toBeNull();
      expect(fast!).toEqual(await viaYargs(argv));
    });
  }

  const unusual: string[][] = [
    ["--help"], ["-h"], ["--version"], ["--memory", "512"], ["--mem"], ["-m", "-5"], ["--params", "-x"],
    ["--rng", "false"], ["--rng=false"], ["--no-rng", "true"], ["a", "b"], ["--", "vmlinux"], ["-m512"],
    ["--logLevel", "debug"], ["--block.path=x"], ["--no-mem", "vmlinux"], ["-x"], ["--rng", "--rng"], ["-"], ["--mem", ""],
    ["-mc", "1"], ["--disable-sandbox=true"],
  ];
  for (const argv of unusual) {
    test(`leaves ${JSON.stringify(argv)} to yargs`, () => {
      expect(fastRunArgs(argv)).toBeNull();
    });
  }

  test("random command lines: whatever it reads, it reads as yargs does", async () => {
    const words = [
      ...RUN_OPTIONS.flatMap((o) => [`--${o.name}`, ...(o.alias ? [`-${o.alias}`] : []), ...(o.type === "boolean" ? [`--no-${o.name}`] : [`--${o.name}=v`])]),
      "vmlinux", "512", "1G", "path=d.img", "true", "false", "-5", "", "--", "-", "--nope", "x=y", "console=ttyS0 quiet", "0",
    ];
    let seed = 0x7a5f_31c3;
    const next = (n: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return (seed >>> 8) % n;
    };
    let read = 0;
    const rounds = 600;
    for (let i = 0; i < rounds; i++) {
      const argv = Array.from({ length: next(7) }, () => words[next(words.length)]!);
      const fast = viaFast(argv);
      if (fast === null) continue;
      read++;
      expect([argv, fast]).toEqual([argv, await viaYargs(argv)]);
    }
    // The check means something only if the fast path took a fair share of them.
    expect(read).toBeGreaterThan(rounds / 10);
  }, 60_000);
});
