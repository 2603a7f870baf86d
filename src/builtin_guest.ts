// builtin_guest.ts - the test guest embedded in the executable; `tsvm run` with no kernel boots it.
import guestPath from "../build/guest/tsvm-guest.elf" with { type: "file" };

/**
 * Returns the bytes of the built-in guest (an ELF with both a 64-bit Linux-protocol and a PVH entry).
 * Read with Bun.file, which reaches the executable's embedded files, rather than node:fs, which the
 * VMM does not otherwise load.
 */
export async function builtinGuest(): Promise<Uint8Array> {
  return await Bun.file(guestPath).bytes();
}
