// stdin.ts - host input for the guest: stdin (raw mode on a terminal) to whichever port reads it.
import { sys, term } from "../../ffi/mod.ts";
import { log } from "../base/log.ts";
import type { ControlLoop } from "./control_loop.ts";

const STDIN_CHUNK = 4096;
/** How long to wait before offering input again that the port had no room for. */
const RETRY_MS = 20;

/** Where input goes: `send` offers bytes and calls `done` with how many the port took (at once or later). */
export type InputSink = { send(bytes: Uint8Array, done: (accepted: number) => void): void };

/** Reads stdin into an InputSink, one offer in flight at a time, keeping what the port refused. */
export class StdinPump {
  readonly #loop: ControlLoop;
  readonly #sink: InputSink;
  readonly #buffer = new Uint8Array(STDIN_CHUNK);
  #carry = new Uint8Array(0);
  #inFlight = false;
  #retryAt = 0;
  #watching = false;
  #isFile = false;
  #ended = false;
  #savedTerminal: Uint8Array | null = null;

  constructor(loop: ControlLoop, sink: InputSink) {
    this.#loop = loop;
    this.#sink = sink;
    try {
      loop.watch(0, () => this.#pump());
      this.#watching = true;
      if (term.isatty(0)) {
        this.#savedTerminal = new Uint8Array(term.TERMIOS_SAVE_SIZE);
        term.termRaw(0, this.#savedTerminal);
      }
    } catch (e) {
      // A regular file cannot be polled (EPERM) but is always readable: read it as the guest takes it.
      log.debug(`stdin is not pollable (${e instanceof Error ? e.message : String(e)}); reading it as a file`);
      this.#isFile = true;
    }
    loop.everyTick(() => {
      if (this.#isFile || this.#carry.byteLength > 0) this.#pump();
    });
  }

  /** Restores the terminal. */
  close(): void {
    if (this.#watching) this.#loop.unwatch(0);
    this.#watching = false;
    if (this.#savedTerminal) term.termRestore(0, this.#savedTerminal);
    this.#savedTerminal = null;
  }

  #pump(): void {
    if (this.#inFlight || performance.now() < this.#retryAt) return;
    if (this.#carry.byteLength === 0) {
      if (this.#ended) return;
      const n = sys.readRaw(0, this.#buffer);
      if (n <= 0) {
        // End of input (or an error): stop watching a pipe or terminal; a file may still grow.
        if (!this.#isFile && this.#watching) {
          this.#loop.unwatch(0);
          this.#watching = false;
          this.#ended = true;
        }
        return;
      }
      this.#carry = this.#buffer.slice(0, n);
      if (this.#watching && !this.#isFile) {
        // Hold further reads until the port has taken this chunk.
        this.#loop.unwatch(0);
        this.#watching = false;
      }
    }
    this.#inFlight = true;
    this.#sink.send(this.#carry, (accepted) => {
      this.#inFlight = false;
      this.#carry = this.#carry.subarray(Math.max(0, Math.min(accepted, this.#carry.byteLength)));
      if (this.#carry.byteLength > 0) this.#retryAt = performance.now() + RETRY_MS;
      else if (!this.#isFile && !this.#ended && !this.#watching) {
        this.#loop.watch(0, () => this.#pump());
        this.#watching = true;
      }
    });
  }
}
