/* socket.c - AF_UNIX sockets (SOCK_SEQPACKET and SOCK_STREAM) and messages carrying file descriptors. */
#define _GNU_SOURCE
#include "tsvm.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <poll.h>
#include <unistd.h>

/* bounds the fds in one message, like the kernel's SCM_MAX_FD but far smaller */
#define TSVM_MAX_FDS 32

int tsvm_socketpair(int type, int *fds_out)
{
	return socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, fds_out) < 0 ? -errno : 0;
}

/* Sends `len` bytes with `fds` attached (MSG_NOSIGNAL, plus `flags` such as MSG_DONTWAIT); returns the
 * bytes sent (a stream socket may take fewer) or -errno. */
int64_t tsvm_send_with_fds(int fd, const void *buf, uint64_t len, const int *fds, int nfds, int flags)
{
	union { char buf[CMSG_SPACE(sizeof(int) * TSVM_MAX_FDS)]; struct cmsghdr align; } control;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds < 0 || nfds > TSVM_MAX_FDS)
		return -EINVAL;
	if (nfds > 0) {
		struct cmsghdr *c;
		memset(&control, 0, sizeof(control));
		msg.msg_control = control.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}
	ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL | flags);
	return n < 0 ? -errno : n;
}

/* Receives one datagram (or up to `len` bytes of a stream) with `flags` such as MSG_DONTWAIT; fds
 * beyond max_fds are closed here, and a truncated datagram or fd list is -EMSGSIZE. */
int64_t tsvm_recv_with_fds(int fd, void *buf, uint64_t len, int *fds_out, int max_fds, int *nfds_out, int flags)
{
	union { char buf[CMSG_SPACE(sizeof(int) * TSVM_MAX_FDS)]; struct cmsghdr align; } control;
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			      .msg_controllen = sizeof(control.buf) };
	int n_fds = 0;
	ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | flags);
	*nfds_out = 0;
	if (n < 0)
		return -errno;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		for (int i = 0; i < count; i++) {
			int received;
			memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (n_fds < max_fds)
				fds_out[n_fds++] = received;
			else
				close(received);
		}
	}
	*nfds_out = n_fds;
	if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
		return -EMSGSIZE;
	return n;
}

/* Creates a listening AF_UNIX socket of `type` at `path`, created with mode 0600. */
int tsvm_unix_listen(const char *path, int type)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	strcpy(addr.sun_path, path);
	int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	mode_t old = umask(0177); /* the socket file is born 0600: no window where others may connect */
	int r = bind(fd, (struct sockaddr *)&addr, sizeof(addr));
	int err = errno;
	umask(old);
	if (r < 0 || listen(fd, 128) < 0) {
		if (r >= 0)
			err = errno;
		close(fd);
		return -err;
	}
	return fd;
}

/* Connects to the AF_UNIX socket of `type` at `path`. */
int tsvm_unix_connect(const char *path, int type)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	strcpy(addr.sun_path, path);
	int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		int err = errno;
		close(fd);
		return -err;
	}
	return fd;
}

int tsvm_accept(int fd)
{
	int r = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	return r < 0 ? -errno : r;
}

/*
 * Sets the send buffer of socket `fd` to `bytes` (the kernel doubles it for its bookkeeping):
 * SO_SNDBUFFORCE where the caller may pass net.core.wmem_max (CAP_NET_ADMIN), else SO_SNDBUF, which
 * the kernel caps there. Returns 0 or -errno.
 */
int tsvm_set_send_buffer(int fd, int bytes)
{
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof bytes) == 0)
		return 0;
	return setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes) == 0 ? 0 : -errno;
}

/* Waits up to timeout_ms for `fd` to become readable: 1 readable, 0 timed out, -errno. */
int tsvm_wait_readable(int fd, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int r = poll(&p, 1, timeout_ms);
	return r < 0 ? -errno : r;
}

/* Waits up to timeout_ms for `events` (POLLIN, POLLOUT) on `fd`: the revents seen, 0 on timeout, -errno. */
int tsvm_poll(int fd, int events, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = (short)events };
	int r = poll(&p, 1, timeout_ms);
	return r < 0 ? -errno : (r == 0 ? 0 : p.revents);
}

/* Shuts down one direction (SHUT_RD 0, SHUT_WR 1) or both (SHUT_RDWR 2) of a connected socket. */
int tsvm_shutdown(int fd, int how)
{
	return shutdown(fd, how) < 0 ? -errno : 0;
}
