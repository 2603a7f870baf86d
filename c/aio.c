/*
 * aio.c - block I/O in flight: a small pool of threads that run disk requests (preadv, pwritev,
 * fdatasync) and report each completion through an eventfd the device's loop watches.
 *
 * Why threads and not io_uring: io_uring is a large kernel attack surface that ChromeOS and Android
 * keep away from untrusted code, and a jailed device process is exactly that; a thread pool needs
 * only the calls the block policy already allows (plus clone pinned to pthread_create's flags).
 *
 * Requests carry a 32-bit tag chosen by the caller; completions come back as {tag, result} in the
 * order they finish, result 0 or -errno. Threads start on demand, up to the pool's limit, and stay;
 * the limit is larger once the threads serve every request (thread_limit).
 * The scatter list of a request is copied at submission; the buffers it names (guest memory) must
 * stay mapped until the request completes.
 *
 * The same transfer code serves synchronous callers (tsvm_disk_transfer), so O_DIRECT's alignment
 * rule lives in one place: a request whose buffers, offset or length are not multiples of the
 * image's alignment goes through an aligned bounce buffer (read-modify-write for a partial write).
 *
 * Small aligned O_DIRECT reads and writes (up to KERNEL_MAX_BYTES; not write-through writes, whose
 * fdatasync a thread does) skip the threads: they go to the kernel's own asynchronous I/O
 * (io_submit, the interface QEMU calls aio=native; not io_uring), which puts them on the disk's
 * queue from the submitting thread and signals the same eventfd when each finishes. A request to a
 * thread costs two wake-ups and a few futex calls, which on a virtualized host cost more than the
 * disk's own time for a 4 KiB request. The submission asks not to block (RWF_NOWAIT): a request the
 * file system would have to wait for (a write that must allocate blocks, or update the file's
 * times) comes back -EAGAIN and goes to a thread. Measured with bench section 10's front-end alone
 * (O_DIRECT, 32 in flight): 4 KiB random reads took 19.6-23 µs a request this way against 35-43 µs
 * through the threads, 4 KiB random writes 19-23 µs against 31-48. Larger requests (sequential ones
 * merged up to 2 MiB) stay on the threads, where they measured faster: merged 64 KiB writes 39-45 µs
 * against 22-25, reads 44 against 23 (submitting a request of hundreds of pages is CPU work that the
 * threads spread over the CPUs and io_submit would keep on the device's loop). If the kernel has no
 * asynchronous I/O for the pool (io_setup fails), every request goes to the threads.
 *
 * A device that submits a drain's worth of requests at once wraps them in a batch (tsvm_aio_batch):
 * the kernel's requests then start together, up to KERNEL_MAX_BATCH per io_submit. One system call
 * starts several, and the block layer plugs them, so a virtual disk below is notified once per
 * batch (that notification is a VM exit on a virtualized host: an eighth of the device process's
 * time on 4 KiB O_DIRECT requests at depth 32). Measured through the device (in-process) with bench
 * section 10's front-end (4 KiB random, 32 in flight, where a drain takes about 31 requests):
 * batches of 8 took 12.2-17.5 µs a read against 17.3-30.3 µs unbatched, and 18.2-20.9 µs a write
 * against 20.6-25.5. Batches of the whole drain made writes slower (16.3-20.4 µs against 15.3-16.3
 * unbatched, in an earlier run): the disk then waits idle while the loop prepares the next lot.
 *
 * The io_submit of a batch is CPU work on the submitting thread (the file system's direct I/O path,
 * the block layer, the virtual disk's kick): 41% of the loop thread's samples on 4 KiB O_DIRECT
 * writes at depth 32. With tsvm_aio_offload a pool thread submits the batches instead (at most
 * KERNEL_MAX_BATCH a call, what waited first), so the loop goes on parsing the next requests while
 * the kernel starts these. What is being submitted already counts as running, so a completion that
 * comes before io_submit returns is harvested; waits for idleness wait for the submitting too. It
 * moves CPU, it does not save any: through the jailed device, the loop thread's CPU a request fell
 * from 7.2-11.9 µs to 5.2-8.3 µs (reads) and 8.0-13.6 to 5.0-7.9 µs (writes), but on a host of two
 * CPUs, where the driver, the loop and the submitting thread share them, requests took longer (reads
 * 13.7 µs, the median of five, against 10.0; writes 12.9 against 11.7). It is off by default; bench
 * sections 8 and 10 measure it beside the default, for hosts with CPUs to spare.
 *
 * tsvm_aio_threads_only sends every request to the threads, as QEMU's aio=threads does; also off by
 * default, and measured beside it. The kernel's asynchronous I/O is not free for writes either: on
 * ext4 every O_DIRECT write it completes goes through a kernel worker (the file system's direct I/O
 * completion work; 40,372 queued work items for 40,000 writes, none for reads), where a thread's
 * synchronous write completes on the thread itself. On a 2-CPU host the threads lose: 4 KiB writes at
 * depth 32 through the jailed device, five alternating rounds, took 13.7-18.5 µs a request by
 * default and 31.2-35.7 µs on the threads (qemu-storage-daemon's threads: 27.2-31.4). A host with
 * many CPUs and a disk of many hardware queues (blk-mq maps them CPU by CPU, so one submitting
 * thread reaches one) is where threads may win, and where QEMU's wrote faster than tsvm.
 */
