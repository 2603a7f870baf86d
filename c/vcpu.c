/* vcpu.c - KVM_RUN on the VMM's main thread, the vCPU threads that hand each exit to the main
 * thread instead, the kick signal, and the waker that kicks the main thread's vCPU out of the guest
 * when its control loop has work.
 *
 * A vCPU thread is a plain pthread: no JavaScript realm of its own (a Bun Worker costs megabytes
 * each). It owns one vCPU and loops: KVM_RUN, post the exit reason in its slot, wait until the
 * server says GO (run again) or STOP. The server is the VMM's main thread, which serves the exits
 * from their kvm_run pages between turns of its control loop, and waits for a post and for the
 * loop's epoll fd at once. Both sides poll briefly before they sleep: a server's answer takes
 * microseconds, and waking a sleeping thread costs tens of them on a VM host.
 *
 * Slot (four int32 words, in memory shared with JavaScript, which reads them with Atomics):
 *   state: STARTING, EXIT (reason posted), SERVING (the server took it), GO (running), STOP, DONE
 *   reason: exit reason or -errno     tid: the thread's id, for the kick
 *   sleeping: 1 while the thread futex-waits for its answer
 * Bell (two int32 words): sleeping (1 while the server sleeps in poll), and the eventfd a post
 * writes to wake a sleeping server. Every store the other side waits on is sequentially
 * consistent, so of "I sleep" and "you have work" at least one side sees the other's store (no lost
 * wake-up).
 */
#define _GNU_SOURCE
#include "tsvm.h"

#include <errno.h>
#include <linux/futex.h>
#include <linux/kvm.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { SLOT_STARTING = 0, SLOT_EXIT = 2, SLOT_GO = 3, SLOT_STOP = 4, SLOT_DONE = 5, SLOT_SERVING = 6 };

struct vcpu_slot {
	int32_t state;
	int32_t reason;
	int32_t tid;
	int32_t sleeping;
};

struct exit_bell {
	int32_t sleeping;
	int32_t wake_fd;
	/* when the post that rang the bell was made (monotonic ns; 0 until one rings it) */
	int64_t posted_ns;
};

/* How long a vCPU thread polls for the server's answer before it sleeps (ns). */
#define GO_POLL_NS 50000
/* A vCPU thread's stack: it calls KVM_RUN and futex and takes the kick signal, nothing deep; glibc
 * also places the process's static TLS there (Bun's is ~22 KiB). Untouched pages cost nothing. */
#define VCPU_STACK_SIZE (128 * 1024)

/* The kvm_run page of the vCPU that this thread runs; the kick handler sets its immediate_exit
 * so a kick that lands just before KVM_RUN is not lost (KVM returns -EINTR at once). */
static __thread struct kvm_run *bound_run;

static void kick_handler(int signum)
{
	(void)signum;
	if (bound_run)
		bound_run->immediate_exit = 1;
}

static int64_t monotonic_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static long futex_wait(int32_t *word, int32_t expected, int timeout_ms)
{
	struct timespec t = { .tv_sec = timeout_ms / 1000, .tv_nsec = (long)(timeout_ms % 1000) * 1000000L };
	return syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, timeout_ms < 0 ? NULL : &t, NULL, 0);
}

/* Wakes up to `count` threads of this process waiting on `word` (every waiter is one of ours). */
static void futex_wake(int32_t *word, int count)
{
	syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
}

int tsvm_vcpu_bind(uint64_t kvm_run_addr)
{
	bound_run = (struct kvm_run *)(uintptr_t)kvm_run_addr;
	return 0;
}

/* Returns the exit reason, or -errno (-EINTR after a kick, with immediate_exit cleared). */
int tsvm_vcpu_run(int vcpu_fd)
{
	if (ioctl(vcpu_fd, KVM_RUN, 0) < 0) {
		int err = errno;
		if (bound_run)
			bound_run->immediate_exit = 0;
		return -err;
	}
	return (int)bound_run->exit_reason;
}

