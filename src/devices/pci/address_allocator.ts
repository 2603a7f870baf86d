// address_allocator.ts - hands out naturally aligned, non-overlapping ranges of an address window.
import { hex } from "../../memory/mod.ts";

/** Allocates upward from the start of [start, end). */
export class AddressAllocator {
  #next: number;
  constructor(readonly start: number, readonly end: number) {
    this.#next = start;
  }

  /** Returns an address aligned to `alignment` (default: the size) for `size` bytes; throws when full. */
  allocate(size: number, alignment = size): number {
    const address = Math.ceil(this.#next / alignment) * alignment;
    if (address + size > this.end) {
      throw new Error(`failed to allocate ${hex(size)} bytes: the window ${hex(this.start)}-${hex(this.end)} is full`);
    }
    this.#next = address + size;
    return address;
  }
}
