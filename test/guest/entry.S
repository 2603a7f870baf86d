/* entry.S - the test guest's entry points: the Linux 64-bit boot protocol entry (ELF e_entry), a PVH
 * entry (32-bit, for QEMU -kernel), and the real-mode AP trampoline that reports each AP's APIC id. */

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define MSR_EFER 0xc0000080

	.section .note.pvh, "a"
	.balign 4
	.long 4			/* name size: "Xen\0" */
	.long 4			/* descriptor size */
	.long XEN_ELFNOTE_PHYS32_ENTRY
	.asciz "Xen"
	.long pvh_start32

	.section .text.entry, "ax"
	.code64
	.globl _start64
/* Linux 64-bit boot protocol: long mode, identity paging, RSI = zero page. */
_start64:
	cli
	lea stack_top(%rip), %rsp
	mov %rsi, %rdi		/* zero page */
	xor %esi, %esi		/* no PVH start_info */
	call guest_main
1:	cli
	hlt
	jmp 1b

	.code32
/* PVH: 32-bit protected mode, paging off, EBX = hvm_start_info. Build 1:1 tables for 4 GiB, enter long mode. */
pvh_start32:
	cli
	mov %ebx, %esi
	/* PML4[0] -> PDPT; PDPT[0..3] -> four page directories of 2 MiB pages */
	lea pvh_pdpt, %eax
	or $3, %eax
	mov %eax, pvh_pml4
	xor %ecx, %ecx
2:	lea pvh_pd, %eax
	mov %ecx, %edx
	shl $12, %edx
	add %edx, %eax
	or $3, %eax
	mov %eax, pvh_pdpt(,%ecx,8)
	inc %ecx
	cmp $4, %ecx
	jne 2b
	xor %ecx, %ecx
3:	mov %ecx, %eax
	shl $21, %eax
	or $0x83, %eax		/* present, writable, 2 MiB page */
	mov %eax, pvh_pd(,%ecx,8)
	mov %ecx, %eax
	shr $11, %eax		/* high dword: bits 32+ of the frame (entry index / 2048) */
	mov %eax, pvh_pd+4(,%ecx,8)
	inc %ecx
	cmp $2048, %ecx
	jne 3b
	lea pvh_pml4, %eax
	mov %eax, %cr3
	mov %cr4, %eax
	or $0x20, %eax		/* PAE */
	mov %eax, %cr4
	mov $MSR_EFER, %ecx
	rdmsr
	or $0x100, %eax		/* LME */
	wrmsr
	mov %cr0, %eax
	or $0x80000001, %eax	/* PG | PE */
	mov %eax, %cr0
	lgdt pvh_gdt_desc
	ljmp $0x08, $pvh_start64

	.code64
pvh_start64:
	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	lea stack_top(%rip), %rsp
	xor %edi, %edi		/* no zero page */
	mov %esi, %esi		/* start_info, zero-extended */
	call guest_main
4:	cli
	hlt
	jmp 4b

/* AP trampoline, copied to a page below 1 MiB and started by SIPI in real mode (CS = page >> 4, IP = 0):
 * reads its APIC id with CPUID, reads the host bridge's vendor and device id through the PCI
 * configuration ports (exits the VMM serves for this vCPU), sets ap_flags[id] at AP_FLAGS_ADDRESS to
 * 1 if it read 8086:1237 and to 2 otherwise, then halts. */
	.code16
	.globl ap_trampoline, ap_trampoline_end
ap_trampoline:
	cli
	xor %ax, %ax
	mov %ax, %ds
	mov $1, %eax
	cpuid
	shr $24, %ebx
	mov $0x80000000, %eax	/* bus 0, device 0, function 0, register 0 */
	mov $0xcf8, %dx
	outl %eax, %dx
	mov $0xcfc, %dx
	inl %dx, %eax
	mov $1, %cl
	cmp $0x12378086, %eax
	je 6f
	mov $2, %cl
6:	movb %cl, 0x5000(%bx)	/* AP_FLAGS_ADDRESS in guest.c */
5:	hlt
	jmp 5b
ap_trampoline_end:

/* run_in_ring3(fn, arg, stack_top): calls fn(arg) in ring 3 (interrupts off) on the given stack;
 * returns once fn returns, through the #GP that the `hlt` after it raises (ring3_gp_handler). */
	.code64
	.globl run_in_ring3, ring3_gp_handler
run_in_ring3:
	push %rbx
	push %rbp
	push %r12
	push %r13
	push %r14
	push %r15
	mov %rsp, ring0_rsp(%rip)
	pushq $0x1b		/* SS: user data, RPL 3 */
	pushq %rdx		/* RSP */
	pushq $0x2		/* RFLAGS: IF clear */
	pushq $0x23		/* CS: 64-bit user code, RPL 3 */
	lea ring3_trampoline(%rip), %rax
	pushq %rax
	iretq
ring3_trampoline:
	mov %rdi, %rax
	mov %rsi, %rdi
	call *%rax
	hlt			/* privileged in ring 3: #GP brings us back */
ring3_gp_handler:
	mov ring0_rsp(%rip), %rsp
	mov $0x10, %ax
	mov %ax, %ss
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbp
	pop %rbx
	ret

/* Interrupt stubs for vectors 0x40-0x4f: count, end of interrupt at the LAPIC, return. */
	.code64
	.macro irq_stub n
irq_stub_\n:
	incl irq_counts + 4 * \n(%rip)
	push %rax
	mov $0xfee000b0, %eax
	movl $0, (%rax)
	pop %rax
	iretq
	.endm
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	irq_stub \n
	.endr

	.section .rodata
	.balign 8
	.globl irq_stubs
irq_stubs:
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	.quad irq_stub_\n
	.endr
pvh_gdt:
	.quad 0
	.quad 0x00af9b000000ffff	/* 0x08: 64-bit code */
	.quad 0x00cf93000000ffff	/* 0x10: data */
pvh_gdt_desc:
	.word pvh_gdt_desc - pvh_gdt - 1
	.long pvh_gdt

	.section .bss
	.balign 8
ring0_rsp:	.skip 8
	.balign 4096
pvh_pml4:	.skip 4096
pvh_pdpt:	.skip 4096
pvh_pd:		.skip 4 * 4096
stack:		.skip 16384
stack_top:
