// serial.ts - a 16550A UART (8250 family) as Linux's 8250 driver and early console use it.
//
// Registers (offset from the base port; DLAB = LCR bit 7):
//   0 RBR (read) / THR (write) / DLL (DLAB)    4 MCR
//   1 IER / DLM (DLAB)                         5 LSR
//   2 IIR (read) / FCR (write)                 6 MSR
//   3 LCR                                      7 SCR (scratch)
// Transmission is instant: a THR write goes straight to the output, so THR is always empty.
import type { BusAccess, BusDevice } from "./bus.ts";
import type { IrqLine } from "./interrupt.ts";

const DATA = 0;
const IER = 1;
const IIR_FCR = 2;
const LCR = 3;
const MCR = 4;
const LSR = 5;
const MSR = 6;
const SCR = 7;

const IER_RDI = 0x01; // received data available
const IER_THRI = 0x02; // transmitter holding register empty
const IER_RLSI = 0x04; // receiver line status
const IER_MSI = 0x08; // modem status
const IER_MASK = 0x0f;
const IIR_NO_INT = 0x01;
const IIR_MSI = 0x00;
const IIR_THRI = 0x02;
const IIR_RDI = 0x04;
const IIR_RLSI = 0x06;
const IIR_FIFO_ENABLED = 0xc0;
const FCR_ENABLE_FIFO = 0x01;
const FCR_CLEAR_RCVR = 0x02;
const LCR_DLAB = 0x80;
const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const MCR_DTR = 0x01;
const MCR_RTS = 0x02;
const MCR_OUT1 = 0x04;
const MCR_OUT2 = 0x08;
const MCR_LOOP = 0x10;
const MCR_MASK = 0x1f;
const MSR_DCTS = 0x01;
const MSR_DDSR = 0x02;
const MSR_TERI = 0x04;
const MSR_DDCD = 0x08;
const MSR_CTS = 0x10;
const MSR_DSR = 0x20;
const MSR_RI = 0x40;
const MSR_DCD = 0x80;
/** A connected line: carrier, data set ready, clear to send. */
const MSR_DEFAULT = MSR_DCD | MSR_DSR | MSR_CTS;
/** 16550A receive FIFO depth; 1 when the FIFO is off. */
const FIFO_SIZE = 16;
/** 115200 bps divisor, what firmware leaves behind. */
const DEFAULT_DIVISOR = 1;
/** bounds host input waiting for the guest, so a flood from stdin cannot grow memory without limit */
const MAX_PENDING_INPUT = 64 * 1024;

/** The standard PC serial ports: base port and ISA IRQ of COM1-COM4. */
export const SERIAL_PORTS = [
  { base: 0x3f8, irq: 4 },
  { base: 0x2f8, irq: 3 },
  { base: 0x3e8, irq: 4 },
  { base: 0x2e8, irq: 3 },
] as const;
export const SERIAL_PORT_SIZE = 8;

/** Where a UART's output goes. */
export interface SerialOutput {
  write(bytes: Uint8Array): void;
}

/** A 16550A UART with an optional output and host input queued by `queueInput`. */
export class Serial implements BusDevice {
  readonly debugLabel: string;
  #ier = 0;
  #lcr = 0x03; // 8N1
  #mcr = MCR_OUT2;
  #lsr = LSR_THRE | LSR_TEMT;
  #msr = MSR_DEFAULT;
  #scr = 0;
  #dll = DEFAULT_DIVISOR;
  #dlm = 0;
  #fifoEnabled = false;
  #threPending = false;
  readonly #rxFifo: number[] = [];
  readonly #pendingInput: number[] = [];
  readonly #byte = new Uint8Array(1);

  constructor(label: string, readonly irq: IrqLine, readonly output: SerialOutput | null) {
    this.debugLabel = label;
  }

  /** Queues host bytes for the guest to read; returns how many were accepted. */
  queueInput(bytes: Uint8Array): number {
    const room = MAX_PENDING_INPUT - this.#pendingInput.length;
    const accepted = Math.min(room, bytes.byteLength);
    for (let i = 0; i < accepted; i++) this.#pendingInput.push(bytes[i]!);
    this.#fillFifo();
    this.#updateIrq();
    return accepted;
  }

  read(access: BusAccess, data: Uint8Array): void {
    data.fill(0);
    data[0] = this.#readRegister(access.offset);
  }

  write(access: BusAccess, data: Uint8Array): void {
    this.#writeRegister(access.offset, data[0]!);
  }

