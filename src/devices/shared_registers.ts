// shared_registers.ts - a device's register file as the vCPU threads may read it without asking the
// device: an image of the registers in shared memory, and which dwords of it are plain state.
//
//   bytes [0, size)              the image: what a read of each register returns now
//   bytes [size, size + size/4)  one flag per dword: 1 = a read may be served from the image
//
// The device's thread (the control loop) renders the image whenever the state behind it changes,
// always before it answers the access that changed it, so a vCPU that wrote a register and then
// reads reads what it wrote. Registers whose reads have side effects (ISR read-to-clear), depend on
// another process (a jailed device's features) or change behind the device's back stay unflagged:
// reads of them still go to the device. Writes always go to the device.

/** The image and its flags over one SharedArrayBuffer, shared by the device's thread and the vCPUs. */
export class SharedRegisters {
  readonly buffer: SharedArrayBuffer;
  readonly size: number;
  readonly #bytes: Uint8Array;
  readonly #local: Uint8Array;

  /** A new register file of `size` bytes (a multiple of 4), or a view of one made elsewhere. */
  constructor(sizeOrBuffer: number | SharedArrayBuffer) {
    if (typeof sizeOrBuffer === "number") {
      if (!(sizeOrBuffer > 0) || sizeOrBuffer % 4 !== 0) throw new RangeError(`register file size ${sizeOrBuffer} is not a positive multiple of 4`);
      this.size = sizeOrBuffer;
      this.buffer = new SharedArrayBuffer(sizeOrBuffer + sizeOrBuffer / 4);
    } else {
      this.buffer = sizeOrBuffer;
      this.size = (sizeOrBuffer.byteLength * 4) / 5;
    }
    this.#bytes = new Uint8Array(this.buffer, 0, this.size);
    this.#local = new Uint8Array(this.buffer, this.size, this.size / 4);
  }

  /** Device side: writes `bytes` into the image at `offset` (flags unchanged). */
  set(offset: number, bytes: Uint8Array): void {
    this.#bytes.set(bytes, offset);
  }

  /** Device side: fills `length` bytes of the image at `offset` with `value`. */
  fill(offset: number, length: number, value: number): void {
    this.#bytes.fill(value, offset, offset + length);
  }

  /** Device side: marks the dwords covering [offset, offset + length) as readable from the image, or not. */
  setLocal(offset: number, length: number, local: boolean): void {
    const first = offset >> 2;
    const last = (offset + length - 1) >> 2;
    for (let i = first; i <= last && i < this.#local.length; i++) Atomics.store(this.#local, i, local ? 1 : 0);
  }

  /** Whether every dword of [offset, offset + length) may be read from the image. */
  isLocal(offset: number, length: number): boolean {
    if (offset < 0 || length <= 0 || offset + length > this.size) return false;
    const local = this.#local;
    const last = (offset + length - 1) >> 2;
    for (let i = offset >> 2; i <= last; i++) if (Atomics.load(local, i) === 0) return false;
    return true;
  }

  /** vCPU side: serves a read of `data.byteLength` bytes at `offset` from the image; false when it may not. */
  read(offset: number, data: Uint8Array): boolean {
    if (!this.isLocal(offset, data.byteLength)) return false;
    const bytes = this.#bytes;
    for (let i = 0; i < data.byteLength; i++) data[i] = bytes[offset + i]!;
    return true;
  }
}
