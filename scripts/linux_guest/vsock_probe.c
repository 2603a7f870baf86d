/* vsock_probe.c - the Linux guest's side of the vsock tests, run from the test initramfs:
 *   vsock_probe connect PORT MESSAGE   connect to the host (CID 2) on PORT, send MESSAGE, print the reply
 *   vsock_probe echo PORT              accept one connection on PORT, echo what arrives, print how much
 * Exits 0 on success; every wait is bounded (SO_RCVTIMEO, alarm). */
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int fail(const char *what) { perror(what); return 1; }

int main(int argc, char **argv)
{
	if (argc < 3) { fprintf(stderr, "usage: vsock_probe connect PORT MESSAGE | echo PORT\n"); return 2; }
	alarm(60);
	struct timeval timeout = { .tv_sec = 30 };
	struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_port = (unsigned)atoi(argv[2]) };
	int s = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (s < 0) return fail("socket");
	char buf[512];
	if (strcmp(argv[1], "connect") == 0 && argc == 4) {
		addr.svm_cid = VMADDR_CID_HOST;
		if (connect(s, (struct sockaddr *)&addr, sizeof(addr)) < 0) return fail("connect");
		if (write(s, argv[3], strlen(argv[3])) != (ssize_t)strlen(argv[3])) return fail("write");
		setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
		ssize_t n = read(s, buf, sizeof(buf) - 1);
		if (n <= 0) return fail("read");
		buf[n] = 0;
		printf("vsock reply: %s\n", buf);
		return 0;
	}
	if (strcmp(argv[1], "echo") == 0) {
		addr.svm_cid = VMADDR_CID_ANY;
		if (bind(s, (struct sockaddr *)&addr, sizeof(addr)) < 0) return fail("bind");
		if (listen(s, 1) < 0) return fail("listen");
		printf("vsock listening on port %s\n", argv[2]);
		fflush(stdout);
		int c = accept(s, NULL, NULL);
		if (c < 0) return fail("accept");
		setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
		ssize_t n = read(c, buf, sizeof(buf));
		if (n <= 0) return fail("read");
		if (write(c, buf, (size_t)n) != n) return fail("write");
		printf("vsock echoed %zd bytes\n", n);
		close(c);
		return 0;
	}
	fprintf(stderr, "usage: vsock_probe connect PORT MESSAGE | echo PORT\n");
	return 2;
}
