/* tsvm.h - the C mechanism library under tsvm's bun:ffi bindings.
 *
 * Every function returns a non-negative value on success and -errno on failure; nothing here
 * allocates, logs or decides policy. Pointers come from the caller (TypedArrays in Bun).
 */
#ifndef TSVM_H
#define TSVM_H

#include <stdint.h>
#include <stddef.h>

/* sys.c: plain file descriptors, ioctls and memory mappings */
int tsvm_open(const char *path, int flags, int mode);
int tsvm_lstat(const char *path, uint64_t *out);
int tsvm_unlink(const char *path);
int tsvm_close(int fd);
int64_t tsvm_read(int fd, void *buf, uint64_t len);
int64_t tsvm_write(int fd, const void *buf, uint64_t len);
int64_t tsvm_pread(int fd, void *buf, uint64_t len, int64_t off);
int64_t tsvm_pwrite(int fd, const void *buf, uint64_t len, int64_t off);
int tsvm_fstat_size(int fd, int64_t *size_out);
int tsvm_fstat(int fd, int64_t *out);
int tsvm_ioctl_ptr(int fd, uint64_t request, void *arg);
int tsvm_ioctl_val(int fd, uint64_t request, uint64_t arg);
int tsvm_memfd_create(const char *name, unsigned flags);
int tsvm_ftruncate(int fd, int64_t len);
int tsvm_mmap(uint64_t *addr_out, uint64_t len, int prot, int flags, int fd, int64_t off);
int tsvm_munmap(uint64_t addr, uint64_t len);
int tsvm_madvise(uint64_t addr, uint64_t len, int advice);
int tsvm_sched_slice(int tid, uint64_t ns);
int tsvm_mmap_aligned(uint64_t *addr_out, uint64_t len, int prot, int flags, int fd, int64_t off, uint64_t align);
int tsvm_huge_range_add(uint64_t addr, uint64_t len);
void tsvm_huge_range_remove(uint64_t addr, uint64_t len);
struct iovec;
void tsvm_prefer_huge(const struct iovec *iov, int iovcnt);
int tsvm_fcntl_setfl(int fd, int flags);
int tsvm_fcntl_int(int fd, int cmd, int arg);
int tsvm_dup(int fd);
int tsvm_getpid(void);
int tsvm_gettid(void);
int64_t tsvm_getrandom(void *buf, uint64_t len);
int tsvm_fdatasync(int fd);
int tsvm_fallocate(int fd, int mode, int64_t offset, int64_t len);
int tsvm_flock(int fd, int operation);
int tsvm_socket(int domain, int type, int protocol);

/* vcpu.c: vCPU threads, the main thread's side of their slots and its own vCPU, the kick signal */
int tsvm_vcpu_bind(uint64_t kvm_run_addr);
int tsvm_vcpu_run(int vcpu_fd);
int tsvm_vcpu_thread_start(int id, int vcpu_fd, uint64_t kvm_run_addr, void *slot, void *bell, int signum);
int tsvm_vcpu_answer(void *slot, int answer);
int tsvm_vcpu_wait_exit(void *bell, void *slots, int stride, int count, int from, int epfd, int timeout_ms, int64_t *state);
int tsvm_vcpu_main_setup(int vcpu_fd, int signum);
int tsvm_kick_consume(int signum);
int64_t tsvm_write_kickable(int fd, const void *buf, uint64_t len, int signum);
void *tsvm_waker_start(int epfd, int tid, int signum, int slice_ms);
int tsvm_waker_phase(void *waker, int running);
int tsvm_waker_stop(void *waker);
int tsvm_bell_init(void *bell, int wake_fd);
int tsvm_kick_install(int signum);
int tsvm_kick(int tgid, int tid, int signum);
int tsvm_sigrtmin(void);

