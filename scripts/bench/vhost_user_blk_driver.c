// vhost_user_blk_driver.c - the smallest vhost-user-blk front-end: one queue in a memfd it shares with
// the back-end, one 4 KiB read in flight at a time, each waited for on the call eventfd (as a guest
// waits for its interrupt). It times every request, so two back-ends (tsvm devices, qemu-storage-daemon)
// can be compared with nothing else in the way: no VM, no guest, the same front-end for both.
//
// Usage: vhost_user_blk_driver SOCKET IMAGE REQUESTS
// Checks the first requests' bytes against IMAGE (read with pread), then times REQUESTS random 4 KiB
// reads within IMAGE's size and prints "requests N median-ns M mean-ns A p99-ns P".
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
#define QSIZE 256
#define MEM_SIZE (1 << 20)
#define DESC 0x0000
#define AVAIL 0x1000
#define USED 0x2000
#define HEADER 0x3000
#define STATUS 0x3010
#define DATA 0x4000
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

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s SOCKET IMAGE REQUESTS\n", argv[0]);
		return 2;
	}
	long requests = atol(argv[3]);
	int image = open(argv[2], O_RDONLY);
	struct stat st;
	if (image < 0 || fstat(image, &st) < 0 || st.st_size < BLOCK || requests <= 0)
		die("image");
	uint64_t blocks = st.st_size / BLOCK;

	sock = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
	if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0)
		die("connect");

	/* Sealed against shrinking, as back-ends that map it require (tsvm's does). */
	int memfd = memfd_create("driver-memory", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (memfd < 0 || ftruncate(memfd, MEM_SIZE) < 0 || fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
		die("memfd");
	uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	int kick = eventfd(0, EFD_CLOEXEC), call = eventfd(0, EFD_CLOEXEC);

	uint64_t features = get_u64(GET_FEATURES);
	if (!(features & F_VERSION_1))
		die("back-end without VIRTIO_F_VERSION_1");
	bool protocol = features & F_PROTOCOL_FEATURES;
	set_u64(SET_FEATURES, features & (F_VERSION_1 | F_PROTOCOL_FEATURES), -1);
	if (protocol) {
		get_u64(GET_PROTOCOL_FEATURES);
		set_u64(SET_PROTOCOL_FEATURES, 0, -1);
	}
	send_msg(SET_OWNER, NULL, 0, NULL, 0);
	struct { uint32_t count, padding; uint64_t guest_address, size, user_address, offset; } table = {
		1, 0, 0, MEM_SIZE, (uintptr_t)mem, 0,
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

	struct desc *desc = (struct desc *)(mem + DESC);
	desc[0] = (struct desc){ HEADER, 16, 1, 1 };
	desc[1] = (struct desc){ DATA, BLOCK, 1 | 2, 2 };
	desc[2] = (struct desc){ STATUS, 1, 2, 0 };
	volatile uint16_t *avail = (uint16_t *)(mem + AVAIL);
	volatile uint16_t *used_idx = (uint16_t *)(mem + USED + 2);
	volatile uint32_t *used_len = (uint32_t *)(mem + USED + 4 + 4);
	uint64_t *latency = calloc(requests, sizeof *latency);
	uint8_t expected[BLOCK];
	uint64_t seed = 0x9e3779b97f4a7c15ull;
	long total = WARMUP + requests;
	for (long i = 0; i < total; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		uint64_t block = (seed >> 17) % blocks;
		uint32_t head[4] = { 0, 0, (uint32_t)(block * 8), (uint32_t)(block * 8 >> 32) }; /* IN, sector */
		memcpy(mem + HEADER, head, 16);
		mem[STATUS] = 0xff;
		uint64_t start = now_ns();
		uint16_t idx = (uint16_t)i;
		avail[2 + idx % QSIZE] = 0;
		__atomic_store_n(&avail[1], (uint16_t)(idx + 1), __ATOMIC_RELEASE);
		uint64_t one = 1, got;
		if (write(kick, &one, 8) != 8)
			die("kick");
		while (__atomic_load_n(used_idx, __ATOMIC_ACQUIRE) != (uint16_t)(idx + 1)) {
			/* A back-end that dropped the connection (or stalled) ends the run instead of hanging it. */
			struct pollfd fds[2] = { { call, POLLIN, 0 }, { sock, POLLIN, 0 } };
			if (poll(fds, 2, 10000) <= 0 || fds[1].revents)
				die("no completion (the back-end closed the connection or stalled)");
			if (read(call, &got, 8) != 8 && errno != EINTR)
				die("call");
		}
		uint64_t took = now_ns() - start;
		if (mem[STATUS] != 0 || used_len[(idx % QSIZE) * 2] < BLOCK + 1) {
			fprintf(stderr, "vhost_user_blk_driver: request %ld failed (status %u)\n", i, mem[STATUS]);
			return 1;
		}
		if (i < CHECKED) {
			if (pread(image, expected, BLOCK, block * BLOCK) != BLOCK || memcmp(expected, mem + DATA, BLOCK) != 0) {
				fprintf(stderr, "vhost_user_blk_driver: request %ld read the wrong bytes\n", i);
				return 1;
			}
		}
		if (i >= WARMUP)
			latency[i - WARMUP] = took;
	}
	uint64_t sum = 0;
	for (long i = 0; i < requests; i++)
		sum += latency[i];
	qsort(latency, requests, sizeof *latency, by_value);
	printf("requests %ld median-ns %llu mean-ns %llu p99-ns %llu\n", requests, (unsigned long long)latency[requests / 2],
	       (unsigned long long)(sum / requests), (unsigned long long)latency[requests * 99 / 100]);
	return 0;
}
