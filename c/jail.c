/* jail.c - creating a device process inside new namespaces, and the one-call lockdown it runs on itself.
 *
 * tsvm_spawn_jailed: clone(2) with new user, PID, mount, network, IPC and UTS namespaces, from a
 * multi-threaded process: between clone and execve the child only makes raw system calls.
 * tsvm_lockdown: in the device process, before any device code: pivot_root into an empty read-only
 * tmpfs, drop capabilities and root, no_new_privs, and a seccomp filter on every thread (TSYNC). */
#define _GNU_SOURCE
#include "tsvm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <grp.h>
#include <sys/wait.h>
#include <unistd.h>

#define JAIL_NS_FLAGS (CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
/* fds are first moved this high so that placing them at 3, 4, ... never overwrites one still needed */
#define FD_PARKING 1000
/* where the program to execute waits (close-on-exec) while the other fds are placed */
#define FD_EXEC (FD_PARKING + 100)
/* where the child's stderr waits while the other fds are placed */
#define FD_STDERR (FD_PARKING - 1)

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = write(fd, text, strlen(text));
	int err = errno;
	close(fd);
	return n == (ssize_t)strlen(text) ? 0 : -err;
}

static void child(int exec_fd, char *const argv[], char *const envp[], const int *fds, int nfds, int stderr_fd, int sync_fd)
{
	char go;
	/* wait until the parent has written our id maps */
	if (syscall(SYS_read, sync_fd, &go, 1) != 1)
		syscall(SYS_exit_group, 120);
	syscall(SYS_close, sync_fd);
	if (syscall(SYS_setresgid, 0, 0, 0) < 0 || syscall(SYS_setresuid, 0, 0, 0) < 0)
		syscall(SYS_exit_group, 121);
	syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
	unsigned long empty[2] = { 0, 0 };
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, empty, NULL, 8);
	if (syscall(SYS_mount, NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		syscall(SYS_exit_group, 122);
	/* a /proc for the new PID namespace: Bun needs one to start */
	if (syscall(SYS_mount, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		syscall(SYS_exit_group, 123);
	if (syscall(SYS_dup3, exec_fd, FD_EXEC, O_CLOEXEC) < 0)
		syscall(SYS_exit_group, 124);
	if (syscall(SYS_dup3, stderr_fd, FD_STDERR, 0) < 0)
		syscall(SYS_exit_group, 124);
	for (int i = 0; i < nfds; i++)
		if (syscall(SYS_dup3, fds[i], FD_PARKING + i, 0) < 0)
			syscall(SYS_exit_group, 124);
	for (int i = 0; i < nfds; i++)
		if (syscall(SYS_dup3, FD_PARKING + i, 3 + i, 0) < 0)
			syscall(SYS_exit_group, 125);
	/* stdin and stdout become /dev/null and stderr the pipe the parent reads: a device never holds
	 * the user's terminal */
	long null_fd = syscall(SYS_openat, AT_FDCWD, "/dev/null", O_RDWR | O_CLOEXEC);
	if (null_fd < 0 || syscall(SYS_dup3, null_fd, 0, 0) < 0 || syscall(SYS_dup3, null_fd, 1, 0) < 0 ||
	    syscall(SYS_dup3, FD_STDERR, 2, 0) < 0)
		syscall(SYS_exit_group, 126);
	syscall(SYS_close_range, 3 + nfds, FD_EXEC - 1, 0);
	syscall(SYS_close_range, FD_EXEC + 1, ~0U, 0);
	/* by fd: the program was opened by the parent, so its directories need not be searchable by
	 * the unprivileged ids the child runs as */
	syscall(SYS_execveat, FD_EXEC, "", argv, envp, AT_EMPTY_PATH);
	syscall(SYS_exit_group, 127);
}

/* Starts `path` in new namespaces with `fds` at 3, 4, ..., `stderr_fd` as its stderr, and ids 0 and
 * 1 mapped to id_base and id_base + 1. Returns the child's pid (in our namespace) or -errno. */
int tsvm_spawn_jailed(const char *path, char *const argv[], char *const envp[], const int *fds, int nfds, int stderr_fd, unsigned id_base)
{
	int sync[2];
	char text[64], file[64];
	if (nfds < 0 || nfds > 64)
		return -EINVAL;
	int exec_fd = open(path, O_PATH | O_CLOEXEC);
	if (exec_fd < 0)
		return -errno;
	if (pipe2(sync, O_CLOEXEC) < 0) {
		int err = errno;
		close(exec_fd);
		return -err;
	}
	long pid = syscall(SYS_clone, JAIL_NS_FLAGS | SIGCHLD, NULL, NULL, NULL, NULL);
	if (pid < 0) {
		int err = errno;
		close(sync[0]);
		close(sync[1]);
		close(exec_fd);
		return -err;
	}
	if (pid == 0) {
		syscall(SYS_close, sync[1]);
		child(exec_fd, argv, envp, fds, nfds, stderr_fd, sync[0]);
	}
	close(exec_fd);
	close(sync[0]);
	int r = 0;
	snprintf(text, sizeof(text), "0 %u 2\n", id_base);
	snprintf(file, sizeof(file), "/proc/%ld/uid_map", pid);
	if (r == 0)
		r = write_file(file, text);
	/* setgroups stays allowed (the parent maps ids with its own privileges), so the child can drop them */
	snprintf(file, sizeof(file), "/proc/%ld/gid_map", pid);
	if (r == 0)
		r = write_file(file, text);
	if (r == 0 && write(sync[1], "g", 1) != 1)
		r = -errno;
	close(sync[1]);
	if (r < 0) {
		kill((pid_t)pid, SIGKILL);
		return r;
	}
	return (int)pid;
}

/* Jails the calling process (see the file comment). `bpf` holds `len` bytes of sock_filter.
 * Returns 0 or -errno; on failure the process should exit. */
int tsvm_lockdown(const void *bpf, uint64_t len, uint64_t max_fds)
{
	/* 1. an empty, read-only root */
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		return -errno;
	if (mount("tsvm-jail", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=16k,mode=0700") < 0)
		return -errno;
	if (mkdir("/tmp/old", 0700) < 0)
		return -errno;
	if (syscall(SYS_pivot_root, "/tmp", "/tmp/old") < 0)
		return -errno;
	if (chdir("/") < 0 || umount2("/old", MNT_DETACH) < 0 || rmdir("/old") < 0)
		return -errno;
	if (mount("tsvm-jail", "/", "tmpfs", MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		return -errno;
	if (sethostname("tsvm-device", 11) < 0)
		return -errno;
	/* 2. resource limits */
	struct rlimit files = { max_fds, max_fds };
	if (setrlimit(RLIMIT_NOFILE, &files) < 0)
		return -errno;
	/* 3. capabilities: the bounding set and ambient set go while we still hold CAP_SETPCAP */
	for (int cap = 0; cap <= CAP_LAST_CAP; cap++)
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
			return -errno;
	prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
	/* 4. leave root through glibc, which applies the change to every thread: all capabilities go */
	if (setgroups(0, NULL) < 0 || setresgid(1, 1, 1) < 0 || setresuid(1, 1, 1) < 0)
		return -errno;
	prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
	/* 5. and 6. no new privileges, then the filter on every thread */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return -errno;
	struct sock_fprog prog = { .len = (unsigned short)(len / sizeof(struct sock_filter)), .filter = (struct sock_filter *)bpf };
	if (len == 0 || len % sizeof(struct sock_filter) != 0 || len / sizeof(struct sock_filter) > 4096)
		return -EINVAL;
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0)
		return errno ? -errno : -EBUSY; /* a positive return names a thread that could not be synced */
	return 0;
}

/* Waits for child `pid`; *status_out gets the raw wait status. Returns pid, 0 if still running with
 * `nohang`, or -errno. */
int tsvm_waitpid(int pid, int *status_out, int nohang)
{
	int r = waitpid(pid, status_out, nohang ? WNOHANG : 0);
	return r < 0 ? -errno : r;
}

/*
 * Replaces this program with `path`, keeping every fd that is not close-on-exec (Bun's own
 * process.execve marks every fd from 3 close-on-exec first, which would drop the fds a user hands
 * tsvm, such as --net tap-fd=N). Returns -errno; on success it does not return.
 */
int tsvm_execve(const char *path, char *const argv[], char *const envp[])
{
	execve(path, argv, envp);
	return -errno;
}
