// mod.ts - guest memory and guest addresses.
export { checkedAdd, GUEST_ADDRESS_LIMIT, type GuestAddress, guestAddress, guestAddressFromHalves, guestAddressFromNumber, guestAddressFromU64, hex } from "./guest_address.ts";
export { GuestMemory, GuestMemoryError, mapForWriting, MAX_REGION_SIZE, type MemoryRegion, type RegionMapping, type RegionSpec } from "./guest_memory.ts";
