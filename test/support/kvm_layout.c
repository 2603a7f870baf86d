/* kvm_layout.c - prints what gcc says about <linux/kvm.h>, for test/kvm/kvm_structs.test.ts. */
#include <linux/kvm.h>
#include <stddef.h>
#include <stdio.h>

#define SIZE(s) printf("struct %s size %zu\n", #s, sizeof(struct s))
#define OFF(s, name, path) printf("struct %s %s %zu\n", #s, name, offsetof(struct s, path))
#define NUM(n) printf("const %s %lu\n", #n, (unsigned long)(n))

int main(void)
{
	SIZE(kvm_regs);
	OFF(kvm_regs, "rax", rax); OFF(kvm_regs, "rbx", rbx); OFF(kvm_regs, "rcx", rcx); OFF(kvm_regs, "rdx", rdx);
	OFF(kvm_regs, "rsi", rsi); OFF(kvm_regs, "rdi", rdi); OFF(kvm_regs, "rsp", rsp); OFF(kvm_regs, "rbp", rbp);
	OFF(kvm_regs, "r8", r8); OFF(kvm_regs, "r9", r9); OFF(kvm_regs, "r10", r10); OFF(kvm_regs, "r11", r11);
	OFF(kvm_regs, "r12", r12); OFF(kvm_regs, "r13", r13); OFF(kvm_regs, "r14", r14); OFF(kvm_regs, "r15", r15);
	OFF(kvm_regs, "rip", rip); OFF(kvm_regs, "rflags", rflags);
	SIZE(kvm_segment);
	OFF(kvm_segment, "base", base); OFF(kvm_segment, "limit", limit); OFF(kvm_segment, "selector", selector);
	OFF(kvm_segment, "type", type); OFF(kvm_segment, "present", present); OFF(kvm_segment, "dpl", dpl);
	OFF(kvm_segment, "db", db); OFF(kvm_segment, "s", s); OFF(kvm_segment, "l", l); OFF(kvm_segment, "g", g);
	OFF(kvm_segment, "avl", avl); OFF(kvm_segment, "unusable", unusable);
	SIZE(kvm_dtable);
	OFF(kvm_dtable, "base", base); OFF(kvm_dtable, "limit", limit);
	SIZE(kvm_sregs);
	OFF(kvm_sregs, "cs", cs); OFF(kvm_sregs, "ds", ds); OFF(kvm_sregs, "es", es); OFF(kvm_sregs, "fs", fs);
	OFF(kvm_sregs, "gs", gs); OFF(kvm_sregs, "ss", ss); OFF(kvm_sregs, "tr", tr); OFF(kvm_sregs, "ldt", ldt);
	OFF(kvm_sregs, "gdt", gdt); OFF(kvm_sregs, "idt", idt); OFF(kvm_sregs, "cr0", cr0); OFF(kvm_sregs, "cr2", cr2);
	OFF(kvm_sregs, "cr3", cr3); OFF(kvm_sregs, "cr4", cr4); OFF(kvm_sregs, "cr8", cr8); OFF(kvm_sregs, "efer", efer);
	OFF(kvm_sregs, "apic_base", apic_base); OFF(kvm_sregs, "interrupt_bitmap", interrupt_bitmap);
	SIZE(kvm_fpu);
	OFF(kvm_fpu, "fpr", fpr); OFF(kvm_fpu, "fcw", fcw); OFF(kvm_fpu, "fsw", fsw); OFF(kvm_fpu, "ftwx", ftwx);
	OFF(kvm_fpu, "last_opcode", last_opcode); OFF(kvm_fpu, "last_ip", last_ip); OFF(kvm_fpu, "last_dp", last_dp);
	OFF(kvm_fpu, "xmm", xmm); OFF(kvm_fpu, "mxcsr", mxcsr);
	SIZE(kvm_cpuid2);
	OFF(kvm_cpuid2, "nent", nent); OFF(kvm_cpuid2, "entries", entries);
	SIZE(kvm_cpuid_entry2);
	OFF(kvm_cpuid_entry2, "function", function); OFF(kvm_cpuid_entry2, "index", index);
	OFF(kvm_cpuid_entry2, "flags", flags); OFF(kvm_cpuid_entry2, "eax", eax); OFF(kvm_cpuid_entry2, "ebx", ebx);
	OFF(kvm_cpuid_entry2, "ecx", ecx); OFF(kvm_cpuid_entry2, "edx", edx);
	SIZE(kvm_msrs);
	OFF(kvm_msrs, "nmsrs", nmsrs); OFF(kvm_msrs, "entries", entries);
	SIZE(kvm_msr_entry);
	OFF(kvm_msr_entry, "index", index); OFF(kvm_msr_entry, "data", data);
	SIZE(kvm_userspace_memory_region);
	OFF(kvm_userspace_memory_region, "slot", slot); OFF(kvm_userspace_memory_region, "flags", flags);
	OFF(kvm_userspace_memory_region, "guest_phys_addr", guest_phys_addr);
	OFF(kvm_userspace_memory_region, "memory_size", memory_size);
	OFF(kvm_userspace_memory_region, "userspace_addr", userspace_addr);
	SIZE(kvm_pit_config);
	OFF(kvm_pit_config, "flags", flags);
	SIZE(kvm_irq_level);
	OFF(kvm_irq_level, "irq", irq); OFF(kvm_irq_level, "level", level);
	SIZE(kvm_irq_routing);
	OFF(kvm_irq_routing, "nr", nr); OFF(kvm_irq_routing, "flags", flags); OFF(kvm_irq_routing, "entries", entries);
	SIZE(kvm_irq_routing_entry);
	OFF(kvm_irq_routing_entry, "gsi", gsi); OFF(kvm_irq_routing_entry, "type", type);
	OFF(kvm_irq_routing_entry, "flags", flags); OFF(kvm_irq_routing_entry, "u", u);
	OFF(kvm_irq_routing_entry, "irqchip_irqchip", u.irqchip.irqchip);
	OFF(kvm_irq_routing_entry, "irqchip_pin", u.irqchip.pin);
	OFF(kvm_irq_routing_entry, "msi_address_lo", u.msi.address_lo);
	OFF(kvm_irq_routing_entry, "msi_address_hi", u.msi.address_hi);
	OFF(kvm_irq_routing_entry, "msi_data", u.msi.data);
	SIZE(kvm_lapic_state);
	SIZE(kvm_irqfd);
	OFF(kvm_irqfd, "fd", fd); OFF(kvm_irqfd, "gsi", gsi); OFF(kvm_irqfd, "flags", flags); OFF(kvm_irqfd, "resamplefd", resamplefd);
	SIZE(kvm_clock_data);
	OFF(kvm_clock_data, "clock", clock); OFF(kvm_clock_data, "flags", flags);
	SIZE(kvm_ioeventfd);
	OFF(kvm_ioeventfd, "datamatch", datamatch); OFF(kvm_ioeventfd, "addr", addr); OFF(kvm_ioeventfd, "len", len);
	OFF(kvm_ioeventfd, "fd", fd); OFF(kvm_ioeventfd, "flags", flags);
	SIZE(kvm_coalesced_mmio_zone);
	OFF(kvm_coalesced_mmio_zone, "addr", addr); OFF(kvm_coalesced_mmio_zone, "zone_size", size); OFF(kvm_coalesced_mmio_zone, "pio", pio);
	SIZE(kvm_coalesced_mmio);
	OFF(kvm_coalesced_mmio, "phys_addr", phys_addr); OFF(kvm_coalesced_mmio, "len", len); OFF(kvm_coalesced_mmio, "pio", pio);
	OFF(kvm_coalesced_mmio, "data", data);
	OFF(kvm_coalesced_mmio_ring, "first", first); OFF(kvm_coalesced_mmio_ring, "last", last);
	OFF(kvm_coalesced_mmio_ring, "entries", coalesced_mmio);

	OFF(kvm_run, "request_interrupt_window", request_interrupt_window);
	OFF(kvm_run, "immediate_exit", immediate_exit);
	OFF(kvm_run, "exit_reason", exit_reason);
	OFF(kvm_run, "ready_for_interrupt_injection", ready_for_interrupt_injection);
	OFF(kvm_run, "if_flag", if_flag); OFF(kvm_run, "flags", flags); OFF(kvm_run, "cr8", cr8);
	OFF(kvm_run, "apic_base", apic_base);
	OFF(kvm_run, "io_direction", io.direction); OFF(kvm_run, "io_size", io.size); OFF(kvm_run, "io_port", io.port);
	OFF(kvm_run, "io_count", io.count); OFF(kvm_run, "io_data_offset", io.data_offset);
	OFF(kvm_run, "mmio_phys_addr", mmio.phys_addr); OFF(kvm_run, "mmio_data", mmio.data);
	OFF(kvm_run, "mmio_len", mmio.len); OFF(kvm_run, "mmio_is_write", mmio.is_write);
	OFF(kvm_run, "fail_entry_hardware_entry_failure_reason", fail_entry.hardware_entry_failure_reason);
	OFF(kvm_run, "fail_entry_cpu", fail_entry.cpu);
	OFF(kvm_run, "internal_suberror", internal.suberror); OFF(kvm_run, "internal_ndata", internal.ndata);
	OFF(kvm_run, "internal_data", internal.data);
	OFF(kvm_run, "system_event_type", system_event.type); OFF(kvm_run, "system_event_ndata", system_event.ndata);
	OFF(kvm_run, "system_event_data", system_event.data);
	OFF(kvm_run, "hw_hardware_exit_reason", hw.hardware_exit_reason);
	OFF(kvm_run, "ex_exception", ex.exception); OFF(kvm_run, "ex_error_code", ex.error_code);

	NUM(KVM_GET_API_VERSION); NUM(KVM_CREATE_VM); NUM(KVM_GET_MSR_INDEX_LIST); NUM(KVM_CHECK_EXTENSION);
	NUM(KVM_GET_VCPU_MMAP_SIZE); NUM(KVM_GET_SUPPORTED_CPUID); NUM(KVM_CREATE_VCPU);
	NUM(KVM_SET_USER_MEMORY_REGION); NUM(KVM_SET_TSS_ADDR); NUM(KVM_SET_IDENTITY_MAP_ADDR);
	NUM(KVM_CREATE_IRQCHIP); NUM(KVM_IRQ_LINE); NUM(KVM_SET_GSI_ROUTING); NUM(KVM_IRQFD); NUM(KVM_CREATE_PIT2);
	NUM(KVM_IOEVENTFD); NUM(KVM_REGISTER_COALESCED_MMIO); NUM(KVM_SET_CLOCK); NUM(KVM_GET_CLOCK); NUM(KVM_RUN); NUM(KVM_GET_REGS); NUM(KVM_SET_REGS); NUM(KVM_GET_SREGS); NUM(KVM_SET_SREGS);
	NUM(KVM_GET_MSRS); NUM(KVM_SET_MSRS); NUM(KVM_GET_FPU); NUM(KVM_SET_FPU); NUM(KVM_GET_LAPIC); NUM(KVM_SET_LAPIC);
	NUM(KVM_SET_CPUID2); NUM(KVM_GET_MP_STATE); NUM(KVM_SET_MP_STATE);
	NUM(KVM_CAP_IRQCHIP); NUM(KVM_CAP_HLT); NUM(KVM_CAP_USER_MEMORY); NUM(KVM_CAP_SET_TSS_ADDR);
	NUM(KVM_CAP_EXT_CPUID); NUM(KVM_CAP_NR_VCPUS); NUM(KVM_CAP_NR_MEMSLOTS); NUM(KVM_CAP_PIT2);
	NUM(KVM_CAP_SET_IDENTITY_MAP_ADDR); NUM(KVM_CAP_IMMEDIATE_EXIT); NUM(KVM_CAP_MAX_VCPUS);
	NUM(KVM_CAP_COALESCED_MMIO); NUM(KVM_CAP_COALESCED_PIO);
	NUM(KVM_EXIT_IO); NUM(KVM_EXIT_MMIO); NUM(KVM_EXIT_SHUTDOWN); NUM(KVM_EXIT_FAIL_ENTRY);
	NUM(KVM_EXIT_INTERNAL_ERROR); NUM(KVM_EXIT_SYSTEM_EVENT); NUM(KVM_EXIT_HLT); NUM(KVM_EXIT_INTR);
	return 0;
}
