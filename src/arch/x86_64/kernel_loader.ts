// kernel_loader.ts - loads a kernel of either format (ELF first, then bzImage, as crosvm does) and an initrd.
import { type GuestMemory, guestAddress, hex } from "../../memory/mod.ts";
import { isBzImage, loadBzImage } from "./bzimage.ts";
import { isElf, loadElf } from "./elf.ts";
import { type KernelLoadOptions, KernelLoaderError, type LoadedKernel } from "./kernel_image.ts";

const PAGE_SIZE = 4096;

/** Loads `image` as an ELF vmlinux, or as a bzImage when it is not ELF. */
export function loadKernel(memory: GuestMemory, image: Uint8Array, lowMemoryEnd: number, options: KernelLoadOptions = {}): LoadedKernel {
  if (isElf(image)) return loadElf(memory, image, options);
  if (isBzImage(image)) return loadBzImage(memory, image, lowMemoryEnd);
  throw new KernelLoaderError("not_a_kernel", "not a kernel: neither an ELF file nor a bzImage");
}

/** Places the initrd as high as the kernel allows, page aligned, above the kernel; returns its address. */
export function loadInitrd(memory: GuestMemory, kernel: LoadedKernel, initrd: Uint8Array, lowMemoryEnd: number): number {
  const top = Math.min(kernel.initrdAddressMax + 1, lowMemoryEnd);
  const address = Math.floor((top - initrd.byteLength) / PAGE_SIZE) * PAGE_SIZE;
  const kernelEnd = Math.ceil(kernel.end / PAGE_SIZE) * PAGE_SIZE;
  if (initrd.byteLength === 0 || address < 0) throw new KernelLoaderError("initrd_does_not_fit", "initrd is empty");
  if (address < kernelEnd) {
    throw new KernelLoaderError("initrd_does_not_fit", `initrd of ${initrd.byteLength} bytes does not fit between the kernel (ends ${hex(kernelEnd)}) and ${hex(top)}; give the VM more memory`);
  }
  memory.write(guestAddress(address), initrd);
  return address;
}
