// tap.ts - a TAP interface from /dev/net/tun with virtio-net headers (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).
import { sys } from "../../ffi/mod.ts";
import { checked, ERRNO } from "./errno.ts";
import { OwnedFd } from "./owned_fd.ts";

const O_RDWR = 2;
const O_NONBLOCK = 0o4000;
/** ioctl numbers from <linux/if_tun.h>: _IOW('T', n, int) and _IOR('T', n, unsigned int). */
const TUNSETIFF = 0x400454ca;
const TUNGETIFF = 0x800454d2;
const TUNSETOFFLOAD = 0x400454d0;
const TUNSETVNETHDRSZ = 0x400454d8;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFF_VNET_HDR = 0x4000;
/** struct ifreq: char ifr_name[IFNAMSIZ]; union { short ifr_flags; ... } (40 bytes). */
const IFREQ_SIZE = 40;
const IFNAMSIZ = 16;
/** TUN_F_* offload flags for TUNSETOFFLOAD. */
export const TUN_F = { CSUM: 0x01, TSO4: 0x02, TSO6: 0x04, TSO_ECN: 0x08, UFO: 0x10 } as const;

/** What virtio-net needs of a TAP device: frames in and out, and the kernel's offload settings. */
export interface FrameDevice {
  readonly fd: number;
  /** Reads one frame (with header); returns its length, 0 when none is waiting, or -errno. */
  read(buf: Uint8Array): number;
  /** Writes one frame (with header); returns false when it was refused. */
  write(frame: Uint8Array): boolean;
  setVnetHeaderSize(size: number): void;
  setOffload(flags: number): void;
}

/** An open TAP device. Reads and writes carry a virtio_net_hdr_v1 in front of each frame. */
export class Tap extends OwnedFd implements FrameDevice {
  readonly name: string;

  private constructor(fd: number, name: string) {
    super(fd);
    this.name = name;
  }

  /** Attaches to (or creates, with CAP_NET_ADMIN) the TAP interface `name`. */
  static open(name: string): Tap {
    if (name.length === 0 || name.length >= IFNAMSIZ) throw new Error(`failed to open tap "${name}": names are 1-15 characters`);
    const fd = sys.open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    try {
      const ifreq = new Uint8Array(IFREQ_SIZE);
      ifreq.set(new TextEncoder().encode(name));
      new DataView(ifreq.buffer).setUint16(IFNAMSIZ, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, true);
      checked(sys.ioctlPtr(fd, TUNSETIFF, ifreq), `attach to tap ${name}`);
      return new Tap(fd, name);
    } catch (e) {
      sys.close(fd);
      throw e;
    }
  }

  /** Creates a new TAP interface (the kernel picks the name from `pattern`) and gives it an IPv4 address, up. */
  static create(hostIp: Uint8Array, netmask: Uint8Array, pattern = "tsvm_tap%d"): Tap {
    const fd = sys.open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    try {
      const ifreq = new Uint8Array(IFREQ_SIZE);
      ifreq.set(new TextEncoder().encode(pattern));
      new DataView(ifreq.buffer).setUint16(IFNAMSIZ, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, true);
      checked(sys.ioctlPtr(fd, TUNSETIFF, ifreq), "create a tap");
      const end = ifreq.indexOf(0);
      const name = new TextDecoder().decode(ifreq.subarray(0, end));
      configureInterface(name, hostIp, netmask);
      return new Tap(fd, name);
    } catch (e) {
      sys.close(fd);
      throw e;
    }
  }

  /** Uses an already configured TAP fd (crosvm's tap-fd=N), checking that it is one. */
  static fromFd(fd: number): Tap {
    const ifreq = new Uint8Array(IFREQ_SIZE);
    checked(sys.ioctlPtr(fd, TUNGETIFF, ifreq), `use fd ${fd} as a tap`);
    const flags = new DataView(ifreq.buffer).getUint16(IFNAMSIZ, true);
    if (!(flags & IFF_TAP) || !(flags & IFF_VNET_HDR)) throw new Error(`failed to use fd ${fd} as a tap: it lacks IFF_TAP or IFF_VNET_HDR`);
    sys.addFileFlags(fd, O_NONBLOCK);
    const end = ifreq.indexOf(0);
    return new Tap(fd, new TextDecoder().decode(ifreq.subarray(0, end < 0 ? IFNAMSIZ : end)));
  }

  /** Sets the virtio-net header size the kernel reads and writes (12 for virtio 1.x). */
  setVnetHeaderSize(size: number): void {
    checked(sys.ioctlPtr(this.fd, TUNSETVNETHDRSZ, Int32Array.of(size)), `set vnet header size of ${this.name}`);
  }

  /** Tells the kernel which offloads the guest accepts (TUN_F_* flags). */
  setOffload(flags: number): void {
    checked(sys.ioctlVal(this.fd, TUNSETOFFLOAD, flags), `set offloads of ${this.name}`);
  }

  /** Reads one frame (with header); returns its length, 0 when none is waiting, or -errno. */
  read(buf: Uint8Array): number {
    for (;;) {
      const n = sys.readRaw(this.fd, buf);
      if (n === -ERRNO.EINTR) continue;
      return n === -ERRNO.EAGAIN ? 0 : n;
    }
  }

  /** Writes one frame (with header); returns false when the kernel refused it. */
  write(frame: Uint8Array): boolean {
    for (;;) {
      const n = sys.writeRaw(this.fd, frame);
      if (n === -ERRNO.EINTR) continue;
      return n === frame.byteLength;
    }
  }
}

const AF_INET = 2;
const SOCK_DGRAM = 2;
const SIOCGIFFLAGS = 0x8913;
const SIOCSIFFLAGS = 0x8914;
const SIOCSIFADDR = 0x8916;
const SIOCSIFNETMASK = 0x891c;
const IFF_UP = 0x1;

/** Sets an interface's IPv4 address and netmask and brings it up (SIOCSIF* ioctls; needs CAP_NET_ADMIN). */
function configureInterface(name: string, address: Uint8Array, netmask: Uint8Array): void {
  const sock = sys.socket(AF_INET, SOCK_DGRAM, 0);
  try {
    const request = (value: Uint8Array | null): Uint8Array => {
      const ifreq = new Uint8Array(IFREQ_SIZE);
      ifreq.set(new TextEncoder().encode(name));
      if (value) {
        new DataView(ifreq.buffer).setUint16(IFNAMSIZ, AF_INET, true); // struct sockaddr_in: family, port, addr
        ifreq.set(value, IFNAMSIZ + 4);
      }
      return ifreq;
    };
    checked(sys.ioctlPtr(sock, SIOCSIFADDR, request(address)), `set the address of ${name}`);
    checked(sys.ioctlPtr(sock, SIOCSIFNETMASK, request(netmask)), `set the netmask of ${name}`);
    const flags = request(null);
    checked(sys.ioctlPtr(sock, SIOCGIFFLAGS, flags), `read the flags of ${name}`);
    const v = new DataView(flags.buffer);
    v.setUint16(IFNAMSIZ, v.getUint16(IFNAMSIZ, true) | IFF_UP, true);
    checked(sys.ioctlPtr(sock, SIOCSIFFLAGS, flags), `bring ${name} up`);
  } finally {
    sys.close(sock);
  }
}
