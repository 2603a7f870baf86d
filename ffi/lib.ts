// lib.ts - loads libtsvm.so once (from a memfd inside the single executable) and declares every symbol.
import { dlopen, FFIType, ptr } from "bun:ffi";
import embeddedLibrary from "../build/libtsvm.so" with { type: "file" };
// LIBRARY_ENV names the memfd holding the library, so Workers of the same process open it instead of
// copying again; DEVICE_LIBRARY_FD_ENV gives a device process the VMM's memfd as an fd.
import { DEVICE_LIBRARY_FD_ENV, LIBRARY_ENV } from "../src/base/in_process_jsc.ts";

const { i32, i64, u32, u64, ptr: pointer, cstring } = FFIType;

/** The C functions of libtsvm.so, grouped by the C file that defines them. */
const symbols = {
  // sys.c
  tsvm_open: { args: [cstring, i32, i32], returns: i32 },
  tsvm_lstat: { args: [cstring, pointer], returns: i32 },
  tsvm_unlink: { args: [cstring], returns: i32 },
  tsvm_close: { args: [i32], returns: i32 },
  tsvm_read: { args: [i32, pointer, u64], returns: FFIType.i64_fast },
  tsvm_write: { args: [i32, pointer, u64], returns: FFIType.i64_fast },
  tsvm_pread: { args: [i32, pointer, u64, i64], returns: FFIType.i64_fast },
  tsvm_pwrite: { args: [i32, pointer, u64, i64], returns: FFIType.i64_fast },
  tsvm_fstat_size: { args: [i32, pointer], returns: i32 },
  tsvm_fstat: { args: [i32, pointer], returns: i32 },
  tsvm_ioctl_ptr: { args: [i32, u64, pointer], returns: i32 },
  tsvm_ioctl_val: { args: [i32, u64, u64], returns: i32 },
  tsvm_memfd_create: { args: [cstring, u32], returns: i32 },
  tsvm_ftruncate: { args: [i32, i64], returns: i32 },
  tsvm_mmap: { args: [pointer, u64, i32, i32, i32, i64], returns: i32 },
  tsvm_munmap: { args: [u64, u64], returns: i32 },
  tsvm_madvise: { args: [u64, u64, i32], returns: i32 },
  tsvm_sched_slice: { args: [i32, u64], returns: i32 },
  tsvm_mmap_aligned: { args: [pointer, u64, i32, i32, i32, i64, u64], returns: i32 },
  tsvm_huge_range_add: { args: [u64, u64], returns: i32 },
  tsvm_huge_range_remove: { args: [u64, u64], returns: FFIType.void },
  tsvm_fcntl_setfl: { args: [i32, i32], returns: i32 },
  tsvm_fcntl_int: { args: [i32, i32, i32], returns: i32 },
  tsvm_dup: { args: [i32], returns: i32 },
  tsvm_getpid: { args: [], returns: i32 },
  tsvm_gettid: { args: [], returns: i32 },
  tsvm_getrandom: { args: [pointer, u64], returns: FFIType.i64_fast },
  tsvm_fdatasync: { args: [i32], returns: i32 },
  tsvm_fallocate: { args: [i32, i32, i64, i64], returns: i32 },
  tsvm_flock: { args: [i32, i32], returns: i32 },
  tsvm_socket: { args: [i32, i32, i32], returns: i32 },
  tsvm_pipe: { args: [pointer], returns: i32 },
  // vcpu.c
  tsvm_vcpu_bind: { args: [u64], returns: i32 },
  tsvm_vcpu_run: { args: [i32], returns: i32 },
  tsvm_vcpu_thread_start: { args: [i32, i32, u64, pointer, pointer, i32], returns: i32 },
  tsvm_vcpu_answer: { args: [pointer, i32], returns: i32 },
  tsvm_vcpu_wait_exit: { args: [pointer, pointer, i32, i32, i32, i32, i32, pointer], returns: i32 },
  tsvm_bell_init: { args: [pointer, i32], returns: i32 },
  tsvm_kick_install: { args: [i32], returns: i32 },
  tsvm_kick: { args: [i32, i32, i32], returns: i32 },
  tsvm_sigrtmin: { args: [], returns: i32 },
  tsvm_vcpu_main_setup: { args: [i32, i32], returns: i32 },
  tsvm_kick_consume: { args: [i32], returns: i32 },
  tsvm_write_kickable: { args: [i32, pointer, u64, i32], returns: FFIType.i64_fast },
  tsvm_waker_start: { args: [i32, i32, i32, i32], returns: pointer },
  tsvm_waker_phase: { args: [pointer, i32], returns: i32 },
  tsvm_waker_stop: { args: [pointer], returns: i32 },
  // event.c
  tsvm_eventfd: { args: [u32, i32], returns: i32 },
  tsvm_eventfd_write: { args: [i32, u64], returns: i32 },
  tsvm_eventfd_read: { args: [i32, pointer], returns: i32 },
  tsvm_eventfd_check: { args: [i32], returns: i32 },
  tsvm_epoll_create: { args: [], returns: i32 },
  tsvm_epoll_ctl: { args: [i32, i32, i32, u32, u64], returns: i32 },
  tsvm_epoll_wait: { args: [i32, pointer, i32, i32], returns: i32 },
  tsvm_epoll_wait_polled: { args: [i32, pointer, i32, i32, pointer], returns: i32 },
  tsvm_timerfd_create: { args: [], returns: i32 },
  tsvm_timerfd_set: { args: [i32, u64], returns: i32 },
  tsvm_signal_notify: { args: [i32, i32], returns: i32 },
  tsvm_signal_default: { args: [i32], returns: i32 },
  // term.c
  tsvm_term_raw: { args: [i32, pointer, u64], returns: i32 },
  tsvm_term_restore: { args: [i32, pointer, u64], returns: i32 },
  tsvm_isatty: { args: [i32], returns: i32 },
  // socket.c
  tsvm_socketpair: { args: [i32, pointer], returns: i32 },
  tsvm_send_with_fds: { args: [i32, pointer, u64, pointer, i32, i32], returns: FFIType.i64_fast },
  tsvm_recv_with_fds: { args: [i32, pointer, u64, pointer, i32, pointer, i32], returns: FFIType.i64_fast },
  tsvm_unix_listen: { args: [cstring, i32], returns: i32 },
  tsvm_unix_connect: { args: [cstring, i32], returns: i32 },
  tsvm_accept: { args: [i32], returns: i32 },
  tsvm_set_send_buffer: { args: [i32, i32], returns: i32 },
  tsvm_wait_readable: { args: [i32, i32], returns: i32 },
  tsvm_poll: { args: [i32, i32, i32], returns: i32 },
  tsvm_shutdown: { args: [i32, i32], returns: i32 },
  // jail.c
  tsvm_spawn_jailed: { args: [cstring, pointer, pointer, pointer, i32, i32, u32], returns: i32 },
  tsvm_spawn_jailed_start: { args: [cstring, pointer, pointer, pointer, i32, i32, u32, pointer], returns: i32 },
  tsvm_spawn_jailed_finish: { args: [pointer], returns: i32 },
  tsvm_lockdown: { args: [pointer, u64, u64], returns: i32 },
  tsvm_execve: { args: [cstring, pointer, pointer], returns: i32 },
  tsvm_waitpid: { args: [i32, pointer, i32], returns: i32 },
  // aio.c
  tsvm_aio_create: { args: [i32, i32, i32, i32], returns: pointer },
  tsvm_aio_submit: { args: [pointer, i32, i32, pointer, i32, i64, u32, u32], returns: i32 },
  tsvm_aio_reap: { args: [pointer, pointer, i32], returns: i32 },
  tsvm_aio_wait_idle: { args: [pointer], returns: i32 },
  tsvm_aio_kernel_requests: { args: [pointer], returns: i32 },
  tsvm_aio_kernel_calls: { args: [pointer], returns: i32 },
  tsvm_aio_batch: { args: [pointer, i32], returns: FFIType.void },
  tsvm_aio_offload: { args: [pointer, i32], returns: FFIType.void },
  tsvm_aio_threads_only: { args: [pointer, i32], returns: FFIType.void },
  tsvm_aio_kernel_offloaded_calls: { args: [pointer], returns: i32 },
  tsvm_aio_threads: { args: [pointer], returns: i32 },
  tsvm_aio_destroy: { args: [pointer], returns: FFIType.void },
  tsvm_dio_probe_align: { args: [i32], returns: i32 },
  tsvm_disk_transfer: { args: [i32, pointer, i32, i64, u32, i32], returns: i32 },
  tsvm_disk_try: { args: [i32, pointer, i32, i64, i32], returns: i32 },
} as const;

