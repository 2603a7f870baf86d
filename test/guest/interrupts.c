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
	/* Firmware may leave the APIC globally disabled or a task priority that masks our vectors. */
	uint32_t lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0x1b));
	if (!(lo & 0x800)) __asm__ volatile("wrmsr" ::"a"(lo | 0x800), "d"(hi), "c"(0x1b));
	mmio_write32(0xfee00080, 0); /* TPR */
	mmio_write32(0xfee000f0, 0x1ff); /* software-enable the local APIC */
}

#define LAPIC_LVT_TIMER 0xfee00320
#define LAPIC_TIMER_INITIAL 0xfee00380
#define LAPIC_TIMER_DIVIDE 0xfee003e0
#define WATCHDOG_INDEX 15
/* the watchdog tick: about a millisecond with KVM's 1 GHz APIC bus and divide-by-1 */
#define WATCHDOG_COUNT 1000000
/* how long a wait gives a device by default: generous, as a real driver is (a jailed device on a slow
 * host, nested virtualization under TCG say, takes seconds over its first request); it only bounds
 * how long a broken device takes to be reported */
#define WATCHDOG_MS 20000

/* Halts until `done(arg)` holds or about `ms` milliseconds pass; returns whether it held. The CPU
 * sleeps between interrupts (`sti; hlt` cannot miss one); a one-shot LAPIC timer bounds each sleep. */
int wait_until_ms(int (*done)(const void *), const void *arg, unsigned ms)
{
	mmio_write32(LAPIC_TIMER_DIVIDE, 0xb);
	mmio_write32(LAPIC_LVT_TIMER, IRQ_VECTOR_BASE + WATCHDOG_INDEX);
	for (unsigned tick = 0; tick < ms && !done(arg); tick++) {
		mmio_write32(LAPIC_TIMER_INITIAL, WATCHDOG_COUNT);
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	}
	mmio_write32(LAPIC_TIMER_INITIAL, 0);
	return done(arg);
}

/* Halts until `done(arg)` holds or about WATCHDOG_MS pass; returns whether it held. */
int wait_until(int (*done)(const void *), const void *arg)
{
	return wait_until_ms(done, arg, WATCHDOG_MS);
}

struct irq_wait { unsigned index; uint32_t before; };
static int irq_moved(const void *arg)
{
	const struct irq_wait *w = arg;
	return irq_counts[w->index] != w->before;
}

/* Waits until irq_counts[index] moves past `before`; returns 1 if it did. */
int wait_for_irq(unsigned index, uint32_t before)
{
	struct irq_wait w = { index, before };
	return wait_until(irq_moved, &w);
}
