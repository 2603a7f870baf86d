// guest_address.ts - guest physical addresses as a branded number with checked arithmetic.

/** A guest physical address: an integer in [0, 2^52), the x86-64 physical address limit. */
export type GuestAddress = number & { readonly __brand: "GuestAddress" };

/** One past the largest guest physical address x86-64 allows (52 bits). */
export const GUEST_ADDRESS_LIMIT = 2 ** 52;

/** Returns `value` as a GuestAddress, or throws if it is not a valid physical address. */
export function guestAddress(value: number): GuestAddress {
  if (!Number.isSafeInteger(value) || value < 0 || value >= GUEST_ADDRESS_LIMIT) {
    throw new RangeError(`invalid guest address: ${value}`);
  }
  return value as GuestAddress;
}

/** Returns `address + offset`, or null if the sum leaves the physical address space. */
export function checkedAdd(address: GuestAddress, offset: number): GuestAddress | null {
  const sum = address + offset;
  if (!Number.isSafeInteger(offset) || sum < 0 || sum >= GUEST_ADDRESS_LIMIT) return null;
  return sum as GuestAddress;
}

/** Returns `address` rounded up to a multiple of `alignment` (a power of two), or null on overflow. */
export function alignUp(address: number, alignment: number): number | null {
  const rounded = Math.ceil(address / alignment) * alignment;
  return rounded < GUEST_ADDRESS_LIMIT ? rounded : null;
}

/** Formats an address as 0x-prefixed hex. */
export function hex(value: number | bigint): string {
  return `0x${value.toString(16)}`;
}
