// process_memory.ts - what a process tree costs in memory, from /proc/PID/smaps: private dirty pages,
// with guest RAM left out (tsvm's guest memfd, or any mapping the caller names).
import { closeSync, fsyncSync, openSync, readdirSync, readFileSync } from "node:fs";

/** The pids whose parent is `pid` (from /proc/N/stat, so children of any of its threads). */
export function childPids(pid: number): number[] {
  return readdirSync("/proc").filter((d) => /^\d+$/.test(d)).map(Number).filter((p) => {
    try {
      // The state and the parent pid follow the command name, which can hold spaces: split after ") ".
      return Number(readFileSync(`/proc/${p}/stat`, "utf8").split(") ")[1]!.split(" ")[1]) === pid;
    } catch {
      return false; // gone meanwhile
    }
  });
}

/** Guest RAM as tsvm maps it (the memfd GuestMemory names) and as QEMU does with -object memory-backend-memfd. */
const GUEST_RAM = /\/memfd:(tsvm_guest_mem|memory-backend-memfd)( \(deleted\))?$/;

/**
 * The Private_Dirty KiB of `pid`, mappings matching `exclude` left out. Private means mapped by this
 * process alone: pages shared with other processes (the executable's text, a guest memfd mapped by
 * device processes too) count in none of them.
 */
export function privateDirtyKib(pid: number, exclude: RegExp = GUEST_RAM): number {
  let total = 0;
  let skip = false;
  for (const line of readFileSync(`/proc/${pid}/smaps`, "utf8").split("\n")) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) skip = exclude.test(line);
    else if (!skip && line.startsWith("Private_Dirty:")) total += Number(/(\d+) kB/.exec(line)?.[1] ?? 0);
  }
  return total;
}

/**
 * Writes `path` back to disk. Until the page cache has written a freshly built executable back, each
 * of its pages a process maps counts as Private_Dirty in that process (the page is dirty, and one
 * process maps it): a tsvm measured within seconds of `npm run build` showed its touched code,
 * ~20 MiB, as its own memory. Call this before measuring a process that runs `path`.
 */
export function writeBack(path: string): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * The smallest of the samples taken every `everyMs` for `windowMs`, by `size`: a Bun process gives
 * memory back some time after start-up (its heap shrinks once start-up garbage is collected, after
 * one to several seconds and sometimes after a plateau), and does not grow back while idle, so the
 * least it held over a few seconds is what it keeps.
 */
export async function settledMemory<T>(sample: () => T, size: (s: T) => number, windowMs = 8000, everyMs = 500): Promise<T> {
  let least = sample();
  for (let waited = 0; waited < windowMs; waited += everyMs) {
    await Bun.sleep(everyMs);
    const now = sample();
    if (size(now) < size(least)) least = now;
  }
  return least;
}
