/* jail.c - creating a device process inside new namespaces, and the one-call lockdown it runs on itself.
 *
 * tsvm_spawn_jailed: clone(2) with new user, PID, mount, network, IPC and UTS namespaces, from a
 * multi-threaded process. The child shares the parent's memory until it execs (CLONE_VM, as
 * posix_spawn does): a fork copied the VMM's page tables, ~1 ms of each device's start. So between
 * clone and execve the child runs on a stack of its own, makes only raw system calls, first puts
 * every signal handler back to its default (a parent's handler must never run in it), and the
 * parent waits until the child has exec'd or died before it frees that stack.
 * tsvm_spawn_jailed_start / _finish: the same spawn made by the library's spawner thread, so that
 * the caller goes on while the child starts (the namespaces' creation and the exec take ~1-2 ms a
 * device, more when the child waits for a CPU). One thread makes every spawn and never exits: a
 * child's parent-death signal (PR_SET_PDEATHSIG) fires when the *thread* that created it ends.
 * tsvm_lockdown: in the device process, before any device code: glibc's first-thread set-up done,
 * pivot_root into an empty read-only tmpfs, drop capabilities and root, no_new_privs, and a seccomp
 * filter on every thread (TSYNC). */
#define _GNU_SOURCE
#include "tsvm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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
/* the write end of the pipe that tells the parent the child exec'd or died (close-on-exec) */
#define FD_STATUS (FD_PARKING + 101)
/* the child's stack until it execs: it only makes system calls */
#define CHILD_STACK (64 * 1024)

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

/* struct sigaction as rt_sigaction(2) takes it on x86-64 */
struct kernel_sigaction {
	void *handler;
	unsigned long flags;
	void *restorer;
	unsigned long mask;
};

static void child(int exec_fd, char *const argv[], char *const envp[], const int *fds, int nfds, int stderr_fd, int sync_fd, int sync_write_fd, int status_fd)
{
	char go;
	/* every signal is blocked (the parent blocked them around clone); a handled one goes back to
	 * its default before any is unblocked below, so no handler of the parent runs on memory the
	 * child shares with it. Ignored ones stay ignored, as across a fork and exec. */
	for (int sig = 1; sig <= 64; sig++) {
		struct kernel_sigaction old;
		if (sig == SIGKILL || sig == SIGSTOP || syscall(SYS_rt_sigaction, sig, NULL, &old, 8) < 0 || old.handler == SIG_IGN)
			continue;
		struct kernel_sigaction dfl = { SIG_DFL, 0, NULL, 0 };
		syscall(SYS_rt_sigaction, sig, &dfl, NULL, 8);
	}
	if (syscall(SYS_dup3, status_fd, FD_STATUS, O_CLOEXEC) < 0)
		syscall(SYS_exit_group, 120);
	/* Our copy of the pipe's write end goes, so that a parent killed before it wrote ends the read
	 * below (end of file) instead of leaving this child waiting for good. */
	syscall(SYS_close, sync_write_fd);
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
	syscall(SYS_close_range, FD_STATUS + 1, ~0U, 0);
	/* by fd: the program was opened by the parent, so its directories need not be searchable by
	 * the unprivileged ids the child runs as */
	syscall(SYS_execveat, FD_EXEC, "", argv, envp, AT_EMPTY_PATH);
	syscall(SYS_exit_group, 127);
}

struct child_args {
	int exec_fd, nfds, stderr_fd, sync_fd, sync_write_fd, status_fd;
	char *const *argv;
	char *const *envp;
	const int *fds;
};

static int child_main(void *p)
{
	struct child_args *a = p;
	child(a->exec_fd, a->argv, a->envp, a->fds, a->nfds, a->stderr_fd, a->sync_fd, a->sync_write_fd, a->status_fd);
	return 127;
}

/* Starts `path` in new namespaces with `fds` at 3, 4, ..., `stderr_fd` as its stderr, and ids 0 and
 * 1 mapped to id_base and id_base + 1. Returns the child's pid (in our namespace) or -errno; when it
 * returns, the child has exec'd (or died, which its exit status tells). */