  #readRegister(offset: number): number {
    switch (offset) {
      case DATA: {
        if (this.#lcr & LCR_DLAB) return this.#dll;
        const value = this.#rxFifo.shift() ?? 0;
        this.#fillFifo();
        if (this.#rxFifo.length === 0) this.#lsr &= ~LSR_DR;
        this.#updateIrq();
        return value;
      }
      case IER:
        return this.#lcr & LCR_DLAB ? this.#dlm : this.#ier;
      case IIR_FCR: {
        const id = this.#interruptId();
        // Reading IIR while it reports THRE acknowledges that interrupt (16550 datasheet).
        if (id === IIR_THRI) this.#threPending = false;
        this.#updateIrq();
        return id | (this.#fifoEnabled ? IIR_FIFO_ENABLED : 0);
      }
      case LCR:
        return this.#lcr;
      case MCR:
        return this.#mcr;
      case LSR: {
        const value = this.#lsr;
        this.#lsr &= ~LSR_OE; // overrun is cleared by reading LSR
        this.#updateIrq();
        return value;
      }
      case MSR: {
        const value = this.#modemStatus();
        this.#msr &= ~(MSR_DCTS | MSR_DDSR | MSR_TERI | MSR_DDCD);
        this.#updateIrq();
        return value;
      }
      case SCR:
        return this.#scr;
      default:
        return 0xff;
    }
  }

  #writeRegister(offset: number, value: number): void {
    switch (offset) {
      case DATA:
        if (this.#lcr & LCR_DLAB) {
          this.#dll = value;
          return;
        }
        this.#transmit(value);
        return;
      case IER:
        if (this.#lcr & LCR_DLAB) {
          this.#dlm = value;
          return;
        }
        // Enabling THRI with an empty THR raises the interrupt at once, as the 16550 does.
        if (!(this.#ier & IER_THRI) && value & IER_THRI) this.#threPending = true;
        this.#ier = value & IER_MASK;
        break;
      case IIR_FCR:
        this.#fifoEnabled = (value & FCR_ENABLE_FIFO) !== 0;
        if (value & FCR_CLEAR_RCVR || !this.#fifoEnabled) {
          this.#rxFifo.length = 0;
          this.#lsr &= ~LSR_DR;
          this.#fillFifo();
        }
        break;
      case LCR:
        this.#lcr = value;
        return;
      case MCR: {
        const before = this.#modemStatus();
        this.#mcr = value & MCR_MASK;
        const after = this.#modemStatus();
        this.#noteModemChange(before, after);
        break;
      }
      case LSR:
      case MSR:
        return; // read-only (factory test registers on some parts)
      case SCR:
        this.#scr = value;
        return;
      default:
        return;
    }
    this.#updateIrq();
  }

  #transmit(value: number): void {
    if (this.#mcr & MCR_LOOP) {
      // Loopback: the byte comes back to our own receiver.
      this.#receive(value);
    } else if (this.output) {
      this.#byte[0] = value;
      this.output.write(this.#byte);
    }
    this.#threPending = true;
    this.#updateIrq();
  }

  #receive(value: number): void {
    const depth = this.#fifoEnabled ? FIFO_SIZE : 1;
    if (this.#rxFifo.length >= depth) {
      this.#lsr |= LSR_OE;
      return;
    }
    this.#rxFifo.push(value);
    this.#lsr |= LSR_DR;
  }

  #fillFifo(): void {
    if (this.#mcr & MCR_LOOP) return; // host input waits while the UART talks to itself
    const depth = this.#fifoEnabled ? FIFO_SIZE : 1;
    while (this.#rxFifo.length < depth && this.#pendingInput.length > 0) {
      this.#rxFifo.push(this.#pendingInput.shift()!);
    }
    if (this.#rxFifo.length > 0) this.#lsr |= LSR_DR;
  }

  /** MSR with loopback wiring: CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2. */
  #modemStatus(): number {
    if (!(this.#mcr & MCR_LOOP)) return this.#msr;
    const m = this.#mcr;
    const lines = (m & MCR_RTS ? MSR_CTS : 0) | (m & MCR_DTR ? MSR_DSR : 0) |
      (m & MCR_OUT1 ? MSR_RI : 0) | (m & MCR_OUT2 ? MSR_DCD : 0);
    return lines | (this.#msr & 0x0f);
  }

  #noteModemChange(before: number, after: number): void {
    const changed = before ^ after;
    let delta = 0;
    if (changed & MSR_CTS) delta |= MSR_DCTS;
    if (changed & MSR_DSR) delta |= MSR_DDSR;
    if (changed & MSR_DCD) delta |= MSR_DDCD;
    if (before & MSR_RI && !(after & MSR_RI)) delta |= MSR_TERI;
    this.#msr = (this.#msr & 0xf0) | ((this.#msr | delta) & 0x0f);
  }

  #interruptId(): number {
    if (this.#ier & IER_RLSI && this.#lsr & LSR_OE) return IIR_RLSI;
    if (this.#ier & IER_RDI && this.#lsr & LSR_DR) return IIR_RDI;
    if (this.#ier & IER_THRI && this.#threPending) return IIR_THRI;
    if (this.#ier & IER_MSI && this.#msr & 0x0f) return IIR_MSI;
    return IIR_NO_INT;
  }

  #updateIrq(): void {
    this.irq.setLevel(this.#interruptId() !== IIR_NO_INT);
  }
}