struct vcpu_thread {
	int vcpu_fd;
	int signum;
	struct kvm_run *run;
	struct vcpu_slot *slot;
	struct exit_bell *bell;
};

static void post_exit(struct vcpu_slot *slot, struct exit_bell *bell, int reason)
{
	__atomic_store_n(&slot->reason, reason, __ATOMIC_RELAXED);
	__atomic_store_n(&slot->state, SLOT_EXIT, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&bell->sleeping, __ATOMIC_SEQ_CST)) {
		__atomic_store_n(&bell->posted_ns, monotonic_ns(), __ATOMIC_RELAXED);
		uint64_t one = 1;
		ssize_t n = write(bell->wake_fd, &one, sizeof(one));
		(void)n; /* a full counter (never, at 2^64 - 1) wakes the server all the same */
	}
}

/* Waits until the server answers the posted exit (it may take it first: SERVING); returns SLOT_GO or SLOT_STOP. */
static int await_answer(struct vcpu_slot *slot)
{
	int64_t start = 0;
	for (unsigned i = 0;; i++) {
		int state = __atomic_load_n(&slot->state, __ATOMIC_ACQUIRE);
		if (state != SLOT_EXIT && state != SLOT_SERVING)
			return state;
		if ((i & 63) == 63) {
			int64_t now = monotonic_ns();
			if (start == 0)
				start = now;
			else if (now - start > GO_POLL_NS)
				break;
		}
		__builtin_ia32_pause();
	}
	__atomic_store_n(&slot->sleeping, 1, __ATOMIC_SEQ_CST);
	int state;
	while ((state = __atomic_load_n(&slot->state, __ATOMIC_SEQ_CST)) == SLOT_EXIT || state == SLOT_SERVING)
		futex_wait(&slot->state, state, -1); /* EINTR (a kick), EAGAIN: look again */
	__atomic_store_n(&slot->sleeping, 0, __ATOMIC_RELAXED);
	return state;
}

static void *vcpu_thread_main(void *arg)
{
	struct vcpu_thread t = *(struct vcpu_thread *)arg;
	free(arg);
	sigset_t kick;
	sigemptyset(&kick);
	sigaddset(&kick, t.signum);
	pthread_sigmask(SIG_UNBLOCK, &kick, NULL);
	bound_run = t.run;
	__atomic_store_n(&t.slot->tid, (int32_t)syscall(SYS_gettid), __ATOMIC_SEQ_CST);
	/* The first post is a pseudo-exit: the server learns the thread can be kicked, and decides
	 * whether it runs at all (the VM may already be stopping). */
	int reason = -EINTR;
	for (;;) {
		post_exit(t.slot, t.bell, reason);
		if (await_answer(t.slot) != SLOT_GO)
			break;
		reason = tsvm_vcpu_run(t.vcpu_fd);
	}
	bound_run = NULL;
	__atomic_store_n(&t.slot->state, SLOT_DONE, __ATOMIC_SEQ_CST);
	return NULL;
}

/* Starts the thread that runs vCPU `id` (`vcpu_fd`, its kvm_run page mapped at `kvm_run_addr`),
 * posting into `slot` and ringing `bell`; it is named "vcpu <id>" (ps, top, /proc). The thread is
 * detached: it ends after the server answers STOP. */
int tsvm_vcpu_thread_start(int id, int vcpu_fd, uint64_t kvm_run_addr, void *slot, void *bell, int signum)
{
	struct vcpu_thread *t = malloc(sizeof(*t));
	if (!t)
		return -ENOMEM;
	*t = (struct vcpu_thread){ .vcpu_fd = vcpu_fd, .signum = signum, .run = (struct kvm_run *)(uintptr_t)kvm_run_addr,
		.slot = slot, .bell = bell };
	memset(slot, 0, sizeof(struct vcpu_slot));
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, VCPU_STACK_SIZE);
	pthread_t thread;
	int err = pthread_create(&thread, &attr, vcpu_thread_main, t);
	pthread_attr_destroy(&attr);
	if (err) {
		free(t);
		return -err;
	}
	char name[16];
	snprintf(name, sizeof(name), "vcpu %d", id);
	pthread_setname_np(thread, name);
	return 0;
}

