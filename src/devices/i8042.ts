// i8042.ts - the PC keyboard controller, enough for Linux's probe and the 0xfe CPU reset command.
//
// Ports: 0x60 data, 0x64 status (read) / command (write). No keyboard or mouse is attached:
// commands for them get no answer, as with an empty port.
import type { BusAccess, BusDevice } from "./bus.ts";

export const I8042_DATA_PORT = 0x60;
export const I8042_COMMAND_PORT = 0x64;

const STATUS_OBF = 0x01; // output buffer full
const STATUS_SYS = 0x04; // system flag: self test passed
const STATUS_CMD = 0x08; // last write was a command
const CMD_READ_CTR = 0x20;
const CMD_WRITE_CTR = 0x60;
const CMD_AUX_DISABLE = 0xa7;
const CMD_AUX_ENABLE = 0xa8;
const CMD_AUX_TEST = 0xa9;
const CMD_SELF_TEST = 0xaa;
const CMD_KBD_TEST = 0xab;
const CMD_KBD_DISABLE = 0xad;
const CMD_KBD_ENABLE = 0xae;
const CMD_READ_OUTPUT = 0xd0;
const CMD_WRITE_OUTPUT = 0xd1;
const CMD_RESET_CPU = 0xfe;
const SELF_TEST_OK = 0x55;
const PORT_TEST_OK = 0x00;
const CTR_KBD_DISABLED = 0x10;
const CTR_AUX_DISABLED = 0x20;
const CTR_XLATE = 0x40;
/** Output port bit 0 low holds the CPU in reset; bit 1 is the A20 gate. */
const OUTPUT_PORT_RESET_BIT = 0x01;
const OUTPUT_PORT_DEFAULT = 0x03;

/** The i8042; `onReset` runs when the guest asks for a CPU reset. */
export class I8042 implements BusDevice {
  readonly debugLabel = "i8042";
  #status = STATUS_SYS;
  #ctr = CTR_XLATE | CTR_AUX_DISABLED;
  #outputPort = OUTPUT_PORT_DEFAULT;
  #pendingCommand = 0;
  #output = 0;

  constructor(readonly onReset: () => void) {}

  read(access: BusAccess, data: Uint8Array): void {
    data.fill(0);
    if (access.offset === I8042_COMMAND_PORT) {
      data[0] = this.#status;
    } else if (access.offset === I8042_DATA_PORT) {
      data[0] = this.#output;
      this.#status &= ~STATUS_OBF;
    }
  }

  write(access: BusAccess, data: Uint8Array): void {
    const value = data[0]!;
    if (access.offset === I8042_COMMAND_PORT) this.#command(value);
    else if (access.offset === I8042_DATA_PORT) this.#data(value);
  }

  #reply(value: number): void {
    this.#output = value;
    this.#status |= STATUS_OBF;
  }

  #command(command: number): void {
    this.#status |= STATUS_CMD;
    this.#pendingCommand = 0;
    switch (command) {
      case CMD_READ_CTR:
        return this.#reply(this.#ctr);
      case CMD_WRITE_CTR:
      case CMD_WRITE_OUTPUT:
        this.#pendingCommand = command;
        return;
      case CMD_AUX_DISABLE:
        this.#ctr |= CTR_AUX_DISABLED;
        return;
      case CMD_AUX_ENABLE:
        this.#ctr &= ~CTR_AUX_DISABLED;
        return;
      case CMD_AUX_TEST:
      case CMD_KBD_TEST:
        return this.#reply(PORT_TEST_OK);
      case CMD_SELF_TEST:
        return this.#reply(SELF_TEST_OK);
      case CMD_KBD_DISABLE:
        this.#ctr |= CTR_KBD_DISABLED;
        return;
      case CMD_KBD_ENABLE:
        this.#ctr &= ~CTR_KBD_DISABLED;
        return;
      case CMD_READ_OUTPUT:
        return this.#reply(this.#outputPort);
      case CMD_RESET_CPU:
        this.onReset();
        return;
      default:
        return; // unknown commands are ignored, as on most chipsets
    }
  }

  #data(value: number): void {
    this.#status &= ~STATUS_CMD;
    const command = this.#pendingCommand;
    this.#pendingCommand = 0;
    if (command === CMD_WRITE_CTR) {
      this.#ctr = value;
    } else if (command === CMD_WRITE_OUTPUT) {
      this.#outputPort = value;
      if (!(value & OUTPUT_PORT_RESET_BIT)) this.onReset();
    }
    // Otherwise the byte is for the keyboard, and no keyboard is attached.
  }
}
