// layout_worker.ts - reads a published bus layout over and over while the main thread rewrites it, and
// posts back every distinct layout it saw (each must be one the main thread published whole).
import { readWorkerLayout } from "../../src/vcpu/worker_bus.ts";

declare const self: Worker;

export type LayoutJob = { readonly table: SharedArrayBuffer; readonly stop: SharedArrayBuffer };

self.onmessage = (event: MessageEvent<LayoutJob>) => {
  const table = new Int32Array(event.data.table);
  const stop = new Int32Array(event.data.stop);
  const seen = new Set<string>();
  let reads = 0;
  while (Atomics.load(stop, 0) === 0 || reads === 0) {
    const { ranges } = readWorkerLayout(table);
    seen.add(ranges.map((r) => `${r.space}:${r.base.toString(16)}+${r.length}`).join(" "));
    reads++;
  }
  self.postMessage({ seen: [...seen], reads });
};