#define _GNU_SOURCE
#include "tsvm.h"

#include <errno.h>
#include <linux/aio_abi.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum { AIO_READ = 0, AIO_WRITE = 1, AIO_FLUSH = 2 };
/* op flag: fdatasync after a successful write (a write-through device) */
#define AIO_SYNC 0x100
#define AIO_MAX_IOV 1024
/* scatter lists up to this long live inside the request; longer ones are allocated */
#define INLINE_IOV 4
#define STACK_SIZE (256 * 1024)
/* the largest O_DIRECT request given to the kernel's asynchronous I/O (see the top of this file) */
#define KERNEL_MAX_BYTES (64 * 1024)
/* the most requests a batch (tsvm_aio_batch) holds back before they start (see the top of this file) */
#define KERNEL_MAX_BATCH 8

struct aio_request {
	int op;
	int fd;
	int64_t offset;
	uint32_t tag;
	int iovcnt;
	uint32_t align;
	struct iovec *iov;
	struct iovec inline_iov[INLINE_IOV];
};

struct aio_completion {
	uint32_t tag;
	int32_t result;
};

struct tsvm_aio {
	pthread_mutex_t lock;
	pthread_cond_t work;
	pthread_cond_t idle;
	int notify_fd;
	unsigned capacity;   /* requests submitted and not yet reaped, at most */
	unsigned outstanding;
	struct aio_request *pending; /* ring of requests waiting for a thread */
	unsigned pending_head, pending_count;
	struct aio_completion *done; /* completions waiting to be reaped */
	unsigned done_count;
	unsigned running;    /* requests a thread is executing */
	unsigned waiting;    /* threads waiting for work */
	int stopping;
	/* the kernel's asynchronous I/O for aligned O_DIRECT requests: the context (made at the first
	 * such request; kernel_state -1 once io_setup failed), and each request in it by slot */
	aio_context_t kernel;
	int kernel_state;
	int kernel_refused;                 /* io_submit said the kernel cannot take such requests at all */
	struct aio_request *kernel_requests; /* [capacity], a request's iov kept for a short transfer */
	unsigned *kernel_free;              /* free slots, a stack of kernel_free_count */
	unsigned kernel_free_count;
	unsigned kernel_running;            /* submitted to the kernel, not yet harvested */
	unsigned kernel_submitted;          /* requests the kernel took, all told (for tests) */
	unsigned kernel_calls;              /* io_submit calls that took requests (for tests) */
	/* while the caller batches (tsvm_aio_batch), kernel requests wait here for one io_submit */
	int batching;
	struct iocb *kernel_iocbs;          /* [capacity], by slot */
	struct iocb **kernel_batch_list;    /* [capacity], pointers into kernel_iocbs */
	unsigned kernel_batch_count;
	/* with `offload`, a batch goes to a pool thread, which calls io_submit (the loop goes on) */
	int offload;
	/* set when work for a thread was queued under the lock: unlock_and_wake signals it after */
	int wake_after_unlock;
	/* with `threads_only`, every request goes to a thread (QEMU's aio=threads), none to the kernel */
	int threads_only;
	struct iocb **kernel_jobs;          /* [capacity], a ring of iocbs waiting for a thread to submit them */
	unsigned kernel_jobs_head, kernel_jobs_count;
	unsigned kernel_submitting;         /* iocbs a thread is submitting now */
	unsigned kernel_offloaded_calls;    /* io_submit calls a pool thread made (for tests) */
	/* the most threads: max_threads while the kernel's asynchronous I/O may take the small O_DIRECT
	 * requests, max_threads_alone once the threads serve every request (see thread_limit) */
	unsigned max_threads, max_threads_alone, threads;
	pthread_t tids[];
};

static int64_t total_length(const struct iovec *iov, int iovcnt)
{
	int64_t total = 0;
	for (int i = 0; i < iovcnt; i++) total += (int64_t)iov[i].iov_len;
	return total;
}

/* Moves `*iov` (of `*iovcnt` segments) past its first `n` bytes, shortening the segment it ends in. */
static void skip_bytes(struct iovec **iov, int *iovcnt, int64_t n)
{
	while (*iovcnt > 0 && n >= (int64_t)(*iov)->iov_len) {
		n -= (int64_t)(*iov)->iov_len;
		(*iov)++;
		(*iovcnt)--;
	}
	if (*iovcnt > 0) {
		(*iov)->iov_base = (char *)(*iov)->iov_base + n;
		(*iov)->iov_len -= (size_t)n;
	}
}

/* preadv2/pwritev2 with `flags` until everything moved (a read past the end of the file fills
 * zeros); `*moved` counts the bytes done, so a caller passing RWF_NOWAIT knows where it stopped. */
