// pci_configuration.ts - a type-0 PCI configuration space: header, BARs with sizing, capability list.
//
// PCI Local Bus 3.0 ch. 6. Every dword has a mask of guest-writable bits; BARs expose
// ~(size - 1) as writable, so writing all ones and reading back gives the size (6.2.5.1).
// Accesses of 1, 2 or 4 bytes at any offset are assembled from the dwords they touch.

export const PCI_CONFIG_SPACE_SIZE = 256;
/** Header offsets (PCI 3.0, figure 6-1). */
export const PCI = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION_ID: 0x08,
  CLASS_PROG: 0x09,
  CLASS_DEVICE: 0x0a,
  HEADER_TYPE: 0x0e,
  BAR0: 0x10,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  SUBSYSTEM_ID: 0x2e,
  CAPABILITY_LIST: 0x34,
  INTERRUPT_LINE: 0x3c,
  INTERRUPT_PIN: 0x3d,
} as const;
export const PCI_COMMAND_IO = 0x1;
export const PCI_COMMAND_MEMORY = 0x2;
export const PCI_COMMAND_MASTER = 0x4;
export const PCI_COMMAND_INTX_DISABLE = 0x400;
export const PCI_STATUS_CAP_LIST = 0x10;
const BAR_COUNT = 6;
const BAR_MEM_TYPE_64 = 0x4;
const BAR_PREFETCHABLE = 0x8;
const BAR_IO_SPACE = 0x1;
const FIRST_CAPABILITY_OFFSET = 0x40;

/** A BAR the device wants: its size (a power of two, at least 16), and how it is decoded. */
export type BarSpec = {
  readonly index: number;
  readonly size: number;
  readonly kind: "memory32" | "memory64" | "io";
  readonly prefetchable?: boolean;
};

/** Identification of a function. */
export type PciIds = {
  readonly vendorId: number;
  readonly deviceId: number;
  readonly classCode: number; // base class << 16 | subclass << 8 | programming interface
  readonly revision?: number;
  readonly subsystemVendorId?: number;
  readonly subsystemId?: number;
  readonly headerType?: number;
};

export type PciConfigurationErrorKind = "bad_bar" | "capability_space_full";

/** A configuration the device model asked for that cannot exist (host bug, not guest input). */
export class PciConfigurationError extends Error {
  override readonly name = "PciConfigurationError";
  constructor(readonly kind: PciConfigurationErrorKind, message: string) {
    super(message);
  }
}

/** The 256-byte configuration space of one PCI function. */
export class PciConfiguration {
  readonly #bytes = new Uint8Array(PCI_CONFIG_SPACE_SIZE);
  readonly #view = new DataView(this.#bytes.buffer);
  /** Guest-writable bits of each dword. */
  readonly #writable = new Uint32Array(PCI_CONFIG_SPACE_SIZE / 4);
  /** Bits cleared by writing 1 (status register error bits). */
  readonly #writeOneToClear = new Uint32Array(PCI_CONFIG_SPACE_SIZE / 4);
  readonly #bars: (BarSpec | null)[] = new Array<BarSpec | null>(BAR_COUNT).fill(null);
  #lastCapability = 0;
  #nextCapability = FIRST_CAPABILITY_OFFSET;

  constructor(ids: PciIds) {
    const v = this.#view;
    v.setUint16(PCI.VENDOR_ID, ids.vendorId, true);
    v.setUint16(PCI.DEVICE_ID, ids.deviceId, true);
    v.setUint8(PCI.REVISION_ID, ids.revision ?? 0);
    v.setUint8(PCI.CLASS_PROG, ids.classCode & 0xff);
    v.setUint16(PCI.CLASS_DEVICE, ids.classCode >>> 8, true);
    v.setUint8(PCI.HEADER_TYPE, ids.headerType ?? 0);
    v.setUint16(PCI.SUBSYSTEM_VENDOR_ID, ids.subsystemVendorId ?? 0, true);
    v.setUint16(PCI.SUBSYSTEM_ID, ids.subsystemId ?? 0, true);
    // Command: I/O, memory, bus master, INTx disable are writable. Status is read-only here.
    this.#writable[PCI.COMMAND / 4] = PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;
    // Interrupt line is scratch for the OS.
    this.#writable[PCI.INTERRUPT_LINE / 4] = 0xff;
  }

  /** Declares a BAR; the address is assigned later with setBarAddress. */
  addBar(bar: BarSpec): void {
    const { index, size, kind } = bar;
    const slots = kind === "memory64" ? 2 : 1;
    if (!Number.isInteger(index) || index < 0 || index + slots > BAR_COUNT || this.#bars[index] || (slots === 2 && this.#bars[index + 1])) {
      throw new PciConfigurationError("bad_bar", `BAR ${index} is taken or out of range`);
    }
    const minimum = kind === "io" ? 4 : 16;
    if (size < minimum || !Number.isInteger(Math.log2(size))) {
      throw new PciConfigurationError("bad_bar", `BAR ${index} size ${size} is not a power of two >= ${minimum}`);
    }
    this.#bars[index] = bar;
    const offset = PCI.BAR0 + index * 4;
    const flags = kind === "io" ? BAR_IO_SPACE : (kind === "memory64" ? BAR_MEM_TYPE_64 : 0) | (bar.prefetchable ? BAR_PREFETCHABLE : 0);
    this.#view.setUint32(offset, flags, true);
    const lowMask = size >= 2 ** 32 ? 0 : (~(size - 1) >>> 0) & ~(kind === "io" ? 0x3 : 0xf);
    this.#writable[offset / 4] = lowMask >>> 0;
    if (kind === "memory64") {
      this.#writable[offset / 4 + 1] = size > 2 ** 32 ? (~(size / 2 ** 32 - 1) >>> 0) : 0xffffffff;
    }
  }

