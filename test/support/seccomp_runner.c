/* seccomp_runner.c - installs a BPF filter read from a file, then makes one system call and prints
 * "ret <value> errno <n>". A call the filter kills ends the process with SIGSYS instead.
 * usage: seccomp_runner FILTER ACTION  (actions: getpid socket mmap_exec mmap_rw ioctl_tun openat
 * write_big madvise_free) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 3) return 2;
	static unsigned char buf[65536];
	FILE *f = fopen(argv[1], "rb");
	size_t n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	struct sock_fprog prog = { .len = (unsigned short)(n / 8), .filter = (struct sock_filter *)buf };
	const char *a = argv[2];
	char line[64];
	long r;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0) {
		perror("seccomp");
		return 3;
	}
	errno = 0;
	if (!strcmp(a, "getpid")) r = syscall(SYS_getpid);
	else if (!strcmp(a, "socket")) r = syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
	else if (!strcmp(a, "mmap_exec")) r = syscall(SYS_mmap, 0, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	else if (!strcmp(a, "mmap_rw")) r = syscall(SYS_mmap, 0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	else if (!strcmp(a, "ioctl_tun")) r = syscall(SYS_ioctl, 0, 0x400454d0, 0);
	else if (!strcmp(a, "ioctl_other")) r = syscall(SYS_ioctl, 0, 0x5401, 0);
	else if (!strcmp(a, "openat")) r = syscall(SYS_openat, AT_FDCWD, "/etc/hostname", O_RDONLY);
	else if (!strcmp(a, "write_big")) r = syscall(SYS_write, 1, "", 0x100000000ull);
	else if (!strcmp(a, "madvise_free")) r = syscall(SYS_madvise, 0, 0, 8);
	else return 2;
	int len = snprintf(line, sizeof(line), "ret %ld errno %d\n", r < 0 ? -1L : 0L, errno);
	syscall(SYS_write, 1, line, len);
	syscall(SYS_exit_group, 0);
	return 0;
}
