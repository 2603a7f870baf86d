// term.ts - bindings for c/term.c: raw terminal mode.
import { checked } from "../src/base/errno.ts";
import { native } from "./lib.ts";

/** Size reserved for a saved struct termios (60 bytes on x86-64, rounded up). */
export const TERMIOS_SAVE_SIZE = 64;

/** Returns whether `fd` is a terminal. */
export function isatty(fd: number): boolean {
  return native.tsvm_isatty(fd) === 1;
}

/** Puts `fd` in raw mode and saves the old settings in `saved` (TERMIOS_SAVE_SIZE bytes). */
export function termRaw(fd: number, saved: Uint8Array): void {
  checked(native.tsvm_term_raw(fd, saved, saved.byteLength), "set terminal raw mode");
}

/** Restores settings saved by termRaw; returns 0 or -errno. */
export function termRestore(fd: number, saved: Uint8Array): number {
  return native.tsvm_term_restore(fd, saved, saved.byteLength);
}
