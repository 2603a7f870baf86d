// guest_address.ts - guest physical addresses: a branded number, made only by checked conversions.
//
// tsvm handles three address spaces (guest physical, this process's host addresses, and a vhost-user
// frontend's own addresses); only guest physical addresses are GuestAddress, so the compiler keeps
// them apart. Guest-controlled 64-bit values (descriptor and ring addresses, BARs) become one through
// `guestAddressFromU64`, which refuses everything at or above 2^52 (the x86-64 physical address
// limit), so no value that a JS number cannot hold exactly (2^53 and above) ever becomes an address.

/** A guest physical address: an integer in [0, 2^52). */
export type GuestAddress = number & { readonly __brand: "GuestAddress" };

/** One past the largest guest physical address x86-64 allows (52 bits). */
export const GUEST_ADDRESS_LIMIT = 2 ** 52;

/** Returns `value` as a GuestAddress; throws for a host-side constant that is not one (a bug). */
export function guestAddress(value: number): GuestAddress {
  if (!Number.isSafeInteger(value) || value < 0 || value >= GUEST_ADDRESS_LIMIT) {
    throw new RangeError(`invalid guest address: ${value}`);
  }
  return value as GuestAddress;
}

/** Converts a guest-controlled 64-bit value; returns null at or above 2^52. */
export function guestAddressFromU64(value: bigint): GuestAddress | null {
  return value >= 0n && value < BigInt(GUEST_ADDRESS_LIMIT) ? (Number(value) as GuestAddress) : null;
}

/** Converts a guest-controlled 64-bit value given as two 32-bit halves (no BigInt on hot paths). */
export function guestAddressFromHalves(low: number, high: number): GuestAddress | null {
  return high >>> 0 < GUEST_ADDRESS_LIMIT / 2 ** 32 ? (((high >>> 0) * 2 ** 32 + (low >>> 0)) as GuestAddress) : null;
}

/** Converts a guest-controlled number (two 32-bit halves already joined, say); null when out of range. */
export function guestAddressFromNumber(value: number): GuestAddress | null {
  return Number.isSafeInteger(value) && value >= 0 && value < GUEST_ADDRESS_LIMIT ? (value as GuestAddress) : null;
}

/** Returns `address + offset`, or null if the sum leaves the physical address space. */
export function checkedAdd(address: GuestAddress, offset: number): GuestAddress | null {
  return Number.isSafeInteger(offset) ? guestAddressFromNumber(address + offset) : null;
}

/** Formats an address as 0x-prefixed hex. */
export function hex(value: number | bigint): string {
  return `0x${value.toString(16)}`;
}