static int flagged_transfer(int fd, struct iovec *iov, int iovcnt, int64_t offset, int write, int flags, int64_t *moved)
{
	for (;;) {
		while (iovcnt > 0 && iov->iov_len == 0) { /* empty segments move nothing */
			iov++;
			iovcnt--;
		}
		if (iovcnt == 0) return 0;
		ssize_t n = write ? pwritev2(fd, iov, iovcnt, offset, flags) : preadv2(fd, iov, iovcnt, offset, flags);
		if (n < 0) {
			if (errno == EINTR) continue;
			return -errno;
		}
		if (n == 0) {
			if (write) return -EIO;
			for (int i = 0; i < iovcnt; i++) memset(iov[i].iov_base, 0, iov[i].iov_len);
			*moved += total_length(iov, iovcnt);
			return 0;
		}
		*moved += n;
		offset += n;
		skip_bytes(&iov, &iovcnt, n);
	}
}

/* preadv/pwritev until everything moved; a read past the end of the file fills zeros. */
static int plain_transfer(int fd, struct iovec *iov, int iovcnt, int64_t offset, int write)
{
	int64_t moved = 0;
	return flagged_transfer(fd, iov, iovcnt, offset, write, 0, &moved);
}

static int aligned(const struct iovec *iov, int iovcnt, int64_t offset, uint32_t align)
{
	if (offset % align) return 0;
	for (int i = 0; i < iovcnt; i++)
		if ((uintptr_t)iov[i].iov_base % align || iov[i].iov_len % align) return 0;
	return 1;
}

/*
 * O_DIRECT through an aligned bounce buffer covering the request rounded out to `align`. A write
 * that only partly covers its first or last block reads those blocks first; a read past the end of
 * the file gives zeros.
 */
static int bounced_transfer(int fd, const struct iovec *iov, int iovcnt, int64_t offset, uint32_t align, int write)
{
	int64_t length = total_length(iov, iovcnt);
	int64_t start = offset - offset % align;
	int64_t end = (offset + length + align - 1) / align * align;
	void *buf = NULL;
	if (posix_memalign(&buf, align, (size_t)(end - start))) return -ENOMEM;
	struct iovec whole = { buf, (size_t)(end - start) };
	int r = 0;
	if (!write || start != offset || end != offset + length) {
		if (write && end - start > 2 * (int64_t)align) {
			/* only the partial first and last blocks matter */
			struct iovec head = { buf, align };
			struct iovec tail = { (char *)buf + (end - start) - align, align };
			r = plain_transfer(fd, &head, 1, start, 0);
			if (!r) r = plain_transfer(fd, &tail, 1, end - align, 0);
		} else {
			struct iovec all = whole;
			r = plain_transfer(fd, &all, 1, start, 0);
		}
	}
	char *at = (char *)buf + (offset - start);
	for (int i = 0; !r && i < iovcnt; i++) {
		if (write) memcpy(at, iov[i].iov_base, iov[i].iov_len);
		else memcpy(iov[i].iov_base, at, iov[i].iov_len);
		at += iov[i].iov_len;
	}
	/* (a write that ends past the end of the file grows it to the next multiple of `align`) */
	if (!r && write) r = plain_transfer(fd, &whole, 1, start, 1);
	free(buf);
	return r;
}

static int transfer(int fd, struct iovec *iov, int iovcnt, int64_t offset, uint32_t align, int write)
{
	if (align > 1 && !aligned(iov, iovcnt, offset, align)) return bounced_transfer(fd, iov, iovcnt, offset, align, write);
	if (align > 1) tsvm_prefer_huge(iov, iovcnt); /* O_DIRECT pins each page of the buffers (c/sys.c) */
	return plain_transfer(fd, iov, iovcnt, offset, write);
}

static int execute(struct aio_request *req)
{
	int kind = req->op & 0xff;
	if (kind == AIO_FLUSH) return fdatasync(req->fd) ? -errno : 0;
	int r = transfer(req->fd, req->iov, req->iovcnt, req->offset, req->align, kind == AIO_WRITE);
	if (!r && kind == AIO_WRITE && (req->op & AIO_SYNC) && fdatasync(req->fd)) r = -errno;
	return r;
}

static void kernel_submit_jobs(struct tsvm_aio *aio);

/* Nothing is queued, running or being submitted: wakes tsvm_aio_wait_idle. Lock held. */
static void signal_if_idle(struct tsvm_aio *aio)
{
	if (!aio->pending_count && !aio->running && !aio->kernel_jobs_count && !aio->kernel_submitting)
		pthread_cond_broadcast(&aio->idle);
}

static void *worker(void *arg)
{
	struct tsvm_aio *aio = arg;
	pthread_setname_np(pthread_self(), "aio pool"); /* (ps, top, /proc: the device's loop is its main thread) */
	pthread_mutex_lock(&aio->lock);
	for (;;) {
		while (!aio->pending_count && !aio->kernel_jobs_count && !aio->stopping) {
			aio->waiting++;
			pthread_cond_wait(&aio->work, &aio->lock);
			aio->waiting--;
		}
		if (aio->stopping) break;
		if (aio->kernel_jobs_count) { /* starting the disk's work comes first */
			kernel_submit_jobs(aio);
			signal_if_idle(aio);
			continue;
		}
		struct aio_request req = aio->pending[aio->pending_head];
		if (req.iov == aio->pending[aio->pending_head].inline_iov) req.iov = req.inline_iov;
		aio->pending_head = (aio->pending_head + 1) % aio->capacity;
		aio->pending_count--;
		aio->running++;
		pthread_mutex_unlock(&aio->lock);

		int result = execute(&req);
		if (req.iov != req.inline_iov) free(req.iov);

		pthread_mutex_lock(&aio->lock);
		aio->running--;
		aio->done[aio->done_count++] = (struct aio_completion){ req.tag, result };
		if (aio->done_count == 1) {
			uint64_t one = 1;
			ssize_t ignored = write(aio->notify_fd, &one, sizeof one);
			(void)ignored; /* an eventfd only fails to count when it would overflow: it is readable anyway */
		}
		signal_if_idle(aio);
	}
	pthread_mutex_unlock(&aio->lock);
	return NULL;
}