int tsvm_spawn_jailed(const char *path, char *const argv[], char *const envp[], const int *fds, int nfds, int stderr_fd, unsigned id_base)
{
	int sync[2] = { -1, -1 }, status[2] = { -1, -1 };
	char text[64], file[64];
	if (nfds < 0 || nfds > 64)
		return -EINVAL;
	int exec_fd = open(path, O_PATH | O_CLOEXEC);
	if (exec_fd < 0)
		return -errno;
	void *stack = MAP_FAILED;
	int r = 0;
	if (pipe2(sync, O_CLOEXEC) < 0 || pipe2(status, O_CLOEXEC) < 0)
		r = -errno;
	if (r == 0 && (stack = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0)) == MAP_FAILED)
		r = -errno;
	long pid = -1;
	if (r == 0) {
		struct child_args args = { exec_fd, nfds, stderr_fd, sync[0], sync[1], status[1], argv, envp, fds };
		sigset_t all, old;
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		pid = clone(child_main, (char *)stack + CHILD_STACK, JAIL_NS_FLAGS | CLONE_VM | SIGCHLD, &args);
		if (pid < 0)
			r = -errno;
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		close(status[1]);
		status[1] = -1;
		if (r == 0) {
			snprintf(text, sizeof(text), "0 %u 2\n", id_base);
			snprintf(file, sizeof(file), "/proc/%ld/uid_map", pid);
			r = write_file(file, text);
			/* setgroups stays allowed (the parent maps ids with its own privileges), so the child can drop them */
			snprintf(file, sizeof(file), "/proc/%ld/gid_map", pid);
			if (r == 0)
				r = write_file(file, text);
			if (r == 0 && write(sync[1], "g", 1) != 1)
				r = -errno;
			if (r < 0)
				kill((pid_t)pid, SIGKILL);
			/* `args`, the stack and what they point to are the child's until it execs or dies: the
			 * pipe's last write end closes then */
			char byte;
			while (read(status[0], &byte, 1) < 0 && errno == EINTR) {}
		}
	}
	if (stack != MAP_FAILED)
		munmap(stack, CHILD_STACK);
	for (int i = 0; i < 2; i++) {
		if (sync[i] >= 0)
			close(sync[i]);
		if (status[i] >= 0)
			close(status[i]);
	}
	close(exec_fd);
	return r < 0 ? r : (int)pid;
}

static void *no_op_thread(void *unused)
{
	return unused;
}

/* Jails the calling process (see the file comment). `bpf` holds `len` bytes of sock_filter.
 * Returns 0 or -errno; on failure the process should exit. */
