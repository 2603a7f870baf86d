/* c_exit_loop.c - the peer for the exit benchmark: the smallest C KVM loop that boots tsvm's test
 * guest (ELF, 64-bit Linux boot protocol) and services its exits: serial output to stdout, LSR reads
 * as "transmitter empty", everything else ignored or all ones, i8042 0xfe ends the run.
 * usage: c_exit_loop GUEST_ELF "COMMAND LINE" */
#include <elf.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MEM_SIZE (256u << 20)
#define ZERO_PAGE 0x7000
#define CMDLINE 0x20000
#define PML4 0x9000

static void die(const char *what) { perror(what); exit(1); }

int main(int argc, char **argv)
{
	if (argc != 3) { fprintf(stderr, "usage: %s GUEST_ELF CMDLINE\n", argv[0]); return 2; }
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (kvm < 0 || vm < 0) die("kvm");
	ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000);
	if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("irqchip");
	uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	struct kvm_userspace_memory_region region = { .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uintptr_t)mem };
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("memory");

	int fd = open(argv[1], O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) die("guest");
	uint8_t *elf = malloc(st.st_size);
	if (read(fd, elf, st.st_size) != st.st_size) die("read guest");
	Elf64_Ehdr *eh = (Elf64_Ehdr *)elf;
	for (int i = 0; i < eh->e_phnum; i++) {
		Elf64_Phdr *ph = (Elf64_Phdr *)(elf + eh->e_phoff + i * eh->e_phentsize);
		if (ph->p_type == PT_LOAD) memcpy(mem + ph->p_paddr, elf + ph->p_offset, ph->p_filesz);
	}
	strcpy((char *)mem + CMDLINE, argv[2]);
	*(uint16_t *)(mem + ZERO_PAGE + 0x1fe) = 0xaa55;
	*(uint32_t *)(mem + ZERO_PAGE + 0x202) = 0x53726448;
	mem[ZERO_PAGE + 0x210] = 0xff;
	*(uint32_t *)(mem + ZERO_PAGE + 0x228) = CMDLINE;
	/* identity map 4 GiB with 2 MiB pages, as tsvm does */
	*(uint64_t *)(mem + PML4) = 0xa000 | 3;
	for (uint64_t g = 0; g < 4; g++) {
		*(uint64_t *)(mem + 0xa000 + g * 8) = (0xb000 + g * 0x1000) | 3;
		for (uint64_t i = 0; i < 512; i++) *(uint64_t *)(mem + 0xb000 + g * 0x1000 + i * 8) = ((g * 512 + i) << 21) | 0x83;
	}
	uint64_t gdt[] = { 0, 0, 0x00af9b000000ffff, 0x00cf93000000ffff };
	memcpy(mem + 0x500, gdt, sizeof(gdt));

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	struct { struct kvm_cpuid2 c; struct kvm_cpuid_entry2 e[256]; } cpuid = { .c.nent = 256 };
	if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0 || ioctl(vcpu, KVM_SET_CPUID2, &cpuid) < 0) die("cpuid");
	struct kvm_sregs s;
	ioctl(vcpu, KVM_GET_SREGS, &s);
	struct kvm_segment code = { .base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 11, .present = 1, .s = 1, .l = 1, .g = 1 };
	struct kvm_segment data = { .base = 0, .limit = 0xffffffff, .selector = 0x18, .type = 3, .present = 1, .s = 1, .db = 1, .g = 1 };
	s.cs = code; s.ds = s.es = s.fs = s.gs = s.ss = data;
	s.gdt.base = 0x500; s.gdt.limit = sizeof(gdt) - 1;
	s.cr0 |= 0x80000011; s.cr3 = PML4; s.cr4 |= 0x20; s.efer |= 0x500;
	if (ioctl(vcpu, KVM_SET_SREGS, &s) < 0) die("sregs");
	struct kvm_regs r = { .rip = eh->e_entry, .rsi = ZERO_PAGE, .rsp = 0x8ff0, .rflags = 2 };
	if (ioctl(vcpu, KVM_SET_REGS, &r) < 0) die("regs");

	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
		if (run->exit_reason == KVM_EXIT_IO) {
			uint8_t *d = (uint8_t *)run + run->io.data_offset;
			if (run->io.direction == KVM_EXIT_IO_OUT) {
				if (run->io.port == 0x3f8) fputc(*d, stdout);
				else if (run->io.port == 0x64 && *d == 0xfe) break;
			} else {
				memset(d, run->io.port == 0x3fd ? 0x60 : 0xff, run->io.size * run->io.count);
			}
		} else if (run->exit_reason == KVM_EXIT_MMIO) {
			if (!run->mmio.is_write) memset(run->mmio.data, 0xff, run->mmio.len);
		} else {
			fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
			return 1;
		}
	}
	fflush(stdout);
	return 0;
}