/*
 * How many threads the pool may have now. While the kernel's asynchronous I/O takes the small
 * O_DIRECT requests, the threads see only the rest (large requests, flushes, writes into holes), and
 * max_threads of them do. Once the threads serve every request, as QEMU's aio=threads does (threads
 * only, or the kernel has no asynchronous I/O for the pool, or its io_submit refused it: under nested
 * KVM with the image on virtio-fs), a queue of small requests needs a thread each to be on the disk
 * at once, and the pool may grow to max_threads_alone. Lock held.
 */
static unsigned thread_limit(const struct tsvm_aio *aio)
{
	return aio->threads_only || aio->kernel_refused || aio->kernel_state < 0 ? aio->max_threads_alone : aio->max_threads;
}

/* Starts a thread if none waits and fewer run than there is work for; called with the lock held.
 * Returns 0, or pthread_create's error when the pool has no thread at all. */
static int add_thread_if_needed(struct tsvm_aio *aio)
{
	if (aio->waiting || aio->threads >= thread_limit(aio) || aio->threads >= aio->pending_count + aio->running + 1)
		return 0;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, STACK_SIZE);
	int r = pthread_create(&aio->tids[aio->threads], &attr, worker, aio);
	pthread_attr_destroy(&attr);
	if (!r) aio->threads++;
	return r && !aio->threads ? r : 0;
}

/* Queues `req` (its iov already owned by it) for a thread; called with the lock held. The caller
 * wakes a thread (enqueue does). */
static void enqueue_unsignalled(struct tsvm_aio *aio, const struct aio_request *req)
{
	unsigned slot = (aio->pending_head + aio->pending_count) % aio->capacity;
	aio->pending[slot] = *req;
	if (req->iov == req->inline_iov) aio->pending[slot].iov = aio->pending[slot].inline_iov;
	aio->pending_count++;
}

/*
 * Unlocks, then wakes a thread if work for one was queued meanwhile (wake_after_unlock). Woken after
 * the unlock, the thread finds the lock free; woken before, it would block on it at once: two more
 * futex calls and a context switch a request (with every request on the threads, 4 KiB O_DIRECT
 * writes at depth 32 took 24.9-36.6 µs a request against 31.0-40.8, five alternating rounds).
 */
static void unlock_and_wake(struct tsvm_aio *aio)
{
	int wake = aio->wake_after_unlock;
	aio->wake_after_unlock = 0;
	pthread_mutex_unlock(&aio->lock);
	if (wake) pthread_cond_signal(&aio->work);
}

/* Queues `req` for a thread and wakes one; called with the lock held. */
static void enqueue(struct tsvm_aio *aio, const struct aio_request *req)
{
	enqueue_unsignalled(aio, req);
	pthread_cond_signal(&aio->work);
}

static int kernel_ready(struct tsvm_aio *aio)
{
	if (aio->kernel_state) return aio->kernel_state > 0;
	aio->kernel_requests = calloc(aio->capacity, sizeof *aio->kernel_requests);
	aio->kernel_free = calloc(aio->capacity, sizeof *aio->kernel_free);
	aio->kernel_iocbs = calloc(aio->capacity, sizeof *aio->kernel_iocbs);
	aio->kernel_batch_list = calloc(aio->capacity, sizeof *aio->kernel_batch_list);
	aio->kernel_jobs = calloc(aio->capacity, sizeof *aio->kernel_jobs);
	if (!aio->kernel_requests || !aio->kernel_free || !aio->kernel_iocbs || !aio->kernel_batch_list || !aio->kernel_jobs ||
	    syscall(SYS_io_setup, aio->capacity, &aio->kernel) != 0) {
		free(aio->kernel_requests);
		free(aio->kernel_free);
		free(aio->kernel_iocbs);
		free(aio->kernel_batch_list);
		free(aio->kernel_jobs);
		aio->kernel_requests = NULL;
		aio->kernel_free = NULL;
		aio->kernel_iocbs = NULL;
		aio->kernel_batch_list = NULL;
		aio->kernel_jobs = NULL;
		aio->kernel_state = -1;
		return 0;
	}
	for (unsigned i = 0; i < aio->capacity; i++) aio->kernel_free[i] = aio->capacity - 1 - i;
	aio->kernel_free_count = aio->capacity;
	aio->kernel_state = 1;
	return 1;
}

/* The errors with which io_submit says it cannot take such requests at all (not just this one now):
 * a kernel without RWF_NOWAIT for this interface, or a file it cannot serve so. */