/* event.c: eventfd, epoll and signals delivered as events */
int tsvm_eventfd(unsigned initval, int flags);
int tsvm_eventfd_write(int fd, uint64_t value);
int tsvm_eventfd_read(int fd, uint64_t *value_out);
int tsvm_eventfd_check(int fd);
int tsvm_epoll_create(void);
int tsvm_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token);
int tsvm_epoll_wait(int epfd, void *events, int max_events, int timeout_ms);
int tsvm_epoll_wait_polled(int epfd, void *events, int max_events, int timeout_ms, int64_t *state);
int tsvm_signal_notify(int signum, int eventfd);
int tsvm_signal_default(int signum);
int tsvm_timerfd_create(void);
int tsvm_timerfd_set(int fd, uint64_t delay_ms);

/* term.c: raw mode for the console's stdin */
int tsvm_term_raw(int fd, void *saved, uint64_t saved_len);
int tsvm_term_restore(int fd, const void *saved, uint64_t saved_len);
int tsvm_isatty(int fd);

/* socket.c: SOCK_SEQPACKET pairs with SCM_RIGHTS fd passing */
int tsvm_socketpair(int type, int *fds_out);
int64_t tsvm_send_with_fds(int fd, const void *buf, uint64_t len, const int *fds, int nfds, int flags);
int64_t tsvm_recv_with_fds(int fd, void *buf, uint64_t len, int *fds_out, int max_fds, int *nfds_out, int flags);
int tsvm_unix_listen(const char *path, int type);
int tsvm_unix_connect(const char *path, int type);
int tsvm_accept(int fd);
int tsvm_set_send_buffer(int fd, int bytes);
int tsvm_wait_readable(int fd, int timeout_ms);
int tsvm_poll(int fd, int events, int timeout_ms);
int tsvm_shutdown(int fd, int how);

/* jail.c: device processes in namespaces, and their lockdown */
int tsvm_spawn_jailed(const char *path, char *const argv[], char *const envp[], const int *fds, int nfds, int stderr_fd, unsigned id_base);
int tsvm_spawn_jailed_start(const char *path, char *const argv[], char *const envp[], const int *fds, int nfds, int stderr_fd, unsigned id_base, void **job_out);
int tsvm_spawn_jailed_finish(void *job);
int tsvm_pipe(int *fds_out);
int tsvm_lockdown(const void *bpf, uint64_t len, uint64_t max_fds);
int tsvm_waitpid(int pid, int *status_out, int nohang);
int tsvm_execve(const char *path, char *const argv[], char *const envp[]);

/* aio.c: disk requests in flight on a pool of threads (small O_DIRECT requests on the kernel's
 * asynchronous I/O), completions told through an eventfd */
struct tsvm_aio;
struct tsvm_aio *tsvm_aio_create(int max_threads, int max_threads_alone, int capacity, int notify_fd);
int tsvm_aio_submit(struct tsvm_aio *aio, int op, int fd, const void *iov, int iovcnt, int64_t offset, uint32_t tag, uint32_t align);
int tsvm_aio_reap(struct tsvm_aio *aio, void *out, int max);
int tsvm_aio_wait_idle(struct tsvm_aio *aio);
int tsvm_aio_kernel_requests(struct tsvm_aio *aio);
int tsvm_aio_kernel_calls(struct tsvm_aio *aio);
void tsvm_aio_batch(struct tsvm_aio *aio, int on);
void tsvm_aio_offload(struct tsvm_aio *aio, int on);
void tsvm_aio_threads_only(struct tsvm_aio *aio, int on);
int tsvm_aio_kernel_offloaded_calls(struct tsvm_aio *aio);
int tsvm_aio_threads(struct tsvm_aio *aio);
void tsvm_aio_destroy(struct tsvm_aio *aio);
int tsvm_dio_probe_align(int fd);
int tsvm_disk_try(int fd, const void *iov, int iovcnt, int64_t offset, int write);
int tsvm_disk_transfer(int fd, const void *iov, int iovcnt, int64_t offset, uint32_t align, int write);

#endif
