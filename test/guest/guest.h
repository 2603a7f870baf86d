/* guest.h - shared helpers of the test guest: port and MMIO access, serial output, check results. */
#ifndef GUEST_H
#define GUEST_H
#include <stdint.h>
#include <stddef.h>

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint64_t rdtsc(void) { uint32_t lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((uint64_t)hi << 32) | lo; }
static inline void mmio_write8(uintptr_t a, uint8_t v) { *(volatile uint8_t *)a = v; }
static inline void mmio_write16(uintptr_t a, uint16_t v) { *(volatile uint16_t *)a = v; }
static inline void mmio_write32(uintptr_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline uint8_t mmio_read8(uintptr_t a) { return *(volatile uint8_t *)a; }
static inline uint16_t mmio_read16(uintptr_t a) { return *(volatile uint16_t *)a; }
static inline uint32_t mmio_read32(uintptr_t a) { return *(volatile uint32_t *)a; }
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
void puts_(const char *s);
void putu(uint64_t v);
void putx(uint64_t v);
void result(int ok, const char *name, const char *detail);

/* pci.c */
uint32_t pci_read32(unsigned slot, unsigned offset);
void pci_write32(unsigned slot, unsigned offset, uint32_t value);
uint16_t pci_read16(unsigned slot, unsigned offset);
void pci_write16(unsigned slot, unsigned offset, uint16_t value);
uint8_t pci_read8(unsigned slot, unsigned offset);
int pci_find(uint16_t vendor, uint16_t device);
int pci_find_nth(uint16_t vendor, uint16_t device, unsigned nth);
void check_pci(void);

/* interrupts.c */
void interrupts_init(void);
extern volatile uint32_t irq_counts[16];
#define IRQ_VECTOR_BASE 0x40
int wait_for_irq(unsigned index, uint32_t before);
int wait_until(int (*done)(const void *), const void *arg);
int wait_until_ms(int (*done)(const void *), const void *arg, unsigned ms);

/* virtio.c */
void check_virtio(void);
void serve(void);
void writer(void);
void bench_virtio(const char *kind, uint64_t n, uint32_t size);
void bench_blk_depth(int write, int random, uint32_t size, uint32_t depth, uint64_t n, int ring3, uint64_t warm);
void ring3_init(void);
void bench_access(const char *kind, uint64_t n, int ring3);
void settle_devices(void);
void run_in_ring3(void (*fn)(void *), void *arg, void *stack_top);
extern int hostile_mode;
extern int hostile_bars_mode;
extern int console_rx_mode;
extern int net_rx_mode;
extern int vsock_mode;
#endif