static int kernel_refuses(int e)
{
	return e == EINVAL || e == EOPNOTSUPP || e == ENOSYS;
}

/* Gives a request the kernel did not take, or that came back -EAGAIN (its slot already freed), to a
 * thread, or, when the pool has no thread and none can start, does it here and announces its
 * completion. Lock held. */
static void kernel_declined(struct tsvm_aio *aio, struct aio_request *req)
{
	enqueue(aio, req); /* the thread owns its iov now */
	if (!add_thread_if_needed(aio)) return;
	aio->pending_count--;
	req = &aio->pending[(aio->pending_head + aio->pending_count) % aio->capacity];
	int result = execute(req);
	if (req->iov != req->inline_iov) free(req->iov);
	aio->done[aio->done_count++] = (struct aio_completion){ req->tag, result };
	uint64_t one = 1;
	ssize_t ignored = write(aio->notify_fd, &one, sizeof one);
	(void)ignored;
}

/* Starts `count` kernel requests with as few io_submit calls as the kernel allows; one it refuses
 * goes to a thread. Called with the lock held; with `unlock`, dropped while io_submit runs (a pool
 * thread submitting: the loop may meanwhile submit and reap; what is being submitted already counts
 * as running, so a completion that comes first is harvested). */
static void kernel_submit_list(struct tsvm_aio *aio, struct iocb **list, unsigned count, int unlock)
{
	unsigned i = 0;
	aio->kernel_running += count;
	while (i < count) {
		long n = -1;
		int e = EINVAL;
		if (!aio->kernel_refused) {
			if (unlock) pthread_mutex_unlock(&aio->lock);
			n = syscall(SYS_io_submit, aio->kernel, (long)(count - i), list + i);
			e = n < 0 ? errno : EAGAIN;
			if (unlock) pthread_mutex_lock(&aio->lock);
		}
		if (n > 0) {
			aio->kernel_submitted += (unsigned)n;
			aio->kernel_calls++;
			aio->kernel_offloaded_calls += unlock != 0;
			i += (unsigned)n;
			continue;
		}
		/* the first of the rest was not taken (io_submit stops there): it goes to a thread */
		if (!aio->kernel_refused && kernel_refuses(e)) aio->kernel_refused = 1;
		unsigned slot = (unsigned)list[i]->aio_data;
		aio->kernel_running--;
		aio->kernel_free[aio->kernel_free_count++] = slot;
		kernel_declined(aio, &aio->kernel_requests[slot]);
		i++;
	}
}

/* Starts the batched kernel requests: on a pool thread when offloading and the pool has one (it
 * takes them from kernel_jobs), else here. Lock held. */
static void kernel_flush_batch(struct tsvm_aio *aio)
{
	unsigned count = aio->kernel_batch_count;
	aio->kernel_batch_count = 0;
	if (aio->offload && !add_thread_if_needed(aio) && aio->threads) {
		for (unsigned i = 0; i < count; i++)
			aio->kernel_jobs[(aio->kernel_jobs_head + aio->kernel_jobs_count++) % aio->capacity] = aio->kernel_batch_list[i];
		aio->wake_after_unlock = 1;
		return;
	}
	kernel_submit_list(aio, aio->kernel_batch_list, count, 0);
}

/* A pool thread's share of kernel submission: takes up to a batch of waiting iocbs and starts them.
 * Lock held (dropped during io_submit). */
static void kernel_submit_jobs(struct tsvm_aio *aio)
{
	struct iocb *local[KERNEL_MAX_BATCH];
	unsigned take = aio->kernel_jobs_count < KERNEL_MAX_BATCH ? aio->kernel_jobs_count : KERNEL_MAX_BATCH;
	for (unsigned i = 0; i < take; i++) local[i] = aio->kernel_jobs[(aio->kernel_jobs_head + i) % aio->capacity];
	aio->kernel_jobs_head = (aio->kernel_jobs_head + take) % aio->capacity;
	aio->kernel_jobs_count -= take;
	aio->kernel_submitting += take;
	kernel_submit_list(aio, local, take, 1);
	aio->kernel_submitting -= take;
}

/* Submits `req` (aligned O_DIRECT, read or write) to the kernel, or adds it to the batch; called
 * with the lock held. Returns 0, or -errno when the kernel did not take it (the caller gives it to
 * a thread). */
