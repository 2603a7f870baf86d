// mod.ts - guest memory and guest addresses.
export { alignUp, checkedAdd, GUEST_ADDRESS_LIMIT, type GuestAddress, guestAddress, hex } from "./guest_address.ts";
export { GuestMemory, GuestMemoryError, MAX_REGION_SIZE, type MemoryRegion, type RegionSpec } from "./guest_memory.ts";
