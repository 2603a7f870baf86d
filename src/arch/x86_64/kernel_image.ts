// kernel_image.ts - what a kernel loader produces, and the error every loader raises.

/** How a kernel is loaded: `memoryIsZero` when guest memory is known to read as zeros (just made). */
export type KernelLoadOptions = { readonly memoryIsZero?: boolean };

/** A kernel image placed in guest memory. */
export type LoadedKernel = {
  readonly format: "elf" | "bzimage";
  /** 64-bit entry point (guest physical). */
  readonly entry: number;
  /** One past the highest byte the kernel may use while starting (init_size for a bzImage). */
  readonly end: number;
  /** The setup header to copy into the zero page (bzImage only). */
  readonly setupHeader: Uint8Array | null;
  /** Longest command line the kernel accepts, NUL included. */
  readonly cmdlineMaxSize: number;
  /** Highest address the initrd may end at (inclusive), per the kernel. */
  readonly initrdAddressMax: number;
};

export type KernelLoaderErrorKind =
  | "bad_elf_header"
  | "bad_program_headers"
  | "bad_setup_header"
  | "cmdline_too_long"
  | "does_not_fit"
  | "initrd_does_not_fit"
  | "not_a_kernel"
  | "truncated"
  | "unsupported";

/** A kernel or initrd that cannot be loaded; the message says what is wrong with it. */
export class KernelLoaderError extends Error {
  override readonly name = "KernelLoaderError";
  constructor(readonly kind: KernelLoaderErrorKind, message: string) {
    super(message);
  }
}
