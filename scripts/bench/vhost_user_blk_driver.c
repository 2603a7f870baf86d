// vhost_user_blk_driver.c - the smallest vhost-user-blk front-end: one queue in a memfd it shares with
// the back-end, each completion waited for on the call eventfd (as a guest waits for its interrupt).
// It times the requests, so two back-ends (tsvm devices, qemu-storage-daemon) can be compared with
// nothing else in the way: no VM, no guest, the same front-end for both.
//
// Usage: vhost_user_blk_driver SOCKET IMAGE REQUESTS [SIZE DEPTH read|write]
// Default: 4096 1 read. 4 KiB requests go to random blocks, larger ones run sequentially through the
// image (wrapping), as section 8's rows do. Reads are checked against IMAGE (read with pread) for the
// first requests. At depth 1 it times each request and prints
// "requests N median-ns M mean-ns A p99-ns P"; at a depth above 1 it keeps DEPTH requests in flight,
// resubmitting each slot as it completes (one kick per batch, none while the back-end asks for none),
// and prints "requests N depth D ns-per-request T" over the whole timed run. FLUSH is negotiated when
// offered, so a write completes from the back-end's cache for every back-end alike.
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum {
	GET_FEATURES = 1, SET_FEATURES = 2, SET_OWNER = 3, SET_MEM_TABLE = 5, SET_VRING_NUM = 8,
	SET_VRING_ADDR = 9, SET_VRING_BASE = 10, SET_VRING_KICK = 12, SET_VRING_CALL = 13,
	GET_PROTOCOL_FEATURES = 15, SET_PROTOCOL_FEATURES = 16, SET_VRING_ENABLE = 18,
};
#define VERSION 0x1
#define F_VERSION_1 (1ull << 32)
#define F_PROTOCOL_FEATURES (1ull << 30)
#define F_FLUSH (1ull << 9)
#define QSIZE 256
#define MAX_DEPTH 128
#define MAX_SIZE (1 << 20)
#define DESC 0x0000
#define AVAIL 0x1000
#define USED 0x2000
#define HEADERS 0x4000 /* one 16-byte header and one status byte per slot: 32 bytes a slot */
#define DATA 0x10000   /* one SIZE buffer per slot */
#define BLOCK 4096
#define CHECKED 64
#define WARMUP 500

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct header { uint32_t request, flags, size; };

static int sock;

static void die(const char *what)
{
	fprintf(stderr, "vhost_user_blk_driver: %s: %s\n", what, errno ? strerror(errno) : "failed");
	exit(1);
}

/* Sends one message with `len` bytes of payload and, when fd >= 0, that fd. */
static void send_msg(uint32_t request, const void *payload, uint32_t len, const int *fds, int nfds)
{
	uint8_t buf[256];
	struct header h = { request, VERSION, len };
	memcpy(buf, &h, sizeof h);
	memcpy(buf + sizeof h, payload, len);
	struct iovec iov = { buf, sizeof h + len };
	union { char space[CMSG_SPACE(sizeof(int) * 8)]; struct cmsghdr align; } control;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds > 0) {
		msg.msg_control = control.space;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}
	if (sendmsg(sock, &msg, 0) != (ssize_t)iov.iov_len)
		die("sendmsg");
}

static uint64_t get_u64(uint32_t request)
{
	send_msg(request, NULL, 0, NULL, 0);
	struct header h;
	uint64_t value;
	if (recv(sock, &h, sizeof h, MSG_WAITALL) != sizeof h || h.request != request || h.size != 8 ||
	    recv(sock, &value, 8, MSG_WAITALL) != 8)
		die("reply");
	return value;
}

static void set_u64(uint32_t request, uint64_t value, int fd)
{
	send_msg(request, &value, 8, &fd, fd >= 0);
}

static void set_state(uint32_t request, uint32_t index, uint32_t num)
{
	uint32_t state[2] = { index, num };
	send_msg(request, state, sizeof state, NULL, 0);
}

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + t.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint8_t *mem;
static uint64_t blocks, size, position, seed = 0x9e3779b97f4a7c15ull;
static bool writing;

/* Where the next request goes: a random block for 4 KiB requests, the next SIZE bytes otherwise. */
static uint64_t next_offset(void)
{
	if (size == BLOCK) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		return (seed >> 17) % blocks * BLOCK;
	}
	uint64_t offset = position;
	position = position + 2 * size > blocks * BLOCK ? 0 : position + size;
	return offset;
}