static int kernel_submit(struct tsvm_aio *aio, struct aio_request *req)
{
	if (aio->kernel_refused || !kernel_ready(aio) || !aio->kernel_free_count) return -EAGAIN;
	unsigned slot = aio->kernel_free[aio->kernel_free_count - 1];
	struct aio_request *kept = &aio->kernel_requests[slot];
	*kept = *req;
	if (req->iov == req->inline_iov) kept->iov = kept->inline_iov;
	struct iocb single;
	struct iocb *cb = aio->batching ? &aio->kernel_iocbs[slot] : &single;
	*cb = (struct iocb){
		.aio_data = slot,
		.aio_rw_flags = RWF_NOWAIT,
		.aio_lio_opcode = (req->op & 0xff) == AIO_WRITE ? IOCB_CMD_PWRITEV : IOCB_CMD_PREADV,
		.aio_fildes = (uint32_t)req->fd,
		.aio_buf = (uintptr_t)kept->iov,
		.aio_nbytes = (uint64_t)kept->iovcnt,
		.aio_offset = req->offset,
		.aio_flags = IOCB_FLAG_RESFD,
		.aio_resfd = (uint32_t)aio->notify_fd,
	};
	if (aio->batching) {
		aio->kernel_batch_list[aio->kernel_batch_count++] = cb;
		aio->kernel_free_count--;
		if (aio->kernel_batch_count >= KERNEL_MAX_BATCH) kernel_flush_batch(aio);
		return 0;
	}
	long n = syscall(SYS_io_submit, aio->kernel, 1, &cb);
	if (n != 1) {
		int e = n < 0 ? errno : EAGAIN;
		if (kernel_refuses(e)) aio->kernel_refused = 1; /* stop asking */
		return -e;
	}
	aio->kernel_free_count--;
	aio->kernel_running++;
	aio->kernel_submitted++;
	aio->kernel_calls++;
	return 0;
}

/* Turns finished kernel requests into completions; waits for at least `wait_for` of them. Called
 * with the lock held (dropped while waiting). A request that would have blocked goes to a thread; a
 * short transfer (a read at the end of the file) is finished here, as a thread would. */
static void kernel_harvest(struct tsvm_aio *aio, unsigned wait_for)
{
	if (aio->kernel_state <= 0 || !aio->kernel_running) return;
	struct io_event events[64];
	for (;;) {
		long want = aio->kernel_running < 64 ? aio->kernel_running : 64;
		long min = wait_for < (unsigned)want ? wait_for : want;
		struct timespec none = { 0, 0 };
		if (min) pthread_mutex_unlock(&aio->lock);
		long n = syscall(SYS_io_getevents, aio->kernel, min, want, events, min ? NULL : &none);
		int failed = n < 0 ? errno : 0;
		if (min) pthread_mutex_lock(&aio->lock);
		if (n < 0 && failed == EINTR) continue;
		if (n <= 0) return;
		for (long i = 0; i < n; i++) {
			unsigned slot = (unsigned)events[i].data;
			struct aio_request *req = &aio->kernel_requests[slot];
			int64_t expected = total_length(req->iov, req->iovcnt);
			int64_t res = events[i].res;
			aio->kernel_running--;
			aio->kernel_free[aio->kernel_free_count++] = slot;
			if (res == -EAGAIN) {
				kernel_declined(aio, req);
				continue;
			}
			int result = res < 0 ? (int)res : 0;
			if (res >= 0 && res < expected) {
				/* the rest, from where the kernel stopped (a read past the end fills zeros) */
				int64_t moved = 0;
				struct iovec *iov = req->iov;
				int iovcnt = req->iovcnt;
				skip_bytes(&iov, &iovcnt, res);
				result = flagged_transfer(req->fd, iov, iovcnt, req->offset + res, (req->op & 0xff) == AIO_WRITE, 0, &moved);
			}
			if (req->iov != req->inline_iov) free(req->iov);
			aio->done[aio->done_count++] = (struct aio_completion){ req->tag, result };
		}
		if (wait_for <= (unsigned)n) wait_for = 0;
		else wait_for -= (unsigned)n;
		if (!aio->kernel_running || (!wait_for && n < want)) return;
	}
}

/* A pool of at most `max_threads` threads, or `max_threads_alone` once they serve every request (see
 * thread_limit), for up to `capacity` requests; completions signal `notify_fd`. */
struct tsvm_aio *tsvm_aio_create(int max_threads, int max_threads_alone, int capacity, int notify_fd)
{
	if (max_threads < 1 || max_threads_alone < max_threads || capacity < 1 || capacity > 65536) return NULL;
	struct tsvm_aio *aio = calloc(1, sizeof *aio + (size_t)max_threads_alone * sizeof(pthread_t));
	if (!aio) return NULL;
	aio->pending = calloc((size_t)capacity, sizeof *aio->pending);
	aio->done = calloc((size_t)capacity, sizeof *aio->done);
	if (!aio->pending || !aio->done) {
		free(aio->pending);
		free(aio->done);
		free(aio);
		return NULL;
	}
	pthread_mutex_init(&aio->lock, NULL);
	pthread_cond_init(&aio->work, NULL);
	pthread_cond_init(&aio->idle, NULL);
	aio->notify_fd = notify_fd;
	aio->capacity = (unsigned)capacity;
	aio->max_threads = (unsigned)max_threads;
	aio->max_threads_alone = (unsigned)max_threads_alone;
	return aio;
}

/*
 * Queues one request: op is 0 read, 1 write (| 0x100: fdatasync after it), 2 fdatasync; iov is
 * struct iovec[iovcnt] (copied); align > 1 is an O_DIRECT file's alignment. Returns 0, -EAGAIN when
 * `capacity` requests are outstanding, -EINVAL for a bad request, or -errno if no thread could start.
 */
