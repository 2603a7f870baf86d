// net_ns.ts - a private network namespace with a tap, and the AF_PACKET peer of the virtio-net tests.
import { join } from "node:path";
import { TIME_SCALE } from "./tsvm.ts";

/** Whether this machine can make network namespaces and run the peer. */
export const HAS_NETNS = Bun.which("ip") !== null && Bun.which("python3") !== null && process.getuid?.() === 0;

/** Runs a command, throwing with its stderr when it fails. */
export function sh(...cmd: string[]): string {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr.toString()}`);
  return r.stdout.toString();
}

/**
 * A command prefix that opens tap0 (in the namespace it runs in) with the flags tsvm needs, as
 * fd `fd` without close-on-exec, and runs the rest of its command line, as a supervisor handing tsvm
 * `tap-fd=N` would. Use an fd above 3: Bun leaves fd 3 alone at start but marks later inherited fds
 * close-on-exec, which is what tsvm's own execs must undo.
 */
export function withTapFd(fd: number): string[] {
  const opener = [
    "import fcntl, os, struct, sys",
    "t = os.open('/dev/net/tun', os.O_RDWR)",
    "fcntl.ioctl(t, 0x400454ca, struct.pack('16sH22x', b'tap0', 0x0002 | 0x1000 | 0x4000))  # TUNSETIFF: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR",
    `os.dup2(t, ${fd})`,
    "os.execvp(sys.argv[1], sys.argv[1:])",
  ].join("\n");
  return ["python3", "-c", opener];
}

/** A namespace `name` holding tap0 (up, no IPv6 chatter); `close` deletes it. */
export class TapNamespace {
  readonly exec: string[];
  constructor(readonly name: string) {
    sh("ip", "netns", "add", name);
    this.exec = ["ip", "netns", "exec", name];
    sh(...this.exec, "ip", "tuntap", "add", "dev", "tap0", "mode", "tap");
    sh(...this.exec, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1");
    sh(...this.exec, "ip", "link", "set", "tap0", "up");
  }

  /**
   * Starts net_peer.py on tap0; resolves once it listens, with `output`: everything it printed, once
   * it exits. (Wrapped in an object: an async function's returned promise would be awaited too.)
   */
  async startPeer(): Promise<{ output: Promise<string> }> {
    const peer = Bun.spawn([...this.exec, "python3", join(import.meta.dir, "net_peer.py"), "tap0", String(30 * TIME_SCALE)], { stdout: "pipe" });
    const decoder = new TextDecoder();
    const chunks = (peer.stdout as ReadableStream<Uint8Array>).getReader();
    let text = "";
    while (!text.includes("ready")) {
      const { value, done } = await chunks.read();
      if (done) throw new Error(`the network peer exited: ${text}`);
      text += decoder.decode(value);
    }
    const output = (async (): Promise<string> => {
      for (;;) {
        const { value, done } = await chunks.read();
        if (done) return text;
        text += decoder.decode(value);
      }
    })();
    return { output };
  }

  close(): void {
    Bun.spawnSync(["ip", "netns", "del", this.name]);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
