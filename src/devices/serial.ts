// serial.ts - a 16550A UART (8250 family) as Linux's 8250 driver and early console use it.
//
// Registers (offset from the base port; DLAB = LCR bit 7):
//   0 RBR (read) / THR (write) / DLL (DLAB)    4 MCR
//   1 IER / DLM (DLAB)                         5 LSR
//   2 IIR (read) / FCR (write)                 6 MSR
//   3 LCR                                      7 SCR (scratch)
// Transmission takes as long as writing the byte to the output: the thread whose THR write it was
// writes it after releasing the lock, THR reads as busy (LSR) meanwhile, and the THR-empty interrupt
// follows. So a stalled output reader holds up one vCPU, never the UART or the control loop.
//
// The whole state lives in a SharedArrayBuffer behind a lock, so every vCPU runner serves the UART
// itself (output written from the vCPU thread, the interrupt line driven from there) and the control
// loop only feeds host input: a byte of console output costs no thread hop (see src/vcpu/worker_bus.ts).
//
// State (Int32 words): lock, the registers, flags, the IRQ level, the receive FIFO and the host-input
// ring (head, count); then the FIFO's 16 bytes and the ring's bytes.
import { RateLimitedLog } from "../base/log.ts";
import type { WorkerView } from "../vcpu/worker_bus.ts";
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
/** Host input waiting for the guest; the stdin pump keeps the rest and offers it again. */
const INPUT_CAPACITY = 4096;
/** How long a thread waits for the UART's lock before giving up on one access (a vCPU that stopped holding it). */
const LOCK_TIMEOUT_MS = 1000;

const S_LOCK = 0;
const S_IER = 1;
const S_LCR = 2;
const S_MCR = 3;
const S_LSR = 4;
const S_MSR = 5;
const S_SCR = 6;
const S_DLL = 7;
const S_DLM = 8;
const S_FIFO_ENABLED = 9;
const S_THRE_PENDING = 10;
const S_IRQ_LEVEL = 11;
const S_RX_HEAD = 12;
const S_RX_COUNT = 13;
const S_IN_HEAD = 14;
const S_IN_COUNT = 15;
const STATE_WORDS = 16;
const RX_OFFSET = STATE_WORDS * 4;
const INPUT_OFFSET = RX_OFFSET + FIFO_SIZE;
/** Bytes of shared state one UART needs. */
export const SERIAL_STATE_SIZE = INPUT_OFFSET + INPUT_CAPACITY;

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
  /** The fd behind it, when a vCPU runner may write to it directly. */
  readonly fd?: number;
}

/**
 * A 16550A UART with an optional output and host input queued by `queueInput`. Several instances
 * over one `state` buffer (one per thread) are one UART; `irq` is driven only when the shared level
 * changes, so it must not filter by itself (give each thread a plain setter).
 */
export class Serial implements BusDevice {
  readonly debugLabel: string;
  readonly state: SharedArrayBuffer;
  readonly #s: Int32Array;
  readonly #rx: Uint8Array;
  readonly #input: Uint8Array;
  readonly #byte = new Uint8Array(1);
  /** The byte a THR write is sending (this instance's thread writes it once unlocked), or -1. */
  #sending = -1;
  readonly #lockErrors = new RateLimitedLog("warn");
  #gsi = -1;

  constructor(label: string, readonly irq: IrqLine, readonly output: SerialOutput | null, state?: SharedArrayBuffer) {
    this.debugLabel = label;
    this.state = state ?? new SharedArrayBuffer(SERIAL_STATE_SIZE);
    this.#s = new Int32Array(this.state, 0, STATE_WORDS);
    this.#rx = new Uint8Array(this.state, RX_OFFSET, FIFO_SIZE);
    this.#input = new Uint8Array(this.state, INPUT_OFFSET, INPUT_CAPACITY);
    if (state === undefined) {
      const s = this.#s;
      s[S_LCR] = 0x03; // 8N1
      s[S_MCR] = MCR_OUT2;
      s[S_LSR] = LSR_THRE | LSR_TEMT;
      s[S_MSR] = MSR_DEFAULT;
      s[S_DLL] = DEFAULT_DIVISOR;
    }
  }

  /** Lets vCPU runners serve this UART, raising GSI `gsi` themselves. */
  shareWithVcpus(gsi: number): void {
    this.#gsi = gsi;
  }

