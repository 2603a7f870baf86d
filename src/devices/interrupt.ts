// interrupt.ts - an interrupt line a device drives (level-triggered view of an ISA/GSI input).

/** A line into the interrupt controller; `setLevel` is cheap to call with an unchanged level. */
export interface IrqLine {
  setLevel(level: boolean): void;
}

/** Drives GSI `gsi` through `raise` (KVM_IRQ_LINE), calling it only when the level changes. */
export class GsiLine implements IrqLine {
  #level = false;
  constructor(readonly gsi: number, readonly raise: (gsi: number, level: boolean) => void) {}

  setLevel(level: boolean): void {
    if (level === this.#level) return;
    this.#level = level;
    this.raise(this.gsi, level);
  }
}

/** Records levels instead of raising anything (tests, and devices with no line). */
export class RecordingIrqLine implements IrqLine {
  level = false;
  changes = 0;
  setLevel(level: boolean): void {
    if (level !== this.level) this.changes++;
    this.level = level;
  }
}