/* Server side: answers a posted exit with SLOT_GO or SLOT_STOP, waking the thread if it sleeps. */
int tsvm_vcpu_answer(void *slot_ptr, int answer)
{
	struct vcpu_slot *slot = slot_ptr;
	if (answer != SLOT_GO && answer != SLOT_STOP)
		return -EINVAL;
	__atomic_store_n(&slot->state, answer, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&slot->sleeping, __ATOMIC_SEQ_CST))
		futex_wake(&slot->state, 1);
	return 0;
}

/* Sets the eventfd a post writes to when the server sleeps. */
int tsvm_bell_init(void *bell_ptr, int wake_fd)
{
	struct exit_bell *bell = bell_ptr;
	__atomic_store_n(&bell->wake_fd, wake_fd, __ATOMIC_SEQ_CST);
	return 0;
}

/* Finds a posted exit and takes it (EXIT -> SERVING), so that a wait made while it is being served
 * (the server's control loop turning inside it) does not find it again. */
static int find_posted(char *slots, int stride, int count, int from)
{
	for (int k = 0; k < count; k++) {
		int i = (from + k) % count;
		struct vcpu_slot *slot = (struct vcpu_slot *)(slots + (size_t)i * stride);
		int32_t expected = SLOT_EXIT;
		if (__atomic_load_n(&slot->state, __ATOMIC_ACQUIRE) == SLOT_EXIT &&
		    __atomic_compare_exchange_n(&slot->state, &expected, SLOT_SERVING, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
			return i;
	}
	return -1;
}

/* How often a polling server looks at the control loop's epoll fd (ns). */
#define EPOLL_LOOK_NS 2000

/* Whether `fd` is readable now. */
static int readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
}

/*
 * Server side: returns the index of a vCPU whose exit is posted, taken (starting the search after
 * `from`, so that no vCPU starves another), -EAGAIN when the control loop's epoll fd `epfd` has events, or
 * -ETIMEDOUT. It polls first, with the adaptive window of tsvm_epoll_wait_polled (state[0] the
 * window, state[1] its ceiling), looking at `epfd` between rounds and yielding so that a vCPU
 * thread sharing this CPU runs; then it sleeps in poll() on `epfd` and the bell's eventfd.
 */
int tsvm_vcpu_wait_exit(void *bell_ptr, void *slots, int stride, int count, int from, int epfd, int timeout_ms, int64_t *state)
{
	struct exit_bell *bell = bell_ptr;
	int found = find_posted(slots, stride, count, from);
	if (found >= 0)
		return found;
	int64_t window = state[0], ceiling = state[1];
	int64_t start = monotonic_ns();
	if (window > 0) {
		/* The loop's epoll fd is looked at every EPOLL_LOOK_NS: a poll() is a system call, and one
		 * in flight when a post lands delays its answer by as long. */
		int64_t looked = start;
		for (;;) {
			for (int i = 0; i < 32; i++) {
				if ((found = find_posted(slots, stride, count, from)) >= 0)
					return found; /* found while polling: keep the window */
				__builtin_ia32_pause();
			}
			int64_t now = monotonic_ns();
			if (now - looked >= EPOLL_LOOK_NS) {
				if (readable(epfd))
					return -EAGAIN;
				looked = now;
			}
			if (now - start >= window)
				break;
			sched_yield();
		}
	}
	__atomic_store_n(&bell->posted_ns, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&bell->sleeping, 1, __ATOMIC_SEQ_CST);
	int event = 0;
	found = find_posted(slots, stride, count, from);
	if (found < 0) {
		struct pollfd p[2] = { { .fd = epfd, .events = POLLIN }, { .fd = bell->wake_fd, .events = POLLIN } };
		if (poll(p, 2, timeout_ms) > 0) {
			event = (p[0].revents & POLLIN) != 0;
			if (p[1].revents & POLLIN) {
				uint64_t value;
				ssize_t n = read(bell->wake_fd, &value, sizeof(value));
				(void)n;
			}
		}
	}
	__atomic_store_n(&bell->sleeping, 0, __ATOMIC_RELAXED);
	if (found < 0)
		found = find_posted(slots, stride, count, from);
	/* The window adapts to exits and to the loop's events alike: with the devices on the loop
	 * (--disable-sandbox), their notifications come close together as exits do. An exit that rang
	 * the bell is judged by when it was posted, not by when this thread ran again: the wake-up is
	 * the cost polling saves, and counting it made a miss of every exit that came inside the
	 * ceiling but less than a wake-up before it, so that the window, once halved to nothing, never
	 * grew back (ring-3 exits of ~51 us, a wake-up of tens of us here: every exit slept). */
	int64_t waited = monotonic_ns() - start;
	int64_t posted = __atomic_load_n(&bell->posted_ns, __ATOMIC_RELAXED);
	if (found >= 0 && posted > start && posted - start < waited)
		waited = posted - start;
	if ((found < 0 && !event) || waited > 2 * ceiling)
		state[0] = 0;
	else if (waited > ceiling)
		state[0] = window / 2;
	else if (window < ceiling)
		state[0] = window == 0 ? 4000 : (window * 2 < ceiling ? window * 2 : ceiling);
	if (found >= 0)
		return found;
	return event ? -EAGAIN : -ETIMEDOUT;
}

/* Installs the kick handler without SA_RESTART, so KVM_RUN returns -EINTR. */
int tsvm_kick_install(int signum)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = kick_handler;
	sigemptyset(&sa.sa_mask);
	if (sigaction(signum, &sa, NULL) < 0)
		return -errno;
	return 0;
}

