/* interrupts.c - an IDT whose vectors 0x40-0x4f count interrupts (for MSI-X checks). */
#include "guest.h"

struct gate { uint16_t off_lo, sel; uint8_t ist, type; uint16_t off_mid; uint32_t off_hi, zero; } __attribute__((packed));
static struct gate idt[256] __attribute__((aligned(16)));
volatile uint32_t irq_counts[16];
extern const uint64_t irq_stubs[16];

/* ---- ring 3, for benchmark loops that must not run in an emulated ring 0 ---- */
extern void ring3_gp_handler(void);
static uint64_t gdt[7] __attribute__((aligned(16)));
static struct {
	uint32_t reserved0;
	uint64_t rsp0, rsp1, rsp2, reserved1, ist[7], reserved2;
	uint16_t reserved3, iomap_base;
} __attribute__((packed)) tss;
static uint64_t user_pml4[512] __attribute__((aligned(4096)));
static uint64_t user_pdpt[512] __attribute__((aligned(4096)));
static uint64_t user_pd[4][512] __attribute__((aligned(4096)));
static uint8_t ring0_stack[8192] __attribute__((aligned(16)));

/*
 * Makes ring 3 usable: page tables mapping the first 4 GiB one to one with user access (RAM, the
 * PCI BARs below 4 GiB, the LAPIC), a GDT with 64-bit user code and data, a TSS whose rsp0 stack
 * takes faults from ring 3 (no I/O bitmap: port I/O from ring 3 faults), and the #GP gate that
 * returns from run_in_ring3. Afterwards CS is 0x08, and the interrupt gates are remade with it.
 */
void ring3_init(void)
{
	for (unsigned i = 0; i < 4; i++) {
		user_pdpt[i] = (uint64_t)(uintptr_t)user_pd[i] | 0x7; /* present, writable, user */
		for (unsigned j = 0; j < 512; j++) user_pd[i][j] = ((uint64_t)(i * 512 + j) << 21) | 0x87; /* + 2 MiB page */
	}
	user_pml4[0] = (uint64_t)(uintptr_t)user_pdpt | 0x7;
	__asm__ volatile("mov %0, %%cr3" ::"r"((uint64_t)(uintptr_t)user_pml4) : "memory");

	uint64_t base = (uint64_t)(uintptr_t)&tss, limit = sizeof(tss) - 1;
	tss.rsp0 = (uint64_t)(uintptr_t)(ring0_stack + sizeof(ring0_stack));
	tss.iomap_base = sizeof(tss);
	gdt[1] = 0x00af9b000000ffffull; /* 0x08: 64-bit code, DPL 0 */
	gdt[2] = 0x00cf93000000ffffull; /* 0x10: data, DPL 0 */
	gdt[3] = 0x00cff3000000ffffull; /* 0x18: data, DPL 3 */
	gdt[4] = 0x00affb000000ffffull; /* 0x20: 64-bit code, DPL 3 */
	gdt[5] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) | (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
	gdt[6] = base >> 32; /* 0x28: the TSS (16 bytes) */
	struct { uint16_t limit; uint64_t base; } __attribute__((packed)) desc = { sizeof(gdt) - 1, (uint64_t)(uintptr_t)gdt };
	__asm__ volatile(
		"lgdt %0\n\t"
		"pushq $0x08\n\t"
		"lea 1f(%%rip), %%rax\n\t"
		"pushq %%rax\n\t"
		"lretq\n"
		"1:\tmov $0x10, %%ax\n\t"
		"mov %%ax, %%ds\n\t"
		"mov %%ax, %%es\n\t"
		"mov %%ax, %%ss\n\t"
		"mov $0x28, %%ax\n\t"
		"ltr %%ax"
		:: "m"(desc) : "rax", "memory");
	uint64_t h = (uint64_t)(uintptr_t)ring3_gp_handler;
	idt[13] = (struct gate){ (uint16_t)h, 0x08, 0, 0x8e, (uint16_t)(h >> 16), (uint32_t)(h >> 32), 0 };
	interrupts_init(); /* its gates name the code segment: now 0x08 */
}

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
