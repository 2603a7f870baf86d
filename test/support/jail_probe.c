/* jail_probe.c - stands in for a device process in the jail tests: reads a seccomp filter from fd 3,
 * locks itself down with tsvm_lockdown, says "locked" on the seqpacket at fd 4, then waits there:
 * a message "socket" makes it call socket(2) (forbidden), "thread" makes it start and join its first
 * thread and answer "thread ok", end of input makes it exit. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int tsvm_lockdown(const void *bpf, uint64_t len, uint64_t max_fds);

static void *no_op(void *arg)
{
	return arg;
}

int main(void)
{
	static unsigned char filter[32768];
	ssize_t n = read(3, filter, sizeof(filter));
	if (n <= 0) return 10;
	int r = tsvm_lockdown(filter, (uint64_t)n, 64);
	char msg[32];
	int len = 6;
	if (r == 0) {
		memcpy(msg, "locked", 6);
	} else {
		/* "failed N" with the errno, for the test's message */
		int e = -r, at = 7;
		memcpy(msg, "failed ", 7);
		char digits[12]; int d = 0;
		do { digits[d++] = (char)('0' + e % 10); e /= 10; } while (e);
		while (d) msg[at++] = digits[--d];
		len = at;
	}
	if (syscall(SYS_sendto, 4, msg, len, 0, NULL, 0) < 0) return 11;
	for (;;) {
		char buf[16] = { 0 };
		long got = syscall(SYS_recvfrom, 4, buf, sizeof(buf) - 1, 0, NULL, NULL);
		if (got <= 0) syscall(SYS_exit_group, 0);
		if (!strcmp(buf, "socket")) syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
		if (!strcmp(buf, "thread")) {
			pthread_t t;
			int ok = pthread_create(&t, NULL, no_op, NULL) == 0 && pthread_join(t, NULL) == 0;
			if (syscall(SYS_sendto, 4, ok ? "thread ok" : "thread failed", ok ? 9 : 13, 0, NULL, 0) < 0) return 12;
		}
	}
}