int tsvm_kick(int tgid, int tid, int signum)
{
	if (syscall(SYS_tgkill, tgid, tid, signum) < 0)
		return -errno;
	return 0;
}

/* SIGRTMIN as glibc defines it at run time (it reserves the first few real-time signals). */
int tsvm_sigrtmin(void) { return SIGRTMIN; }

/*
 * The main thread's vCPU. Its kick signal stays blocked in user space, and KVM unblocks it only
 * inside KVM_RUN (KVM_SET_SIGNAL_MASK): a kick that lands while the thread serves an exit or runs
 * its control loop stays pending, and the next KVM_RUN returns -EINTR at once. So no other system
 * call of that thread (a socket read, an epoll wait, a write) is ever interrupted by a kick, and no
 * kick is lost. After -EINTR the thread consumes the pending signal (tsvm_kick_consume), since it is
 * blocked again on the way out of KVM_RUN and would otherwise end every later KVM_RUN at once.
 */
int tsvm_vcpu_main_setup(int vcpu_fd, int signum)
{
	sigset_t kick, old;
	sigemptyset(&kick);
	sigaddset(&kick, signum);
	int err = pthread_sigmask(SIG_BLOCK, &kick, &old);
	if (err)
		return -err;
	sigdelset(&old, signum);
	/* The kernel's sigset is 8 bytes on x86-64: the first 8 bytes of glibc's. */
	struct {
		struct kvm_signal_mask head;
		uint8_t set[8];
	} mask = { .head = { .len = 8 } };
	memcpy(mask.set, &old, 8);
	if (ioctl(vcpu_fd, KVM_SET_SIGNAL_MASK, &mask) < 0)
		return -errno;
	return 0;
}

/* write() with `signum` unblocked: on the main thread, a kick ends a write that waits for its
 * reader with -EINTR (the write then asks whether to go on). Returns the count or -errno. */
int64_t tsvm_write_kickable(int fd, const void *buf, uint64_t len, int signum)
{
	sigset_t kick, old;
	sigemptyset(&kick);
	sigaddset(&kick, signum);
	pthread_sigmask(SIG_UNBLOCK, &kick, &old);
	ssize_t n = write(fd, buf, len);
	int err = errno;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return n < 0 ? -err : n;
}