int tsvm_aio_submit(struct tsvm_aio *aio, int op, int fd, const void *iov, int iovcnt, int64_t offset, uint32_t tag, uint32_t align)
{
	int kind = op & 0xff;
	if (kind > AIO_FLUSH || (kind != AIO_FLUSH && (iovcnt < 0 || iovcnt > AIO_MAX_IOV)) || offset < 0 ||
	    (align > 1 && (align & (align - 1))))
		return -EINVAL;
	if (kind == AIO_FLUSH) iovcnt = 0;
	struct iovec *copy = NULL;
	if (iovcnt > INLINE_IOV) {
		copy = malloc((size_t)iovcnt * sizeof *copy);
		if (!copy) return -ENOMEM;
		memcpy(copy, iov, (size_t)iovcnt * sizeof *copy);
	}
	struct aio_request req = { .op = op, .fd = fd, .offset = offset, .tag = tag, .iovcnt = iovcnt, .align = align > 1 ? align : 1 };
	if (copy) {
		req.iov = copy;
	} else {
		if (iovcnt) memcpy(req.inline_iov, iov, (size_t)iovcnt * sizeof *copy);
		req.iov = req.inline_iov;
	}
	pthread_mutex_lock(&aio->lock);
	if (aio->outstanding >= aio->capacity) {
		pthread_mutex_unlock(&aio->lock);
		free(copy);
		return -EAGAIN;
	}
	/* small aligned O_DIRECT reads and writes (not write-through ones) go to the kernel when it takes them */
	if (!aio->threads_only && kind != AIO_FLUSH && !(op & AIO_SYNC) && req.align > 1 && iovcnt > 0 && total_length(req.iov, iovcnt) <= KERNEL_MAX_BYTES &&
	    aligned(req.iov, iovcnt, offset, req.align) && kernel_submit(aio, &req) == 0) {
		aio->outstanding++;
		unlock_and_wake(aio); /* (a batch that filled may have gone to a thread) */
		return 0;
	}
	int r = add_thread_if_needed(aio);
	if (r) {
		pthread_mutex_unlock(&aio->lock);
		free(copy);
		return -r;
	}
	enqueue_unsignalled(aio, &req);
	aio->outstanding++;
	aio->wake_after_unlock = 1;
	unlock_and_wake(aio);
	return 0;
}

/* Moves up to `max` completions into out[] as {u32 tag, i32 result} pairs; returns how many. */
int tsvm_aio_reap(struct tsvm_aio *aio, void *out, int max)
{
	struct aio_completion *dst = out;
	pthread_mutex_lock(&aio->lock);
	kernel_harvest(aio, 0);
	unsigned n = aio->done_count < (unsigned)max ? aio->done_count : (unsigned)max;
	memcpy(dst, aio->done, n * sizeof *dst);
	memmove(aio->done, aio->done + n, (aio->done_count - n) * sizeof *dst);
	aio->done_count -= n;
	aio->outstanding -= n;
	pthread_mutex_unlock(&aio->lock);
	return (int)n;
}

/*
 * Batches while `on`: the kernel's requests submitted meanwhile go to it together when the batch
 * ends (tsvm_aio_batch(aio, 0)), in one io_submit where it takes them all. One system call then
 * starts the lot, and the block layer sees them as one plugged batch: a virtual disk below is
 * notified once for it, not once a request. Thread requests start at once either way.
 */
void tsvm_aio_batch(struct tsvm_aio *aio, int on)
{
	pthread_mutex_lock(&aio->lock);
	aio->batching = on != 0;
	if (!on && aio->kernel_batch_count) kernel_flush_batch(aio);
	unlock_and_wake(aio);
}

/* Where a batch's io_submit runs from the next batch on: `on`, on a pool thread (see the top of
 * this file); else on the caller's thread, as a new pool does. */
void tsvm_aio_offload(struct tsvm_aio *aio, int on)
{
	pthread_mutex_lock(&aio->lock);
	aio->offload = on != 0;
	pthread_mutex_unlock(&aio->lock);
}

/* Whether requests from now on all go to the threads (`on`), the kernel's asynchronous I/O taking
 * none; a new pool gives it the small aligned O_DIRECT ones (see the top of this file). */
void tsvm_aio_threads_only(struct tsvm_aio *aio, int on)
{
	pthread_mutex_lock(&aio->lock);
	aio->threads_only = on != 0;
	pthread_mutex_unlock(&aio->lock);
}

/* Waits until no request is queued or running (their completions stay to be reaped); returns how
 * many wait to be reaped. A batch still open is submitted first, and stays open. */
int tsvm_aio_wait_idle(struct tsvm_aio *aio)
{
	pthread_mutex_lock(&aio->lock);
	if (aio->kernel_batch_count) kernel_flush_batch(aio);
	if (aio->wake_after_unlock) { /* (the wait below drops the lock at once) */
		aio->wake_after_unlock = 0;
		pthread_cond_signal(&aio->work);
	}
	for (;;) {
		while (aio->pending_count || aio->running || aio->kernel_jobs_count || aio->kernel_submitting)
			pthread_cond_wait(&aio->idle, &aio->lock);
		if (!aio->kernel_running) break;
		kernel_harvest(aio, aio->kernel_running); /* (what would have blocked goes to a thread: wait again) */
	}
	int n = (int)aio->done_count;
	pthread_mutex_unlock(&aio->lock);
	return n;
}

