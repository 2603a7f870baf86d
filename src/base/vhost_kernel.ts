// vhost_kernel.ts - a kernel vhost device (/dev/vhost-vsock): the ioctls that hand it guest memory
// and rings, so the kernel serves a virtio device's queues without the VMM (linux/vhost.h).
import { sys } from "../../ffi/mod.ts";
import { errnoName, SysError } from "./errno.ts";
import { OwnedFd } from "./owned_fd.ts";
import { err, ok, type Result } from "./result.ts";

const O_RDWR = 2;
/** _IO/_IOR/_IOW/_IOWR(0xAF, nr, size) from linux/vhost.h (test/base/vhost_kernel.test.ts checks them against gcc). */
export const VHOST_IOCTL = {
  GET_FEATURES: 0x8008af00,
  SET_FEATURES: 0x4008af00,
  SET_OWNER: 0xaf01,
  SET_MEM_TABLE: 0x4008af03,
  SET_VRING_NUM: 0x4008af10,
  SET_VRING_ADDR: 0x4028af11,
  SET_VRING_BASE: 0x4008af12,
  GET_VRING_BASE: 0xc008af12,
  SET_VRING_KICK: 0x4008af20,
  SET_VRING_CALL: 0x4008af21,
  SET_VRING_ERR: 0x4008af22,
  VSOCK_SET_GUEST_CID: 0x4008af60,
  VSOCK_SET_RUNNING: 0x4004af61,
} as const;

/** A region of guest memory as the kernel sees it: where it is in the guest and in this process. */
export type VhostRegion = { readonly guestAddress: bigint; readonly size: bigint; readonly userAddress: bigint };
/** A ring's three parts at addresses of this process. */
export type VhostRingAddresses = { readonly descriptor: bigint; readonly available: bigint; readonly used: bigint };

/** An open kernel vhost device owned by this process. Every call returns a Result naming the ioctl. */
export class VhostKernel extends OwnedFd {
  /** Opens `path` and makes this process its owner (its memory is what the kernel will access). */
  static open(path: string): Result<VhostKernel> {
    let fd: number;
    try {
      fd = sys.open(path, O_RDWR);
    } catch (e) {
      return err(e instanceof SysError ? errnoName(e.errno) : String(e));
    }
    const device = new VhostKernel(fd);
    const owned = device.#call("VHOST_SET_OWNER", sys.ioctlVal(fd, VHOST_IOCTL.SET_OWNER, 0));
    if (!owned.ok) {
      device.close();
      return owned;
    }
    return ok(device);
  }

  features(): Result<bigint> {
    const out = new BigUint64Array(1);
    const r = this.#call("VHOST_GET_FEATURES", sys.ioctlPtr(this.fd, VHOST_IOCTL.GET_FEATURES, out));
    return r.ok ? ok(out[0]!) : r;
  }

  setFeatures(features: bigint): Result<null> {
    return this.#call("VHOST_SET_FEATURES", sys.ioctlPtr(this.fd, VHOST_IOCTL.SET_FEATURES, BigUint64Array.of(features)));
  }

  setMemTable(regions: readonly VhostRegion[]): Result<null> {
    const table = new BigUint64Array(1 + regions.length * 4);
    new DataView(table.buffer).setUint32(0, regions.length, true);
    regions.forEach((r, i) => table.set([r.guestAddress, r.size, r.userAddress, 0n], 1 + i * 4));
    return this.#call("VHOST_SET_MEM_TABLE", sys.ioctlPtr(this.fd, VHOST_IOCTL.SET_MEM_TABLE, table));
  }

  setVringNum(index: number, size: number): Result<null> {
    return this.#call("VHOST_SET_VRING_NUM", sys.ioctlPtr(this.fd, VHOST_IOCTL.SET_VRING_NUM, Int32Array.of(index, size)));
  }

  setVringBase(index: number, base: number): Result<null> {
    return this.#call("VHOST_SET_VRING_BASE", sys.ioctlPtr(this.fd, VHOST_IOCTL.SET_VRING_BASE, Int32Array.of(index, base)));
  }

  /** Stops the ring and returns where the kernel stopped in it. */
  getVringBase(index: number): Result<number> {
    const state = Int32Array.of(index, 0);
    const r = this.#call("VHOST_GET_VRING_BASE", sys.ioctlPtr(this.fd, VHOST_IOCTL.GET_VRING_BASE, state));
    return r.ok ? ok(state[1]! & 0xffff) : r;
  }

  setVringAddr(index: number, a: VhostRingAddresses): Result<null> {
    const addr = new BigUint64Array(5);
    new DataView(addr.buffer).setUint32(0, index, true); // index, flags 0
    addr.set([a.descriptor, a.used, a.available, 0n], 1);
    return this.#call("VHOST_SET_VRING_ADDR", sys.ioctlPtr(this.fd, VHOST_IOCTL.SET_VRING_ADDR, addr));
  }

  /** The eventfd the guest's notifications arrive on (-1: none). */
  setVringKick(index: number, fd: number): Result<null> {
    return this.#call("VHOST_SET_VRING_KICK", sys.ioctlPtr(this.fd, VHOST_IOCTL.SET_VRING_KICK, Int32Array.of(index, fd)));
  }

  /** The eventfd the kernel signals to interrupt the guest (-1: none). */
  setVringCall(index: number, fd: number): Result<null> {
    return this.#call("VHOST_SET_VRING_CALL", sys.ioctlPtr(this.fd, VHOST_IOCTL.SET_VRING_CALL, Int32Array.of(index, fd)));
  }

  /** The eventfd the kernel signals when the guest broke a ring (-1: none). */
  setVringErr(index: number, fd: number): Result<null> {
    return this.#call("VHOST_SET_VRING_ERR", sys.ioctlPtr(this.fd, VHOST_IOCTL.SET_VRING_ERR, Int32Array.of(index, fd)));
  }

  vsockSetGuestCid(cid: number): Result<null> {
    return this.#call("VHOST_VSOCK_SET_GUEST_CID", sys.ioctlPtr(this.fd, VHOST_IOCTL.VSOCK_SET_GUEST_CID, BigUint64Array.of(BigInt(cid))));
  }

  vsockSetRunning(running: boolean): Result<null> {
    return this.#call("VHOST_VSOCK_SET_RUNNING", sys.ioctlPtr(this.fd, VHOST_IOCTL.VSOCK_SET_RUNNING, Int32Array.of(running ? 1 : 0)));
  }

  #call(name: string, r: number): Result<null> {
    return r < 0 ? err(`${name}: ${errnoName(-r)}`) : ok(null);
  }
}
