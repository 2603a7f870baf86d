// builtin_guest.ts - the test guest embedded in the executable; `tsvm run` with no kernel boots it.
import { readFileSync } from "node:fs";
import guestPath from "../build/guest/tsvm-guest.elf" with { type: "file" };

/** Returns the bytes of the built-in guest (an ELF with both a 64-bit Linux-protocol and a PVH entry). */
export function builtinGuest(): Uint8Array {
  return new Uint8Array(readFileSync(guestPath));
}
