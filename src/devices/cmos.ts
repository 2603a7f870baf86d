// cmos.ts - the MC146818 RTC and CMOS RAM at ports 0x70 (index) and 0x71 (data).
import type { BusAccess, BusDevice } from "./bus.ts";

export const CMOS_INDEX_PORT = 0x70;
export const CMOS_DATA_PORT = 0x71;
const CMOS_SIZE = 128;
const INDEX_MASK = 0x7f; // bit 7 of the index port is the NMI disable bit

const RTC_SECONDS = 0x00;
const RTC_MINUTES = 0x02;
const RTC_HOURS = 0x04;
const RTC_DAY_OF_WEEK = 0x06;
const RTC_DAY_OF_MONTH = 0x07;
const RTC_MONTH = 0x08;
const RTC_YEAR = 0x09;
const RTC_REG_A = 0x0a;
const RTC_REG_B = 0x0b;
const RTC_REG_C = 0x0c;
const RTC_REG_D = 0x0d;
const CMOS_EXT_MEM_LOW = 0x30; // KiB above 1 MiB, up to 64 MiB
const CMOS_EXT_MEM_HIGH = 0x31;
const CMOS_MEM_ABOVE_16M_LOW = 0x34; // 64 KiB units between 16 MiB and the hole
const CMOS_MEM_ABOVE_16M_HIGH = 0x35;
const RTC_CENTURY = 0x32;
const CMOS_MEM_ABOVE_4G_LOW = 0x5b; // 64 KiB units above 4 GiB, three bytes
const REG_A_DIVIDER_32K = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
const REG_B_24H = 0x02;
const REG_B_BINARY = 0x04;
const REG_D_VALID_RAM = 0x80;
const MIB = 1024 * 1024;

/** Memory sizes the firmware would record in CMOS. */
export type CmosMemory = { readonly belowHole: number; readonly aboveFourGib: number };

/** The RTC reads the host's clock (UTC) at every access; writes to time registers are ignored. */
export class Cmos implements BusDevice {
  readonly debugLabel = "cmos";
  readonly #ram = new Uint8Array(CMOS_SIZE);
  #index = 0;

  constructor(memory: CmosMemory, readonly now: () => Date = () => new Date()) {
    const ram = this.#ram;
    ram[RTC_REG_A] = REG_A_DIVIDER_32K;
    ram[RTC_REG_B] = REG_B_24H;
    ram[RTC_REG_D] = REG_D_VALID_RAM;
    const extKib = Math.min(0xffff, Math.max(0, (Math.min(memory.belowHole, 64 * MIB) - MIB) / 1024));
    ram[CMOS_EXT_MEM_LOW] = extKib & 0xff;
    ram[CMOS_EXT_MEM_HIGH] = extKib >> 8;
    const above16 = Math.min(0xffff, Math.max(0, Math.floor((memory.belowHole - 16 * MIB) / 0x10000)));
    ram[CMOS_MEM_ABOVE_16M_LOW] = above16 & 0xff;
    ram[CMOS_MEM_ABOVE_16M_HIGH] = above16 >> 8;
    const above4g = Math.min(0xffffff, Math.floor(memory.aboveFourGib / 0x10000));
    ram[CMOS_MEM_ABOVE_4G_LOW] = above4g & 0xff;
    ram[CMOS_MEM_ABOVE_4G_LOW + 1] = (above4g >> 8) & 0xff;
    ram[CMOS_MEM_ABOVE_4G_LOW + 2] = above4g >> 16;
  }

  read(access: BusAccess, data: Uint8Array): void {
    data.fill(0);
    if (access.offset === CMOS_INDEX_PORT) data[0] = 0xff; // the index port is write-only
    else if (access.offset === CMOS_DATA_PORT) data[0] = this.#readRegister(this.#index);
  }

  write(access: BusAccess, data: Uint8Array): void {
    const value = data[0]!;
    if (access.offset === CMOS_INDEX_PORT) {
      this.#index = value & INDEX_MASK;
      return;
    }
    if (access.offset !== CMOS_DATA_PORT) return;
    switch (this.#index) {
      case RTC_SECONDS: case RTC_MINUTES: case RTC_HOURS: case RTC_DAY_OF_WEEK:
      case RTC_DAY_OF_MONTH: case RTC_MONTH: case RTC_YEAR: case RTC_CENTURY:
      case RTC_REG_C: case RTC_REG_D:
        return; // the clock follows the host; C and D are read-only
      case RTC_REG_A:
        this.#ram[RTC_REG_A] = value & 0x7f; // UIP (bit 7) is read-only
        return;
      default:
        this.#ram[this.#index] = value;
    }
  }

  #readRegister(index: number): number {
    const time = this.now();
    const binary = (this.#ram[RTC_REG_B]! & REG_B_BINARY) !== 0;
    const encode = (v: number): number => (binary ? v : ((Math.floor(v / 10) << 4) | (v % 10)));
    switch (index) {
      case RTC_SECONDS: return encode(time.getUTCSeconds());
      case RTC_MINUTES: return encode(time.getUTCMinutes());
      case RTC_HOURS: return this.#hours(time.getUTCHours(), encode);
      case RTC_DAY_OF_WEEK: return encode(time.getUTCDay() + 1);
      case RTC_DAY_OF_MONTH: return encode(time.getUTCDate());
      case RTC_MONTH: return encode(time.getUTCMonth() + 1);
      case RTC_YEAR: return encode(time.getUTCFullYear() % 100);
      case RTC_CENTURY: return encode(Math.floor(time.getUTCFullYear() / 100));
      case RTC_REG_C: {
        const value = this.#ram[RTC_REG_C]!;
        this.#ram[RTC_REG_C] = 0; // reading C acknowledges the RTC's interrupt flags
        return value;
      }
      default:
        return this.#ram[index]!;
    }
  }

  #hours(hours: number, encode: (v: number) => number): number {
    if (this.#ram[RTC_REG_B]! & REG_B_24H) return encode(hours);
    const pm = hours >= 12 ? 0x80 : 0;
    return encode(hours % 12 === 0 ? 12 : hours % 12) | pm;
  }
}