/* Takes every pending `signum` off the calling thread (it blocks the signal); returns how many. */
int tsvm_kick_consume(int signum)
{
	sigset_t kick;
	sigemptyset(&kick);
	sigaddset(&kick, signum);
	struct timespec none = { 0, 0 };
	int n = 0;
	while (sigtimedwait(&kick, NULL, &none) == signum)
		n++;
	return n;
}

/*
 * The waker: a thread that watches the control loop's epoll fd while the main thread runs its vCPU,
 * and kicks that vCPU out of KVM_RUN when the loop has work, or once a slice has passed (the main
 * thread then gives Bun's event loop a turn). The main thread bumps `generation` when it starts
 * running the vCPU (odd) and when it stops (even); while a generation stays odd, the waker kicks
 * once when the loop has work and again at the end of every slice until the main thread is back.
 */
struct vcpu_waker {
	int32_t generation;
	int32_t stop;
	int epfd;
	int tid;
	int signum;
	int slice_ms;
};

#define WAKER_STACK_SIZE (64 * 1024)

static void *waker_main(void *arg)
{
	struct vcpu_waker *w = arg;
	pid_t pid = getpid();
	for (;;) {
		int32_t g = __atomic_load_n(&w->generation, __ATOMIC_SEQ_CST);
		if (__atomic_load_n(&w->stop, __ATOMIC_SEQ_CST))
			break;
		if ((g & 1) == 0) {
			futex_wait(&w->generation, g, -1);
			continue;
		}
		struct pollfd p = { .fd = w->epfd, .events = POLLIN };
		poll(&p, 1, w->slice_ms);
		if (__atomic_load_n(&w->stop, __ATOMIC_SEQ_CST))
			break;
		/* Kick, and again each slice while the main thread has not taken its turn: it may be
		 * serving an exit that waits (a UART write kickable by tsvm_write_kickable), and a kick that
		 * landed just before that write began did not end it. */
		while (__atomic_load_n(&w->generation, __ATOMIC_SEQ_CST) == g && !__atomic_load_n(&w->stop, __ATOMIC_SEQ_CST)) {
			syscall(SYS_tgkill, pid, w->tid, w->signum);
			futex_wait(&w->generation, g, w->slice_ms);
		}
	}
	free(w);
	return NULL;
}

/* Starts the waker of thread `tid` (named "vcpu waker"); returns its handle, or NULL. */
void *tsvm_waker_start(int epfd, int tid, int signum, int slice_ms)
{
	struct vcpu_waker *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	*w = (struct vcpu_waker){ .epfd = epfd, .tid = tid, .signum = signum, .slice_ms = slice_ms };
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, WAKER_STACK_SIZE);
	/* The waker takes no signals meant for others: block them all while it is created. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_t thread;
	int err = pthread_create(&thread, &attr, waker_main, w);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (err) {
		free(w);
		return NULL;
	}
	pthread_setname_np(thread, "vcpu waker");
	return w;
}

/* The main thread starts (running = 1) or stops (0) running its vCPU. */
int tsvm_waker_phase(void *waker, int running)
{
	struct vcpu_waker *w = waker;
	int32_t g = __atomic_load_n(&w->generation, __ATOMIC_SEQ_CST);
	if ((g & 1) == (running ? 1 : 0))
		return 0;
	__atomic_store_n(&w->generation, g + 1, __ATOMIC_SEQ_CST);
	futex_wake(&w->generation, 1);
	return 0;
}

/* Ends the waker; it frees itself (within a slice, if it is in its poll). */
int tsvm_waker_stop(void *waker)
{
	struct vcpu_waker *w = waker;
	__atomic_store_n(&w->stop, 1, __ATOMIC_SEQ_CST);
	__atomic_fetch_add(&w->generation, 2, __ATOMIC_SEQ_CST);
	futex_wake(&w->generation, 1);
	return 0;
}
