/* event.c - eventfd, epoll, and process signals turned into eventfd events. */
#define _GNU_SOURCE
#include "tsvm.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

int tsvm_eventfd(unsigned initval, int flags)
{
	int fd = eventfd(initval, flags | EFD_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int tsvm_eventfd_write(int fd, uint64_t value)
{
	return write(fd, &value, sizeof(value)) == (ssize_t)sizeof(value) ? 0 : -errno;
}

/* Never blocks, even on an eventfd whose O_NONBLOCK a peer sharing it has cleared (RWF_NOWAIT applies
 * to this call only); kernels without RWF_NOWAIT for eventfds get a plain read. */
int tsvm_eventfd_read(int fd, uint64_t *value_out)
{
	struct iovec iov = { value_out, sizeof(*value_out) };
	ssize_t n = preadv2(fd, &iov, 1, -1, RWF_NOWAIT);
	if (n < 0 && (errno == EOPNOTSUPP || errno == ENOSYS))
		n = read(fd, value_out, sizeof(*value_out));
	return n == (ssize_t)sizeof(*value_out) ? 0 : -errno;
}

/* Whether `fd` is an eventfd: adding 0 to the counter succeeds (and never blocks) on an eventfd and
 * only there; every other kind of anonymous-inode fd (epoll, timerfd, signalfd, pidfd, landlock,
 * KVM...) refuses an 8-byte write. Returns 1, 0, or -errno when the fd is unusable. */
int tsvm_eventfd_check(int fd)
{
	uint64_t zero = 0;
	if (write(fd, &zero, sizeof(zero)) == (ssize_t)sizeof(zero))
		return 1;
	return errno == EBADF ? -EBADF : 0;
}

int tsvm_epoll_create(void)
{
	int fd = epoll_create1(EPOLL_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int tsvm_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token)
{
	struct epoll_event ev = { .events = events, .data = { .u64 = token } };
	return epoll_ctl(epfd, op, fd, &ev) < 0 ? -errno : 0;
}

/* Fills `events` with packed struct epoll_event (12 bytes each on x86-64). */
int tsvm_epoll_wait(int epfd, void *events, int max_events, int timeout_ms)
{
	int n = epoll_wait(epfd, (struct epoll_event *)events, max_events, timeout_ms);
	return n < 0 ? -errno : n;
}

/* One eventfd per signal number, written by an async-signal-safe handler. */
static int signal_eventfds[65] = { [0 ... 64] = -1 };

static void notify_handler(int signum)
{
	int saved = errno;
	uint64_t one = 1;
	if (signum > 0 && signum <= 64 && signal_eventfds[signum] >= 0)
		(void)!write(signal_eventfds[signum], &one, sizeof(one));
	errno = saved;
}

int tsvm_signal_notify(int signum, int eventfd_fd)
{
	struct sigaction sa;
	if (signum <= 0 || signum > 64)
		return -EINVAL;
	signal_eventfds[signum] = eventfd_fd;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = notify_handler;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	return sigaction(signum, &sa, NULL) < 0 ? -errno : 0;
}

int tsvm_signal_default(int signum)
{
	if (signum <= 0 || signum > 64)
		return -EINVAL;
	signal(signum, SIG_DFL);
	signal_eventfds[signum] = -1;
	return 0;
}

/* A monotonic timerfd, close-on-exec and non-blocking; readable once the time set with tsvm_timerfd_set passes. */
int tsvm_timerfd_create(void)
{
	int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	return fd < 0 ? -errno : fd;
}

/* Arms `fd` to fire once in `delay_ms` milliseconds (0 disarms it). */
int tsvm_timerfd_set(int fd, uint64_t delay_ms)
{
	struct itimerspec t = { .it_value = { .tv_sec = (time_t)(delay_ms / 1000), .tv_nsec = (long)(delay_ms % 1000) * 1000000L } };
	return timerfd_settime(fd, 0, &t, NULL) < 0 ? -errno : 0;
}
