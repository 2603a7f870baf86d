// memory_table.ts - a back-end's view of the front-end's memory: SET_MEM_TABLE checked and mapped.
//
// The front-end is untrusted. Every region must be page-multiple sized, must not overlap another
// in guest or front-end addresses, must be backed by a memfd sealed against shrinking (so the file
// can never become shorter than what is mapped, which would turn an access into SIGBUS), and must
// lie inside that file. Ring addresses arrive as front-end ("user") addresses and are translated here.
import { sys } from "../../../ffi/mod.ts";
import { errnoName } from "../../base/errno.ts";
import { err, ok, type Result } from "../../base/result.ts";
import { type GuestAddress, GuestMemory, guestAddressFromU64, type RegionMapping } from "../../memory/mod.ts";
import type { MemoryTableRegion } from "./protocol.ts";

const PAGE_SIZE = 4096n;
const F_GET_SEALS = 1034;
const F_SEAL_SHRINK = 2;
/** bounds the guest memory one front-end may make a back-end map (address space, not RAM) */
export const MAX_TABLE_BYTES = 2n ** 40n;

type Translation = { readonly user: bigint; readonly guest: bigint; readonly size: bigint };

/** Guest memory as a front-end described it, with its address translation. */
export class MemoryTable {
  private constructor(readonly memory: GuestMemory, readonly translations: readonly Translation[]) {}

  /**
   * Checks and maps `regions` with their `fds` (one each, in order). Takes ownership of the fds:
   * they are closed here on failure and by `close` otherwise.
   */
  static map(regions: readonly MemoryTableRegion[], fds: readonly number[]): Result<MemoryTable> {
    const refuse = (reason: string): Result<MemoryTable> => {
      for (const fd of fds) sys.close(fd);
      return err(reason);
    };
    if (fds.length !== regions.length) return refuse(`a memory table of ${regions.length} regions came with ${fds.length} fds`);
    let total = 0n;
    for (const [i, r] of regions.entries()) {
      if (r.size === 0n || r.size % PAGE_SIZE !== 0n || r.guestAddress % PAGE_SIZE !== 0n) return refuse(`region ${i} is not page aligned`);
      total += r.size;
      if (total > MAX_TABLE_BYTES) return refuse(`the memory table maps more than ${MAX_TABLE_BYTES} bytes`);
      if (guestAddressFromU64(r.guestAddress + r.size - 1n) === null) return refuse(`region ${i} lies beyond the physical address space`);
      for (const [j, o] of regions.entries()) {
        if (j >= i) break;
        if (r.guestAddress < o.guestAddress + o.size && o.guestAddress < r.guestAddress + r.size) return refuse(`regions ${j} and ${i} overlap in guest memory`);
        if (r.userAddress < o.userAddress + o.size && o.userAddress < r.userAddress + r.size) return refuse(`regions ${j} and ${i} overlap in front-end addresses`);
      }
      const stat = sys.fstat(fds[i]!);
      if (typeof stat === "number") return refuse(`region ${i}: cannot stat its fd: ${errnoName(-stat)}`);
      if ((stat.mode & sys.S_IFMT) !== sys.S_IFREG) return refuse(`region ${i}: its fd is not a memory file`);
      const seals = sys.fcntlIntRaw(fds[i]!, F_GET_SEALS, 0);
      if (seals < 0 || (seals & F_SEAL_SHRINK) === 0) {
        return refuse(`region ${i}: its memory is not a memfd sealed against shrinking (use memory-backend-memfd, whose seal=on is the default)`);
      }
      if (BigInt(stat.size) < r.mmapOffset + r.size) return refuse(`region ${i} reaches beyond the end of its memory file`);
    }
    const mappings: RegionMapping[] = regions.map((r, i) => ({
      base: guestAddressFromU64(r.guestAddress)!, size: Number(r.size), fd: fds[i]!, fdOffset: Number(r.mmapOffset),
    }));
    let memory: GuestMemory;
    try {
      memory = GuestMemory.fromMappings(mappings);
    } catch (e) {
      return refuse(`cannot map the memory table: ${e instanceof Error ? e.message : String(e)}`);
    }
    return ok(new MemoryTable(memory, regions.map((r) => ({ user: r.userAddress, guest: r.guestAddress, size: r.size }))));
  }

  /** Translates a front-end address of `length` bytes to a guest address, or null when no region holds it all. */
  guestAddressOf(user: bigint, length: number): GuestAddress | null {
    const end = user + BigInt(length);
    for (const t of this.translations) {
      if (user >= t.user && end <= t.user + t.size) return guestAddressFromU64(t.guest + (user - t.user));
    }
    return null;
  }

  close(): void {
    this.memory.close();
  }
}
