// gc_probe.ts - maps 256 MiB of guest memory as the VMM and its devices do, then makes garbage the
// way a device's request path does (small objects, arrays, views into guest memory) and prints, as
// JSON, how much anonymous memory the process gained meanwhile. Run it with the JSC settings under
// test in its environment (JSC reads them at start).
import { GuestMemory } from "../../src/memory/mod.ts";

const ROUNDS = Number(process.argv[2] ?? 1_000_000);
const anonKib = async (): Promise<number> => Number((await Bun.file("/proc/self/status").text()).match(/RssAnon:\s+(\d+)/)![1]);

const memory = GuestMemory.create([{ base: 0, size: 256 * 1024 * 1024 }]);
const ram = memory.regions[0]!.bytes;
const before = await anonKib();
let sink = 0;
for (let i = 0; i < ROUNDS; i++) {
  const at = (i * 65536) % (ram.byteLength - 65536);
  const request = { head: i & 255, views: [ram.subarray(at, at + 16), ram.subarray(at + 16, at + 65536)], status: new Uint8Array(1) };
  sink += request.views.length + request.status.byteLength;
}
const after = await anonKib();
process.stdout.write(`${JSON.stringify({ grownKib: after - before, rounds: sink / 3 })}\n`);
memory.close();