  get workerView(): WorkerView | null {
    if (this.#gsi < 0) return null;
    return { kind: "serial", state: this.state, label: this.debugLabel, outputFd: this.output?.fd ?? null, gsi: this.#gsi };
  }

  /** Queues host bytes for the guest to read; returns how many were accepted. */
  queueInput(bytes: Uint8Array): number {
    if (!this.#lock()) return 0;
    try {
      const s = this.#s;
      const accepted = Math.min(INPUT_CAPACITY - s[S_IN_COUNT]!, bytes.byteLength);
      for (let i = 0; i < accepted; i++) this.#input[(s[S_IN_HEAD]! + s[S_IN_COUNT]! + i) % INPUT_CAPACITY] = bytes[i]!;
      s[S_IN_COUNT] = s[S_IN_COUNT]! + accepted;
      this.#fillFifo();
      this.#updateIrq();
      return accepted;
    } finally {
      this.#unlock();
    }
  }

  read(access: BusAccess, data: Uint8Array): void {
    data.fill(0);
    if (!this.#lock()) {
      data[0] = 0xff;
      return;
    }
    try {
      data[0] = this.#readRegister(access.offset);
    } finally {
      this.#unlock();
    }
  }

  write(access: BusAccess, data: Uint8Array): void {
    if (!this.#lock()) return;
    try {
      this.#writeRegister(access.offset, data[0]!);
    } finally {
      this.#unlock();
    }
    if (this.#sending >= 0) this.#finishTransmit();
  }

  /**
   * Writes the byte a THR write left in `#sending`, outside the lock: output that blocks (a reader
   * that stopped reading) holds up this vCPU alone, as a busy transmitter would, while other threads
   * keep using the UART (they see LSR's THR-empty bits clear until the byte is out). The THR-empty
   * interrupt follows the write, so a driver that sends on that interrupt keeps its bytes in order.
   */
  #finishTransmit(): void {
    this.#byte[0] = this.#sending;
    this.#sending = -1;
    this.output!.write(this.#byte);
    if (!this.#lock()) return;
    try {
      const s = this.#s;
      s[S_LSR] = s[S_LSR]! | LSR_THRE | LSR_TEMT;
      s[S_THRE_PENDING] = 1;
      this.#updateIrq();
    } finally {
      this.#unlock();
    }
  }

  /** Takes the lock (a futex-style mutex: 0 free, 1 held, 2 held with waiters); false after LOCK_TIMEOUT_MS. */
  #lock(): boolean {
    const s = this.#s;
    if (Atomics.compareExchange(s, S_LOCK, 0, 1) === 0) return true;
    const deadline = performance.now() + LOCK_TIMEOUT_MS;
    while (Atomics.exchange(s, S_LOCK, 2) !== 0) {
      if (performance.now() > deadline) {
        this.#lockErrors.log(`${this.debugLabel}: its lock was held for over ${LOCK_TIMEOUT_MS} ms; one access dropped`);
        return false;
      }
      Atomics.wait(s, S_LOCK, 2, 50);
    }
    return true;
  }

  #unlock(): void {
    if (Atomics.exchange(this.#s, S_LOCK, 0) === 2) Atomics.notify(this.#s, S_LOCK, 1);
  }

  #readRegister(offset: number): number {
    const s = this.#s;
    switch (offset) {
      case DATA: {
        if (s[S_LCR]! & LCR_DLAB) return s[S_DLL]!;
        const value = this.#rxShift();
        this.#fillFifo();
        if (s[S_RX_COUNT] === 0) s[S_LSR] = s[S_LSR]! & ~LSR_DR;
        this.#updateIrq();
        return value;
      }
      case IER:
        return s[S_LCR]! & LCR_DLAB ? s[S_DLM]! : s[S_IER]!;
      case IIR_FCR: {
        const id = this.#interruptId();
        // Reading IIR while it reports THRE acknowledges that interrupt (16550 datasheet).
        if (id === IIR_THRI) s[S_THRE_PENDING] = 0;
        this.#updateIrq();
        return id | (s[S_FIFO_ENABLED] ? IIR_FIFO_ENABLED : 0);
      }
      case LCR:
        return s[S_LCR]!;
      case MCR:
        return s[S_MCR]!;
      case LSR: {
        const value = s[S_LSR]!;
        s[S_LSR] = value & ~LSR_OE; // overrun is cleared by reading LSR
        this.#updateIrq();
        return value;
      }
      case MSR: {
        const value = this.#modemStatus();
        s[S_MSR] = s[S_MSR]! & ~(MSR_DCTS | MSR_DDSR | MSR_TERI | MSR_DDCD);
        this.#updateIrq();
        return value;
      }
      case SCR:
        return s[S_SCR]!;
      default:
        return 0xff;
    }
  }

  #writeRegister(offset: number, value: number): void {
    const s = this.#s;
    switch (offset) {
      case DATA:
        if (s[S_LCR]! & LCR_DLAB) {
          s[S_DLL] = value;
          return;
        }
        this.#transmit(value);
        return;
      case IER:
        if (s[S_LCR]! & LCR_DLAB) {
          s[S_DLM] = value;
          return;
        }
        // Enabling THRI with an empty THR raises the interrupt at once, as the 16550 does.
        if (!(s[S_IER]! & IER_THRI) && value & IER_THRI && s[S_LSR]! & LSR_THRE) s[S_THRE_PENDING] = 1;
        s[S_IER] = value & IER_MASK;
        break;
      case IIR_FCR:
        s[S_FIFO_ENABLED] = value & FCR_ENABLE_FIFO ? 1 : 0;
        if (value & FCR_CLEAR_RCVR || !s[S_FIFO_ENABLED]) {
          s[S_RX_COUNT] = 0;
          s[S_LSR] = s[S_LSR]! & ~LSR_DR;
          this.#fillFifo();
        }
        break;
      case LCR:
        s[S_LCR] = value;
        return;
      case MCR: {
        const before = this.#modemStatus();
        s[S_MCR] = value & MCR_MASK;
        const after = this.#modemStatus();
        this.#noteModemChange(before, after);
        break;
      }
      case LSR:
      case MSR:
        return; // read-only (factory test registers on some parts)
      case SCR:
        s[S_SCR] = value;
        return;
      default:
        return;
    }
    this.#updateIrq();
  }

  #transmit(value: number): void {
    const s = this.#s;
    if (!(s[S_MCR]! & MCR_LOOP) && this.output) {
      // The transmitter is busy until write() has sent the byte, after the lock (#finishTransmit).
      this.#sending = value;
      s[S_LSR] = s[S_LSR]! & ~(LSR_THRE | LSR_TEMT);
      s[S_THRE_PENDING] = 0;
      this.#updateIrq();
      return;
    }
    // Loopback: the byte comes back to our own receiver; with no output it is gone at once.
    if (s[S_MCR]! & MCR_LOOP) this.#receive(value);
    s[S_THRE_PENDING] = 1;
    this.#updateIrq();
  }

  #depth(): number {
    return this.#s[S_FIFO_ENABLED] ? FIFO_SIZE : 1;
  }

  #rxPush(value: number): void {
    const s = this.#s;
    this.#rx[(s[S_RX_HEAD]! + s[S_RX_COUNT]!) % FIFO_SIZE] = value;
    s[S_RX_COUNT] = s[S_RX_COUNT]! + 1;
  }

  #rxShift(): number {
    const s = this.#s;
    if (s[S_RX_COUNT] === 0) return 0;
    const value = this.#rx[s[S_RX_HEAD]!]!;
    s[S_RX_HEAD] = (s[S_RX_HEAD]! + 1) % FIFO_SIZE;
    s[S_RX_COUNT] = s[S_RX_COUNT]! - 1;
    return value;
  }

  #receive(value: number): void {
    const s = this.#s;
    if (s[S_RX_COUNT]! >= this.#depth()) {
      s[S_LSR] = s[S_LSR]! | LSR_OE;
      return;
    }
    this.#rxPush(value);
    s[S_LSR] = s[S_LSR]! | LSR_DR;
  }

  #fillFifo(): void {
    const s = this.#s;
    if (s[S_MCR]! & MCR_LOOP) return; // host input waits while the UART talks to itself
    const depth = this.#depth();
    while (s[S_RX_COUNT]! < depth && s[S_IN_COUNT]! > 0) {
      this.#rxPush(this.#input[s[S_IN_HEAD]!]!);
      s[S_IN_HEAD] = (s[S_IN_HEAD]! + 1) % INPUT_CAPACITY;
      s[S_IN_COUNT] = s[S_IN_COUNT]! - 1;
    }
    if (s[S_RX_COUNT]! > 0) s[S_LSR] = s[S_LSR]! | LSR_DR;
  }

  /** MSR with loopback wiring: CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2. */
  #modemStatus(): number {
    const s = this.#s;
    const m = s[S_MCR]!;
    if (!(m & MCR_LOOP)) return s[S_MSR]!;
    const lines = (m & MCR_RTS ? MSR_CTS : 0) | (m & MCR_DTR ? MSR_DSR : 0) |
      (m & MCR_OUT1 ? MSR_RI : 0) | (m & MCR_OUT2 ? MSR_DCD : 0);
    return lines | (s[S_MSR]! & 0x0f);
  }

  #noteModemChange(before: number, after: number): void {
    const changed = before ^ after;
    let delta = 0;
    if (changed & MSR_CTS) delta |= MSR_DCTS;
    if (changed & MSR_DSR) delta |= MSR_DDSR;
    if (changed & MSR_DCD) delta |= MSR_DDCD;
    if (before & MSR_RI && !(after & MSR_RI)) delta |= MSR_TERI;
    const msr = this.#s[S_MSR]!;
    this.#s[S_MSR] = (msr & 0xf0) | ((msr | delta) & 0x0f);
  }

  #interruptId(): number {
    const s = this.#s;
    const ier = s[S_IER]!;
    if (ier & IER_RLSI && s[S_LSR]! & LSR_OE) return IIR_RLSI;
    if (ier & IER_RDI && s[S_LSR]! & LSR_DR) return IIR_RDI;
    if (ier & IER_THRI && s[S_THRE_PENDING]) return IIR_THRI;
    if (ier & IER_MSI && s[S_MSR]! & 0x0f) return IIR_MSI;
    return IIR_NO_INT;
  }

  #updateIrq(): void {
    const level = this.#interruptId() !== IIR_NO_INT ? 1 : 0;
    if (this.#s[S_IRQ_LEVEL] === level) return;
    this.#s[S_IRQ_LEVEL] = level;
    this.irq.setLevel(level === 1);
  }
}