/**
 * Copies the embedded library into a memfd so dlopen needs no writable temp directory. The memfd is
 * then sealed against writes and reopened read-only, so nothing in this process (a compromised
 * device, say) can rewrite the code it runs. A device process gets its VMM's memfd as an fd instead
 * of copying again: the copy (and the file module it takes) cost each device ~0.5 MiB that stayed.
 */
function libraryPath(): string {
  if (!Bun.isStandaloneExecutable) return embeddedLibrary;
  const passed = process.env[DEVICE_LIBRARY_FD_ENV];
  if (passed !== undefined && /^[0-9]{1,4}$/.test(passed)) {
    delete process.env[DEVICE_LIBRARY_FD_ENV];
    return `/proc/self/fd/${passed}`;
  }
  const inherited = process.env[LIBRARY_ENV];
  if (inherited?.startsWith(`/proc/${process.pid}/fd/`)) return inherited;
  const libc = dlopen("libc.so.6", {
    memfd_create: { args: [cstring, u32], returns: i32 },
    write: { args: [i32, pointer, u64], returns: FFIType.i64_fast },
    fcntl: { args: [i32, i32, i32], returns: i32 },
    open: { args: [cstring, i32], returns: i32 },
    close: { args: [i32], returns: i32 },
  });
  const bytes = new Uint8Array(require("node:fs").readFileSync(embeddedLibrary));
  const MFD_CLOEXEC = 1;
  const MFD_ALLOW_SEALING = 2;
  const F_ADD_SEALS = 1033;
  const SEALS = 1 | 2 | 4 | 8; // F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE
  const O_RDONLY_CLOEXEC = 0o2000000;
  // MFD_EXEC: where vm.memfd_noexec is 1, a memfd is otherwise sealed against being mapped
  // executable, and dlopen would fail. Kernels before 6.3 know no MFD_EXEC (EINVAL): ask again
  // without it, which there gives an executable memfd anyway.
  const MFD_EXEC = 0x10;
  const name = Buffer.from("libtsvm.so\0");
  let fd = libc.symbols.memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
  if (fd < 0) fd = libc.symbols.memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) throw new Error("failed to create a memfd for libtsvm.so (with vm.memfd_noexec = 2 the host allows no executable memfd)");
  let done = 0;
  while (done < bytes.length) {
    const n = Number(libc.symbols.write(fd, ptr(bytes, done), bytes.length - done));
    if (n <= 0) throw new Error("failed to copy libtsvm.so into a memfd");
    done += n;
  }
  if (libc.symbols.fcntl(fd, F_ADD_SEALS, SEALS) < 0) throw new Error("failed to seal the memfd of libtsvm.so");
  const readOnly = libc.symbols.open(Buffer.from(`/proc/self/fd/${fd}\0`), O_RDONLY_CLOEXEC);
  if (readOnly < 0) throw new Error("failed to reopen libtsvm.so read-only");
  libc.symbols.close(fd);
  libc.close();
  const path = `/proc/${process.pid}/fd/${readOnly}`;
  process.env[LIBRARY_ENV] = path;
  return path;
}

const loadedFrom = libraryPath();
/** The bound symbols; callers go through the typed wrappers in this folder, not this object. */
export const native = dlopen(loadedFrom, symbols).symbols;
// A device process's copy of the VMM's fd is not needed once the library is mapped.
if (loadedFrom.startsWith("/proc/self/fd/")) native.tsvm_close(Number(loadedFrom.slice("/proc/self/fd/".length)));

/** The sealed read-only memfd holding the library (for a device process to map), or null when the library is a file of the source tree. */
export function libraryFd(): number | null {
  const path = process.env[LIBRARY_ENV];
  return path?.startsWith(`/proc/${process.pid}/fd/`) ? Number(path.slice(`/proc/${process.pid}/fd/`.length)) : null;
}
