/* vcpu.c - KVM_RUN for a vCPU thread and the signal that kicks it out. */
#define _GNU_SOURCE
#include "tsvm.h"

#include <errno.h>
#include <linux/kvm.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The kvm_run page of the vCPU that this thread runs; the kick handler sets its immediate_exit
 * so a kick that lands just before KVM_RUN is not lost (KVM returns -EINTR at once). */
static __thread struct kvm_run *bound_run;

static void kick_handler(int signum)
{
	(void)signum;
	if (bound_run)
		bound_run->immediate_exit = 1;
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