/* How many requests the kernel's asynchronous I/O took since the pool was made (for tests). */
int tsvm_aio_kernel_requests(struct tsvm_aio *aio)
{
	pthread_mutex_lock(&aio->lock);
	int n = (int)aio->kernel_submitted;
	pthread_mutex_unlock(&aio->lock);
	return n;
}

/* How many of those calls a pool thread made (for tests: offloaded batches). */
int tsvm_aio_kernel_offloaded_calls(struct tsvm_aio *aio)
{
	pthread_mutex_lock(&aio->lock);
	int n = (int)aio->kernel_offloaded_calls;
	pthread_mutex_unlock(&aio->lock);
	return n;
}

/* How many io_submit calls those took (for tests: a batch takes one). */
int tsvm_aio_kernel_calls(struct tsvm_aio *aio)
{
	pthread_mutex_lock(&aio->lock);
	int n = (int)aio->kernel_calls;
	pthread_mutex_unlock(&aio->lock);
	return n;
}

/* How many threads the pool has started (they stay). */
int tsvm_aio_threads(struct tsvm_aio *aio)
{
	pthread_mutex_lock(&aio->lock);
	int n = (int)aio->threads;
	pthread_mutex_unlock(&aio->lock);
	return n;
}

/* Waits for what is in flight, stops the threads and frees the pool. */
void tsvm_aio_destroy(struct tsvm_aio *aio)
{
	tsvm_aio_wait_idle(aio);
	pthread_mutex_lock(&aio->lock);
	aio->stopping = 1;
	pthread_cond_broadcast(&aio->work);
	pthread_mutex_unlock(&aio->lock);
	for (unsigned i = 0; i < aio->threads; i++) pthread_join(aio->tids[i], NULL);
	if (aio->kernel_state > 0) syscall(SYS_io_destroy, aio->kernel);
	free(aio->kernel_requests);
	free(aio->kernel_free);
	free(aio->kernel_iocbs);
	free(aio->kernel_batch_list);
	free(aio->kernel_jobs);
	pthread_cond_destroy(&aio->work);
	pthread_cond_destroy(&aio->idle);
	pthread_mutex_destroy(&aio->lock);
	free(aio->pending);
	free(aio->done);
	free(aio);
}

/*
 * The alignment O_DIRECT needs on `fd`, found as QEMU does, by trying: the smallest of 512..4096
 * bytes at which a read at offset 0 into page-aligned memory succeeds (4096 if none can tell, as
 * for an empty file). Returns it, or -errno.
 */
int tsvm_dio_probe_align(int fd)
{
	void *buf = NULL;
	if (posix_memalign(&buf, 4096, 4096)) return -ENOMEM;
	int found = 4096;
	for (int align = 512; align < 4096; align *= 2) {
		ssize_t n;
		do n = pread(fd, buf, (size_t)align, 0);
		while (n < 0 && errno == EINTR);
		if (n > 0) {
			found = align;
			break;
		}
		if (n == 0) break; /* an empty file says nothing */
	}
	free(buf);
	return found;
}

/* The synchronous form, for one caller's own thread: 0 or -errno (reads past the end give zeros). */
/* Moves what can be moved now without blocking (RWF_NOWAIT: the pages are cached, no writeback is
 * in the way), on the calling thread, for a file read through the page cache. Returns the bytes
 * moved (a read past the end of the file counts its zeros), or -errno when none were (-EAGAIN: the
 * rest would block; -EOPNOTSUPP: the file system cannot say). The caller moves the rest elsewhere. */
int tsvm_disk_try(int fd, const void *iov, int iovcnt, int64_t offset, int write)
{
	if (iovcnt < 0 || iovcnt > AIO_MAX_IOV || offset < 0) return -EINVAL;
	struct iovec local[INLINE_IOV];
	struct iovec *copy = iovcnt > INLINE_IOV ? malloc((size_t)iovcnt * sizeof *copy) : local;
	if (!copy) return -ENOMEM;
	memcpy(copy, iov, (size_t)iovcnt * sizeof *copy);
	int64_t moved = 0;
	int r = flagged_transfer(fd, copy, iovcnt, offset, write, RWF_NOWAIT, &moved);
	if (copy != local) free(copy);
	if (moved > INT32_MAX) return -EINVAL; /* no request is that large (pool requests are at most 512 KiB) */
	return moved > 0 || r == 0 ? (int)moved : r;
}

int tsvm_disk_transfer(int fd, const void *iov, int iovcnt, int64_t offset, uint32_t align, int write)
{
	if (iovcnt < 0 || iovcnt > AIO_MAX_IOV || offset < 0 || (align > 1 && (align & (align - 1)))) return -EINVAL;
	struct iovec local[INLINE_IOV];
	struct iovec *copy = iovcnt > INLINE_IOV ? malloc((size_t)iovcnt * sizeof *copy) : local;
	if (!copy) return -ENOMEM;
	memcpy(copy, iov, (size_t)iovcnt * sizeof *copy);
	int r = transfer(fd, copy, iovcnt, offset, align > 1 ? align : 1, write);
	if (copy != local) free(copy);
	return r;
}
