/* sys.c - file descriptors, ioctls and memory mappings for tsvm. */
#define _GNU_SOURCE
#include "tsvm.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/resource.h>
#include <unistd.h>

#define RET(expr) do { long r_ = (long)(expr); return r_ < 0 ? -errno : (int)r_; } while (0)
#define RET64(expr) do { int64_t r_ = (int64_t)(expr); return r_ < 0 ? -errno : r_; } while (0)

int tsvm_open(const char *path, int flags, int mode) { RET(open(path, flags | O_CLOEXEC, mode)); }

/* lstat(2) of `path` (a symlink is not followed): out = {st_mode, st_dev, st_ino}; 0 or -errno. */
int tsvm_lstat(const char *path, uint64_t *out)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return -errno;
	out[0] = st.st_mode;
	out[1] = st.st_dev;
	out[2] = st.st_ino;
	return 0;
}

int tsvm_unlink(const char *path) { RET(unlink(path)); }
int tsvm_close(int fd) { RET(close(fd)); }
int64_t tsvm_read(int fd, void *buf, uint64_t len) { RET64(read(fd, buf, len)); }
int64_t tsvm_write(int fd, const void *buf, uint64_t len) { RET64(write(fd, buf, len)); }
int64_t tsvm_pread(int fd, void *buf, uint64_t len, int64_t off) { RET64(pread(fd, buf, len, off)); }
int64_t tsvm_pwrite(int fd, const void *buf, uint64_t len, int64_t off) { RET64(pwrite(fd, buf, len, off)); }

/* The size of a file, or of a block device (whose st_size is 0: its end is where lseek finds it;
 * the file position does not matter, all disk I/O is positioned). */
int tsvm_fstat_size(int fd, int64_t *size_out)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (S_ISBLK(st.st_mode)) {
		off_t end = lseek(fd, 0, SEEK_END);
		if (end < 0)
			return -errno;
		*size_out = end;
		return 0;
	}
	*size_out = st.st_size;
	return 0;
}

/* out[0] = st_mode, out[1] = st_size: the kind of file behind `fd` and its size. */
int tsvm_fstat(int fd, int64_t *out)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	out[0] = st.st_mode;
	out[1] = st.st_size;
	return 0;
}

int tsvm_ioctl_ptr(int fd, uint64_t request, void *arg) { RET(ioctl(fd, request, arg)); }
int tsvm_ioctl_val(int fd, uint64_t request, uint64_t arg) { RET(ioctl(fd, request, arg)); }
int tsvm_memfd_create(const char *name, unsigned flags) { RET(memfd_create(name, flags)); }
int tsvm_ftruncate(int fd, int64_t len) { RET(ftruncate(fd, len)); }

int tsvm_mmap(uint64_t *addr_out, uint64_t len, int prot, int flags, int fd, int64_t off)
{
	void *p = mmap(NULL, len, prot, flags, fd, off);
	if (p == MAP_FAILED)
		return -errno;
	*addr_out = (uint64_t)(uintptr_t)p;
	return 0;
}

/*
 * mmap of `fd` at an address congruent with `off` modulo `align` (a power of two): each aligned block
 * of the file then falls on one aligned block of addresses, which a huge page can map whole. A
 * reservation of len + align addresses is made first, the file mapped over part of it, the rest
 * given back.
 */