/* Fills slot `slot`'s header and status for a request at `offset`; its three descriptors are fixed. */
static void prepare(uint32_t slot, uint64_t offset)
{
	uint32_t head[4] = { writing ? 1 : 0, 0, (uint32_t)(offset / 512), (uint32_t)(offset / 512 >> 32) };
	memcpy(mem + HEADERS + slot * 32, head, 16);
	mem[HEADERS + slot * 32 + 16] = 0xff;
	if (writing)
		memset(mem + DATA + slot * size, (int)(offset / size), 64);
}

static void wait_call(int call)
{
	/* A back-end that dropped the connection (or stalled) ends the run instead of hanging it. */
	struct pollfd fds[2] = { { call, POLLIN, 0 }, { sock, POLLIN, 0 } };
	uint64_t got;
	if (poll(fds, 2, 10000) <= 0 || fds[1].revents)
		die("no completion (the back-end closed the connection or stalled)");
	if (read(call, &got, 8) != 8 && errno != EINTR)
		die("call");
}

int main(int argc, char **argv)
{
	if (argc != 4 && argc != 7) {
		fprintf(stderr, "usage: %s SOCKET IMAGE REQUESTS [SIZE DEPTH read|write]\n", argv[0]);
		return 2;
	}
	long requests = atol(argv[3]);
	size = argc == 7 ? strtoull(argv[4], NULL, 0) : BLOCK;
	uint32_t depth = argc == 7 ? (uint32_t)atoi(argv[5]) : 1;
	writing = argc == 7 && strcmp(argv[6], "write") == 0;
	if (argc == 7 && !writing && strcmp(argv[6], "read") != 0) {
		fprintf(stderr, "vhost_user_blk_driver: the direction is read or write, not %s\n", argv[6]);
		return 2;
	}
	if (size < 512 || size % 512 || size > MAX_SIZE || depth < 1 || depth > MAX_DEPTH || requests <= 0) {
		fprintf(stderr, "vhost_user_blk_driver: SIZE must be a multiple of 512 up to 1 MiB, DEPTH 1 to %d\n", MAX_DEPTH);
		return 2;
	}
	int image = open(argv[2], O_RDONLY);
	struct stat st;
	if (image < 0 || fstat(image, &st) < 0 || (uint64_t)st.st_size < 2 * size)
		die("image");
	blocks = st.st_size / BLOCK;

	sock = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
	if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0)
		die("connect");

	/* Sealed against shrinking, as back-ends that map it require (tsvm's does). */
	uint64_t mem_size = DATA + (uint64_t)depth * size;
	mem_size = (mem_size + 0xfffff) & ~0xfffffull;
	int memfd = memfd_create("driver-memory", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (memfd < 0 || ftruncate(memfd, mem_size) < 0 || fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
		die("memfd");
	mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	int kick = eventfd(0, EFD_CLOEXEC), call = eventfd(0, EFD_CLOEXEC);

	uint64_t features = get_u64(GET_FEATURES);
	if (!(features & F_VERSION_1))
		die("back-end without VIRTIO_F_VERSION_1");
	bool protocol = features & F_PROTOCOL_FEATURES;
	set_u64(SET_FEATURES, features & (F_VERSION_1 | F_PROTOCOL_FEATURES | F_FLUSH), -1);
	if (protocol) {
		get_u64(GET_PROTOCOL_FEATURES);
		set_u64(SET_PROTOCOL_FEATURES, 0, -1);
	}
	send_msg(SET_OWNER, NULL, 0, NULL, 0);
	struct { uint32_t count, padding; uint64_t guest_address, size, user_address, offset; } table = {
		1, 0, 0, mem_size, (uintptr_t)mem, 0,
	};
	send_msg(SET_MEM_TABLE, &table, sizeof table, &memfd, 1);
	set_state(SET_VRING_NUM, 0, QSIZE);
	set_state(SET_VRING_BASE, 0, 0);
	struct { uint32_t index, flags; uint64_t desc, used, avail, log; } ring = {
		0, 0, (uintptr_t)mem + DESC, (uintptr_t)mem + USED, (uintptr_t)mem + AVAIL, 0,
	};
	send_msg(SET_VRING_ADDR, &ring, sizeof ring, NULL, 0);
	set_u64(SET_VRING_KICK, 0, kick);
	set_u64(SET_VRING_CALL, 0, call);
	if (protocol)
		set_state(SET_VRING_ENABLE, 0, 1);

	/* Slot s owns descriptors 3s (header), 3s+1 (data) and 3s+2 (status). */
	struct desc *desc = (struct desc *)(mem + DESC);
	for (uint32_t s = 0; s < depth; s++) {
		desc[3 * s] = (struct desc){ HEADERS + s * 32, 16, 1, (uint16_t)(3 * s + 1) };
		desc[3 * s + 1] = (struct desc){ DATA + s * size, (uint32_t)size, writing ? 1 : 1 | 2, (uint16_t)(3 * s + 2) };
		desc[3 * s + 2] = (struct desc){ HEADERS + s * 32 + 16, 1, 2, 0 };
	}
	volatile uint16_t *avail = (uint16_t *)(mem + AVAIL);
	volatile uint16_t *used_flags = (uint16_t *)(mem + USED);
	volatile uint16_t *used_idx = (uint16_t *)(mem + USED + 2);
	volatile uint32_t *used_ring = (uint32_t *)(mem + USED + 4);
	uint64_t *latency = calloc(requests, sizeof *latency);
	uint64_t *started = calloc(depth, sizeof *started), *offsets = calloc(depth, sizeof *offsets);
	uint8_t *expected = malloc(size);
	long total = WARMUP + requests, submitted = 0, completed = 0;
	uint16_t avail_idx = 0, seen = 0;
	uint64_t timed_from = 0;
	uint64_t one = 1;
	/* Fill the queue, then resubmit each slot as it completes. */
	for (uint32_t s = 0; s < depth && submitted < total; s++, submitted++) {
		offsets[s] = next_offset();
		prepare(s, offsets[s]);
		started[s] = now_ns();
		avail[2 + avail_idx++ % QSIZE] = (uint16_t)(3 * s);
	}
	__atomic_store_n(&avail[1], avail_idx, __ATOMIC_RELEASE);
	if (write(kick, &one, 8) != 8)
		die("kick");
	while (completed < total) {
		uint16_t now = __atomic_load_n(used_idx, __ATOMIC_ACQUIRE);
		if (now == seen) {
			wait_call(call);
			continue;
		}
		bool added = false;
		for (; seen != now; seen++) {
			uint32_t id = used_ring[(seen % QSIZE) * 2], len = used_ring[(seen % QSIZE) * 2 + 1];
			uint32_t s = id / 3;
			uint8_t status = mem[HEADERS + s * 32 + 16];
			if (id % 3 || s >= depth || status != 0 || len < (writing ? 1 : size + 1)) {
				fprintf(stderr, "vhost_user_blk_driver: request %ld failed (head %u, status %u, len %u)\n", completed, id, status, len);
				return 1;
			}
			uint64_t end = now_ns();
			if (!writing && completed < CHECKED &&
			    (pread(image, expected, size, offsets[s]) != (ssize_t)size || memcmp(expected, mem + DATA + s * size, size) != 0)) {
				fprintf(stderr, "vhost_user_blk_driver: request %ld read the wrong bytes\n", completed);
				return 1;
			}
			if (completed >= WARMUP)
				latency[completed - WARMUP] = end - started[s];
			if (++completed == WARMUP)
				timed_from = end;
			if (submitted < total) {
				offsets[s] = next_offset();
				prepare(s, offsets[s]);
				started[s] = now_ns();
				avail[2 + avail_idx++ % QSIZE] = (uint16_t)(3 * s);
				submitted++;
				added = true;
			}
		}
		if (added) {
			__atomic_store_n(&avail[1], avail_idx, __ATOMIC_RELEASE);
			__atomic_thread_fence(__ATOMIC_SEQ_CST);
			if (!(__atomic_load_n(used_flags, __ATOMIC_ACQUIRE) & 1) && write(kick, &one, 8) != 8)
				die("kick");
		}
	}
	uint64_t elapsed = now_ns() - timed_from;
	if (depth > 1) {
		printf("requests %ld depth %u ns-per-request %llu\n", requests, depth, (unsigned long long)(elapsed / requests));
		return 0;
	}
	uint64_t sum = 0;
	for (long i = 0; i < requests; i++)
		sum += latency[i];
	qsort(latency, requests, sizeof *latency, by_value);
	printf("requests %ld median-ns %llu mean-ns %llu p99-ns %llu\n", requests, (unsigned long long)latency[requests / 2],
	       (unsigned long long)(sum / requests), (unsigned long long)latency[requests * 99 / 100]);
	return 0;
}
