/* event.c - eventfd, epoll, and process signals turned into eventfd events. */
#define _GNU_SOURCE
#include "tsvm.h"

#include <errno.h>
#include <sched.h>
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

static int64_t monotonic_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/*
 * epoll_wait that first polls for up to state[0] ns before it sleeps, and adapts that window to
 * how soon events come (state[1] is its ceiling; 0 never polls). Waking a sleeping thread on
 * another CPU costs an inter-processor interrupt to whoever made the event (a vCPU writing a
 * notify) and tens of microseconds before the thread runs, more than serving a request takes; a
 * loop that polls briefly after each event finds the next one of a burst without either. The
 * window doubles (from 4 us) while events come after it ends but within the ceiling, stays while
 * polling finds them, halves after a wait past the ceiling, and drops to 0 after a wait past twice
 * the ceiling or a timeout, so an idle or sparsely used loop does not spin. Between tries it
 * yields, so it never spins in the way of a thread that shares its CPU.
 */
int tsvm_epoll_wait_polled(int epfd, void *events, int max_events, int timeout_ms, int64_t *state)
{
	int64_t window = state[0], ceiling = state[1];
	if (timeout_ms == 0 || ceiling <= 0) return tsvm_epoll_wait(epfd, events, max_events, timeout_ms);
	int64_t start = monotonic_ns();
	if (window > 0) {
		for (;;) {
			int n = epoll_wait(epfd, (struct epoll_event *)events, max_events, 0);
			if (n != 0) return n < 0 ? -errno : n; /* found while polling: keep the window */
			if (monotonic_ns() - start >= window) break;
			sched_yield(); /* a vCPU sharing this CPU may be about to make the next event */
		}
	}
	int n = epoll_wait(epfd, (struct epoll_event *)events, max_events, timeout_ms);
	if (n < 0) return -errno;
	int64_t waited = monotonic_ns() - start;
	if (n == 0 || waited > 2 * ceiling) state[0] = 0; /* idle: stop polling at once */
	else if (waited > ceiling) state[0] = window / 2; /* a miss: poll less */
	else if (window < ceiling) state[0] = window == 0 ? 4000 : (window * 2 < ceiling ? window * 2 : ceiling);
	return n;
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