int tsvm_mmap_aligned(uint64_t *addr_out, uint64_t len, int prot, int flags, int fd, int64_t off, uint64_t align)
{
	if (align == 0 || (align & (align - 1)) || len == 0 || len > UINT64_MAX - align)
		return -EINVAL;
	void *r = mmap(NULL, len + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (r == MAP_FAILED)
		return -errno;
	uintptr_t base = (uintptr_t)r;
	uintptr_t at = base + (((uintptr_t)off - base) & (align - 1));
	void *p = mmap((void *)at, len, prot, flags | MAP_FIXED, fd, off);
	if (p == MAP_FAILED) {
		int e = errno;
		munmap(r, len + align);
		return -e;
	}
	if (at > base)
		munmap(r, at - base);
	if (base + len + align > at + len)
		munmap((void *)(at + len), base + len + align - (at + len));
	*addr_out = (uint64_t)at;
	return 0;
}

/*
 * Huge pages for guest memory that takes O_DIRECT transfers. A memfd gets transparent huge pages
 * only where the host allows them for shared memory (shmem_enabled), which it does not by default;
 * anonymous memory (QEMU's guest RAM) gets them under the usual `enabled = madvise`. An O_DIRECT
 * request pins and maps every page of its buffers: 16 of them for 64 KiB in 4 KiB pages, one in a
 * huge page. So the ranges registered here (guest memory mappings, 2 MiB aligned with their file)
 * are collapsed into huge pages (MADV_COLLAPSE, Linux 6.1+) 2 MiB at a time, the first times an
 * O_DIRECT transfer's buffer lies in a block: at most twice a block (a block with no page yet
 * cannot collapse; the transfer gives it one), never again once it collapsed. Only when wanted
 * (the host's THP `enabled` is not `never`: the VMM decides and tells its device processes).
 */
#define HUGE_SHIFT 21
#define HUGE_RANGES 16
#define HUGE_TRIES 2
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
struct huge_range {
	uintptr_t start, end; /* whole 2 MiB blocks */
	uint8_t *tries;       /* per block: attempts made, HUGE_TRIES + 1 once collapsed */
};
static struct huge_range huge_ranges[HUGE_RANGES];
static pthread_mutex_t huge_lock = PTHREAD_MUTEX_INITIALIZER;

/* Registers [addr, addr + len) for collapsing (its whole 2 MiB blocks); 0, -ENOSPC or -ENOMEM. */
int tsvm_huge_range_add(uint64_t addr, uint64_t len)
{
	uintptr_t start = ((uintptr_t)addr + (1UL << HUGE_SHIFT) - 1) & ~((1UL << HUGE_SHIFT) - 1);
	uintptr_t end = ((uintptr_t)addr + len) & ~((1UL << HUGE_SHIFT) - 1);
	if (end <= start)
		return 0;
	uint8_t *tries = calloc((end - start) >> HUGE_SHIFT, 1);
	if (!tries)
		return -ENOMEM;
	pthread_mutex_lock(&huge_lock);
	for (int i = 0; i < HUGE_RANGES; i++) {
		if (huge_ranges[i].tries == NULL) {
			huge_ranges[i] = (struct huge_range){ start, end, tries };
			pthread_mutex_unlock(&huge_lock);
			return 0;
		}
	}
	pthread_mutex_unlock(&huge_lock);
	free(tries);
	return -ENOSPC;
}

/* Forgets the range registered at `addr` (before it is unmapped). */
void tsvm_huge_range_remove(uint64_t addr, uint64_t len)
{
	uintptr_t start = ((uintptr_t)addr + (1UL << HUGE_SHIFT) - 1) & ~((1UL << HUGE_SHIFT) - 1);
	uintptr_t end = ((uintptr_t)addr + len) & ~((1UL << HUGE_SHIFT) - 1);
	pthread_mutex_lock(&huge_lock);
	for (int i = 0; i < HUGE_RANGES; i++) {
		if (huge_ranges[i].tries != NULL && huge_ranges[i].start == start && huge_ranges[i].end == end) {
			free(huge_ranges[i].tries);
			huge_ranges[i] = (struct huge_range){ 0, 0, NULL };
		}
	}
	pthread_mutex_unlock(&huge_lock);
}

/* Collapses the blocks of registered ranges that `iov`'s buffers touch, as the comment above says. */
void tsvm_prefer_huge(const struct iovec *iov, int iovcnt)
{
	for (int i = 0; i < iovcnt; i++) {
		uintptr_t from = (uintptr_t)iov[i].iov_base >> HUGE_SHIFT;
		uintptr_t to = ((uintptr_t)iov[i].iov_base + iov[i].iov_len - 1) >> HUGE_SHIFT;
		if (iov[i].iov_len == 0)
			continue;
		for (uintptr_t block = from; block <= to; block++) {
			uintptr_t at = block << HUGE_SHIFT;
			int ask = 0;
			pthread_mutex_lock(&huge_lock);
			for (int r = 0; r < HUGE_RANGES; r++) {
				struct huge_range *h = &huge_ranges[r];
				if (h->tries != NULL && at >= h->start && at < h->end) {
					uint8_t *t = &h->tries[(at - h->start) >> HUGE_SHIFT];
					if (*t < HUGE_TRIES) {
						(*t)++;
						ask = 1;
					}
					break;
				}
			}
			pthread_mutex_unlock(&huge_lock);
			if (!ask || madvise((void *)at, 1UL << HUGE_SHIFT, MADV_COLLAPSE) != 0)
				continue;
			pthread_mutex_lock(&huge_lock);
			for (int r = 0; r < HUGE_RANGES; r++) {
				struct huge_range *h = &huge_ranges[r];
				if (h->tries != NULL && at >= h->start && at < h->end)
					h->tries[(at - h->start) >> HUGE_SHIFT] = HUGE_TRIES + 1;
			}
			pthread_mutex_unlock(&huge_lock);
		}
	}
}

int tsvm_munmap(uint64_t addr, uint64_t len) { RET(munmap((void *)(uintptr_t)addr, len)); }
int tsvm_madvise(uint64_t addr, uint64_t len, int advice) { RET(madvise((void *)(uintptr_t)addr, len, advice)); }

int tsvm_fcntl_setfl(int fd, int flags)
{
	int old = fcntl(fd, F_GETFL);
	if (old < 0)
		return -errno;
	RET(fcntl(fd, F_SETFL, old | flags));
}

/* fcntl with an int argument (F_ADD_SEALS, F_GET_SEALS, F_GETFL, ...): the result or -errno. */
int tsvm_fcntl_int(int fd, int cmd, int arg) { RET(fcntl(fd, cmd, arg)); }

int tsvm_dup(int fd) { RET(fcntl(fd, F_DUPFD_CLOEXEC, 3)); }
int tsvm_getpid(void) { return getpid(); }
int tsvm_gettid(void) { return (int)syscall(SYS_gettid); }

/* Fills buf from the kernel's random pool (getrandom(2), no flags: blocks only before the pool is seeded). */
int64_t tsvm_getrandom(void *buf, uint64_t len) { RET64(syscall(SYS_getrandom, buf, len, 0)); }

int tsvm_fdatasync(int fd) { RET(fdatasync(fd)); }
int tsvm_fallocate(int fd, int mode, int64_t offset, int64_t len) { RET(fallocate(fd, mode, offset, len)); }
int tsvm_flock(int fd, int operation) { RET(flock(fd, operation)); }

/* A close-on-exec pipe: fds_out[0] reads, fds_out[1] writes. */
int tsvm_pipe(int *fds_out) { RET(pipe2(fds_out, O_CLOEXEC)); }

int tsvm_socket(int domain, int type, int protocol) { RET(socket(domain, type | SOCK_CLOEXEC, protocol)); }

/* The CFS/EEVDF slice of thread `tid` (0: the calling thread) for SCHED_OTHER, in ns (Linux >= 6.12
 * takes sched_runtime as the slice request, clamped to 0.1-100 ms; older kernels ignore it). */
int tsvm_sched_slice(int tid, uint64_t ns)
{
	struct {
		uint32_t size, policy;
		uint64_t flags;
		int32_t nice;
		uint32_t priority;
		uint64_t runtime, deadline, period;
	} attr = { .size = 48, .policy = 0 /* SCHED_OTHER */, .runtime = ns };
	attr.nice = getpriority(PRIO_PROCESS, 0);
	RET(syscall(SYS_sched_setattr, tid, &attr, 0));
}
