/* interrupts.c - an IDT whose vectors 0x40-0x4f count interrupts (for MSI-X checks). */
#include "guest.h"

struct gate { uint16_t off_lo, sel; uint8_t ist, type; uint16_t off_mid; uint32_t off_hi, zero; } __attribute__((packed));
static struct gate idt[256] __attribute__((aligned(16)));
volatile uint32_t irq_counts[16];
extern const uint64_t irq_stubs[16];

void interrupts_init(void)
{
	uint16_t cs;
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	for (unsigned i = 0; i < 16; i++) {
		uint64_t h = irq_stubs[i];
		idt[IRQ_VECTOR_BASE + i] = (struct gate){ (uint16_t)h, cs, 0, 0x8e, (uint16_t)(h >> 16), (uint32_t)(h >> 32), 0 };
	}
	struct { uint16_t limit; uint64_t base; } __attribute__((packed)) desc = { sizeof(idt) - 1, (uint64_t)(uintptr_t)idt };
	__asm__ volatile("lidt %0" ::"m"(desc));
	mmio_write32(0xfee000f0, 0x1ff); /* software-enable the local APIC */
}

/* Waits (interrupts on) until irq_counts[index] moves past `before`; returns 1 if it did. */
int wait_for_irq(unsigned index, uint32_t before)
{
	for (uint64_t spin = 0; spin < 20000000; spin++) {
		__asm__ volatile("sti; pause; cli" ::: "memory");
		if (irq_counts[index] != before)
			return 1;
	}
	return 0;
}