int tsvm_lockdown(const void *bpf, uint64_t len, uint64_t max_fds)
{
	/* 0. glibc installs the handlers of the signals its threads use (SIGCANCEL, SIGSETXID) with
	 * rt_sigaction when a process creates its first thread. A device process may have none yet (JSC
	 * starts its helper threads lazily), and the policies do not allow rt_sigaction: one thread made
	 * and joined here does that set-up before the filter, whatever thread comes first later. */
	pthread_t first;
	int started = pthread_create(&first, NULL, no_op_thread, NULL);
	if (started != 0)
		return -started;
	pthread_join(first, NULL);
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

/* A spawn handed to the spawner thread: its own copies of everything the child needs. */
struct spawn_job {
	struct spawn_job *next;
	int done;
	int result;
	char *path;
	char **argv;
	char **envp;
	int fds[64];
	int nfds;
	int stderr_fd;
	unsigned id_base;
};

static pthread_mutex_t spawner_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t spawner_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t spawner_done = PTHREAD_COND_INITIALIZER;
static struct spawn_job *spawner_queue;
static int spawner_started;

#define SPAWNER_STACK_SIZE (128 * 1024)

static void *spawner_main(void *unused)
{
	(void)unused;
	pthread_mutex_lock(&spawner_lock);
	for (;;) {
		while (spawner_queue == NULL)
			pthread_cond_wait(&spawner_work, &spawner_lock);
		struct spawn_job *job = spawner_queue;
		spawner_queue = job->next;
		pthread_mutex_unlock(&spawner_lock);
		int r = tsvm_spawn_jailed(job->path, job->argv, job->envp, job->fds, job->nfds, job->stderr_fd, job->id_base);
		for (int i = 0; i < job->nfds; i++)
			close(job->fds[i]);
		close(job->stderr_fd);
		pthread_mutex_lock(&spawner_lock);
		job->result = r;
		job->done = 1;
		pthread_cond_broadcast(&spawner_done);
	}
	return NULL;
}

/* Copies a NULL-terminated string array into malloc'd memory (one block); NULL when out of memory. */
static char **copy_strings(char *const src[])
{
	size_t count = 0, bytes = 0;
	while (src[count] != NULL)
		bytes += strlen(src[count++]) + 1;
	char **copy = malloc((count + 1) * sizeof(char *) + bytes);
	if (copy == NULL)
		return NULL;
	char *text = (char *)(copy + count + 1);
	for (size_t i = 0; i < count; i++) {
		size_t n = strlen(src[i]) + 1;
		memcpy(text, src[i], n);
		copy[i] = text;
		text += n;
	}
	copy[count] = NULL;
	return copy;
}

static void free_job(struct spawn_job *job)
{
	free(job->path);
	free(job->argv);
	free(job->envp);
	free(job);
}

/* Starts a spawn as tsvm_spawn_jailed describes it on the spawner thread and returns at once: the
 * job takes copies of the strings and of the fds (the caller may close its own). *job_out is for
 * tsvm_spawn_jailed_finish. Returns 0 or -errno (then nothing was started). */
int tsvm_spawn_jailed_start(const char *path, char *const argv[], char *const envp[], const int *fds, int nfds, int stderr_fd, unsigned id_base, void **job_out)
{
	if (nfds < 0 || nfds > 64)
		return -EINVAL;
	struct spawn_job *job = calloc(1, sizeof(*job));
	if (job == NULL)
		return -ENOMEM;
	job->path = strdup(path);
	job->argv = copy_strings(argv);
	job->envp = copy_strings(envp);
	if (job->path == NULL || job->argv == NULL || job->envp == NULL) {
		free_job(job);
		return -ENOMEM;
	}
	job->nfds = 0;
	job->stderr_fd = fcntl(stderr_fd, F_DUPFD_CLOEXEC, 3);
	int r = job->stderr_fd < 0 ? -errno : 0;
	for (int i = 0; r == 0 && i < nfds; i++) {
		int fd = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
		if (fd < 0)
			r = -errno;
		else
			job->fds[job->nfds++] = fd;
	}
	job->id_base = id_base;
	pthread_mutex_lock(&spawner_lock);
	if (r == 0 && !spawner_started) {
		/* The spawner takes no signal: it is created with every signal blocked. */
		pthread_t thread;
		pthread_attr_t attr;
		sigset_t all, old;
		sigfillset(&all);
		pthread_attr_init(&attr);
		pthread_attr_setstacksize(&attr, SPAWNER_STACK_SIZE);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		int e = pthread_create(&thread, &attr, spawner_main, NULL);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		pthread_attr_destroy(&attr);
		if (e != 0)
			r = -e;
		else {
			pthread_setname_np(thread, "device spawner");
			spawner_started = 1;
		}
	}
	if (r == 0) {
		struct spawn_job **tail = &spawner_queue;
		while (*tail != NULL)
			tail = &(*tail)->next;
		*tail = job;
		pthread_cond_signal(&spawner_work);
	}
	pthread_mutex_unlock(&spawner_lock);
	if (r < 0) {
		for (int i = 0; i < job->nfds; i++)
			close(job->fds[i]);
		if (job->stderr_fd >= 0)
			close(job->stderr_fd);
		free_job(job);
		return r;
	}
	*job_out = job;
	return 0;
}

/* Waits for a job of tsvm_spawn_jailed_start and frees it; returns what tsvm_spawn_jailed would
 * have: the child's pid (it has exec'd, or died) or -errno. */
int tsvm_spawn_jailed_finish(void *job_ptr)
{
	struct spawn_job *job = job_ptr;
	pthread_mutex_lock(&spawner_lock);
	while (!job->done)
		pthread_cond_wait(&spawner_done, &spawner_lock);
	pthread_mutex_unlock(&spawner_lock);
	int r = job->result;
	free_job(job);
	return r;
}