  /** Returns the BAR declared at `index`, or null. */
  bar(index: number): BarSpec | null {
    return this.#bars[index] ?? null;
  }

  /** The declared BARs. */
  get bars(): BarSpec[] {
    return this.#bars.filter((b): b is BarSpec => b !== null);
  }

  /** Sets a BAR's address (aligned to its size). */
  setBarAddress(index: number, address: number): void {
    const bar = this.#bars[index];
    if (!bar || address % bar.size !== 0) throw new PciConfigurationError("bad_bar", `cannot place BAR ${index} at ${address}`);
    const offset = PCI.BAR0 + index * 4;
    const flags = this.#view.getUint32(offset, true) & (bar.kind === "io" ? 0x3 : 0xf);
    this.#view.setUint32(offset, ((address >>> 0) & ~(bar.kind === "io" ? 0x3 : 0xf)) | flags, true);
    if (bar.kind === "memory64") this.#view.setUint32(offset + 4, Math.floor(address / 2 ** 32), true);
  }

  /** Returns the address the BAR decodes now (what the guest programmed). */
  barAddress(index: number): number {
    const bar = this.#bars[index];
    if (!bar) return 0;
    const offset = PCI.BAR0 + index * 4;
    const low = this.#view.getUint32(offset, true) & ~(bar.kind === "io" ? 0x3 : 0xf);
    const high = bar.kind === "memory64" ? this.#view.getUint32(offset + 4, true) : 0;
    return (low >>> 0) + high * 2 ** 32;
  }

  /** Sets the interrupt pin (1 = INTA#) and the line the platform routed it to. */
  setInterrupt(pin: number, line: number): void {
    this.#view.setUint8(PCI.INTERRUPT_PIN, pin);
    this.#view.setUint8(PCI.INTERRUPT_LINE, line);
  }

  /**
   * Appends a capability (`body` starts with its ID byte; the next-pointer byte is filled in) and
   * returns its offset. `writableMask` marks guest-writable bits within the body, dword by dword.
   */
  addCapability(body: Uint8Array, writableMask?: Uint8Array): number {
    const offset = this.#nextCapability;
    const size = Math.ceil(body.byteLength / 4) * 4;
    if (offset + size > PCI_CONFIG_SPACE_SIZE) {
      throw new PciConfigurationError("capability_space_full", "no room for another capability");
    }
    this.#bytes.set(body, offset);
    this.#bytes[offset + 1] = 0;
    if (writableMask) {
      for (let i = 0; i < writableMask.byteLength; i++) {
        const at = offset + i;
        this.#writable[at >> 2] = (this.#writable[at >> 2]! | (writableMask[i]! << ((at & 3) * 8))) >>> 0;
      }
    }
    if (this.#lastCapability === 0) {
      this.#bytes[PCI.CAPABILITY_LIST] = offset;
      this.#view.setUint16(PCI.STATUS, this.#view.getUint16(PCI.STATUS, true) | PCI_STATUS_CAP_LIST, true);
    } else {
      this.#bytes[this.#lastCapability + 1] = offset;
    }
    this.#lastCapability = offset;
    this.#nextCapability = offset + size;
    return offset;
  }

  get command(): number {
    return this.#view.getUint16(PCI.COMMAND, true);
  }

  /** Reads `length` (1, 2 or 4) bytes at `offset`; out-of-range reads are all ones. */
  read(offset: number, length: number): number {
    if (offset < 0 || offset + length > PCI_CONFIG_SPACE_SIZE) return length === 4 ? 0xffffffff : (1 << (length * 8)) - 1;
    if (length === 4) return this.#view.getUint32(offset, true);
    if (length === 2) return this.#view.getUint16(offset, true);
    return this.#view.getUint8(offset);
  }

  /** Reads a whole dword (for device code that overlays live registers). */
  readDword(index: number): number {
    return this.#view.getUint32(index * 4, true);
  }

  /** Writes `value` (`length` bytes at `offset`), keeping read-only bits; returns the old dword. */
  write(offset: number, length: number, value: number): number {
    if (offset < 0 || offset + length > PCI_CONFIG_SPACE_SIZE || ![1, 2, 4].includes(length)) return 0;
    const index = offset >> 2;
    const shift = (offset & 3) * 8;
    const laneMask = (length === 4 ? 0xffffffff : ((1 << (length * 8)) - 1) << shift) >>> 0;
    const old = this.#view.getUint32(index * 4, true);
    const incoming = ((value << shift) & laneMask) >>> 0;
    const writable = this.#writable[index]! & laneMask;
    const w1c = this.#writeOneToClear[index]! & incoming;
    const next = ((old & ~writable) | (incoming & writable)) & ~w1c;
    this.#view.setUint32(index * 4, next >>> 0, true);
    return old;
  }

  /** Sets bytes of the space directly (device-owned registers such as capability state). */
  setByte(offset: number, value: number): void {
    this.#bytes[offset] = value;
  }

  getByte(offset: number): number {
    return this.#bytes[offset]!;
  }
}
