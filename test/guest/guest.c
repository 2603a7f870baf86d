/* guest.c - tsvm's test guest: checks from inside the VM what the VMM promises, one line per check.
 *
 * Command-line options (from the zero page, or PVH start_info under QEMU):
 *   tsvm.mode=serve       after the checks, print "tick" every ~100 ms of guest time and report
 *                         balloon targets and disk capacities the host sets (control socket tests)
 *   tsvm.mode=writer      after the checks, write sector after sector of the first disk ("W<n>"),
 *                         printing "wrote <n>" after each completion
 *   tsvm.mode=spin        after the checks, halt forever instead of resetting (control tests)
 *   tsvm.mode=chatty      after the checks, print numbered lines on COM1 forever (output that
 *                         nobody reads)
 *   tsvm.mode=noisy       after the checks, read unclaimed I/O ports 0x4000-0xbfff one after another,
 *                         forever (each is a line in tsvm's debug log, the first time)
 *   tsvm.fault=triple     take an exception with no IDT (a triple fault) to test error reports
 *   tsvm.bench=pio:N      N writes to port 0x80, then print TSC cycles per exit and reset
 *   tsvm.bench=mmio:N     N writes to the unclaimed MMIO address 0xfebff000, likewise
 *   tsvm.console_rx=1     wait for host input on the virtio-console receive queue
 *   tsvm.net_rx=1         wait for a frame of ethertype 0x88b5 on the virtio-net receive queue
 *   tsvm.hostile=1        also act as a malicious virtio driver and check the device survives
 *   tsvm.hostile=bars     move one device's BAR over another's and drive it through its PCI_CFG window
 *   tsvm.bench=blk:N      N sequential 4 KiB virtio-blk reads, one in flight (blk64k:N: 64 KiB;
 *                         blkw:N: 4 KiB writes)
 *   tsvm.bench=blkq:OP:KIB:DEPTH:N[:RING[:WARM]]  N virtio-blk requests of KIB KiB kept DEPTH
 *                         (1-32) in flight, polled from ring 3 (RING 0: from ring 0); OP: rr/sr
 *                         random/sequential reads, rw/sw random/sequential writes; starts after under
 *                         a second, runs an untimed pass of WARM requests (N by default), then times N
 *   tsvm.bench=acc:KIND:N[:3]  N single accesses of KIND (cfg: a virtio common-config read, from ring 3
 *                         with :3; uart: LSR read + THR write on COM1; pcicfg: 0xCF8/0xCFC read;
 *                         notify: a virtio notify through its ioeventfd); starts after under a second,
 *                         runs each loop twice, times the second; prints cycles per access
 *   tsvm.bench=rng:N      N one-byte virtio-rng requests: the notify -> device -> interrupt round trip
 *   tsvm.bench=spin:N     N iterations of a ring-0 loop with no exits (probes for emulated ring 0)
 */
#include "guest.h"

#define COM1 0x3f8
#define ZP_E820_ENTRIES 0x1e8
#define ZP_BOOT_FLAG 0x1fe
#define ZP_HEADER 0x202
#define ZP_TYPE_OF_LOADER 0x210
#define ZP_CMD_LINE_PTR 0x228
#define ZP_E820_TABLE 0x2d0
#define PVH_MAGIC 0x336ec578
#define LAPIC_BASE 0xfee00000UL
#define LAPIC_SVR 0xf0
#define LAPIC_ICR_LOW 0x300
#define LAPIC_ICR_HIGH 0x310
#define AP_TRAMPOLINE_ADDRESS 0x3000
#define AP_FLAGS_ADDRESS 0x5000
#define MMIO_BENCH_ADDRESS 0xfebff000UL /* unclaimed: below the IOAPIC, far above the BARs tsvm allocates */
#define MAX_CPUS 256

void *memcpy(void *dst, const void *src, size_t n) { uint8_t *d = dst; const uint8_t *s = src; while (n--) *d++ = *s++; return dst; }
void *memset(void *dst, int c, size_t n) { uint8_t *d = dst; while (n--) *d++ = (uint8_t)c; return dst; }

/* ---- output ---- */
static void putc_serial(char c)
{
	for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++)
		;
	outb(COM1, (uint8_t)c);
}
void puts_(const char *s) { while (*s) { if (*s == '\n') putc_serial('\r'); putc_serial(*s++); } }
void putu(uint64_t v) { char b[21]; int i = 20; b[i] = 0; do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v); puts_(b + i); }
void putx(uint64_t v) { char b[19]; int i = 18; b[i] = 0; do { b[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v); b[--i] = 'x'; b[--i] = '0'; puts_(b + i); }
static void put2(unsigned v) { putc_serial((char)('0' + v / 10 % 10)); putc_serial((char)('0' + v % 10)); }

static int passed, failed;
void result(int ok, const char *name, const char *detail)
{
	puts_(ok ? "ok   " : "FAIL ");
	puts_(name);
	puts_(": ");
	puts_(detail);
	puts_("\n");
	if (ok) passed++; else failed++;
}

/* ---- command line ---- */
static const char *cmdline = "";
static const char *option(const char *key)
{
	for (const char *p = cmdline; *p; p++) {
		if (p != cmdline && p[-1] != ' ')
			continue;
		const char *k = key, *q = p;
		while (*k && *q == *k) { k++; q++; }
		if (!*k && *q == '=')
			return q + 1;
	}
	return NULL;
}
static int option_is(const char *key, const char *value)
{
	const char *v = option(key);
	if (!v) return 0;
	while (*value && *v == *value) { v++; value++; }
	return !*value && (*v == 0 || *v == ' ');
}
static uint64_t parse_u64(const char *s) { uint64_t v = 0; while (*s >= '0' && *s <= '9') v = v * 10 + (uint64_t)(*s++ - '0'); return v; }

/* ---- checks ---- */
static uint64_t ram_bytes;

static void check_zero_page(const uint8_t *zp)
{
	int ok = *(const uint16_t *)(zp + ZP_BOOT_FLAG) == 0xaa55 && *(const uint32_t *)(zp + ZP_HEADER) == 0x53726448 &&
		 zp[ZP_TYPE_OF_LOADER] == 0xff && *(const uint32_t *)(zp + ZP_CMD_LINE_PTR) != 0;
	result(ok, "zero-page", "boot flag 0xaa55, HdrS header, loader 0xff, command line pointer");
}

static void check_e820(const uint8_t *zp)
{
	unsigned n = zp[ZP_E820_ENTRIES];
	int ok = n > 0 && n <= 128, low = 0, high = 0;
	uint64_t prev_end = 0;
	for (unsigned i = 0; i < n && i < 128; i++) {
		const uint8_t *e = zp + ZP_E820_TABLE + i * 20;
		uint64_t addr = *(const uint64_t *)e, size = *(const uint64_t *)(e + 8);
		uint32_t type = *(const uint32_t *)(e + 16);
		puts_("     e820 "); putx(addr); puts_("-"); putx(addr + size); puts_(type == 1 ? " RAM\n" : " reserved\n");
		if (addr < prev_end || size == 0) ok = 0;
		prev_end = addr + size;
		if (type == 1) {
			ram_bytes += size;
			if (addr == 0) low = 1;
			if (addr <= 0x100000 && addr + size > 0x100000) high = 1;
		}
	}
	puts_("     e820 ram "); putu(ram_bytes >> 10); puts_(" KiB\n");
	result(ok && low && high, "e820", "sorted, non-overlapping, RAM at 0 and at 1 MiB");
}

static void check_serial(void)
{
	int ok = 1;
	outb(COM1 + 7, 0x5a); ok &= inb(COM1 + 7) == 0x5a;	/* scratch */
	outb(COM1 + 7, 0xa5); ok &= inb(COM1 + 7) == 0xa5;
	ok &= (inb(COM1 + 5) & 0x60) == 0x60;			/* THRE and TEMT */
	outb(COM1 + 1, 0); ok &= (inb(COM1 + 2) & 0x0f) == 0x01;	/* no interrupt pending */
	uint8_t mcr = inb(COM1 + 4);
	outb(COM1 + 4, 0x1a);					/* loopback, OUT2, RTS */
	ok &= (inb(COM1 + 6) & 0xf0) == 0x90;			/* DCD and CTS follow OUT2 and RTS */
	while (inb(COM1 + 5) & 1) (void)inb(COM1);
	outb(COM1, 0x42);
	ok &= (inb(COM1 + 5) & 1) && inb(COM1) == 0x42;		/* the byte comes back */
	outb(COM1 + 4, mcr);
	result(ok, "serial", "scratch register, LSR, IIR, loopback and MSR wiring");
}

static uint8_t cmos_read(uint8_t reg) { outb(0x70, reg); return inb(0x71); }
static unsigned bcd(uint8_t v) { return (v >> 4) * 10 + (v & 15); }
static int valid_bcd(uint8_t v) { return (v >> 4) < 10 && (v & 15) < 10; }

static void check_cmos(void)
{
	uint8_t b = cmos_read(0x0b), d = cmos_read(0x0d);
	uint8_t s = cmos_read(0), m = cmos_read(2), h = cmos_read(4), day = cmos_read(7), mon = cmos_read(8), yr = cmos_read(9), cen = cmos_read(0x32);
	int ok = (b & 0x06) == 0x02 && (d & 0x80) && valid_bcd(s) && valid_bcd(m) && valid_bcd(h) && valid_bcd(day) &&
		 valid_bcd(mon) && valid_bcd(yr) && bcd(mon) >= 1 && bcd(mon) <= 12 && bcd(h) < 24;
	puts_("     cmos time "); put2(bcd(cen)); put2(bcd(yr)); puts_("-"); put2(bcd(mon)); puts_("-"); put2(bcd(day));
	puts_(" "); put2(bcd(h)); puts_(":"); put2(bcd(m)); puts_(":"); put2(bcd(s)); puts_(" UTC\n");
	result(ok, "cmos", "BCD 24-hour clock, valid RAM flag, sane date");
}

static int i8042_read(uint8_t *out)
{
	for (int i = 0; i < 100000; i++)
		if (inb(0x64) & 1) { *out = inb(0x60); return 1; }
	return 0;
}

static void check_i8042(void)
{
	uint8_t v = 0, ctr = 0;
	outb(0x64, 0xaa);
	int ok = i8042_read(&v) && v == 0x55;
	outb(0x64, 0x20);
	ok &= i8042_read(&ctr);
	result(ok, "i8042", "controller self test answers 0x55, command byte readable");
}

static uint8_t apic_ids[MAX_CPUS];
static unsigned mp_cpus;

static int sum_ok(const uint8_t *p, unsigned len) { uint8_t s = 0; for (unsigned i = 0; i < len; i++) s += p[i]; return s == 0; }

static const uint8_t *find_mpf(uintptr_t start, uintptr_t end)
{
	for (uintptr_t a = start; a + 16 <= end; a += 16) {
		const uint8_t *p = (const uint8_t *)a;
		if (p[0] == '_' && p[1] == 'M' && p[2] == 'P' && p[3] == '_' && sum_ok(p, 16))
			return p;
	}
	return NULL;
}

static void check_mptable(void)
{
	const uint8_t *mpf = find_mpf(0x9fc00, 0xa0000);
	if (!mpf) mpf = find_mpf(0xf0000, 0x100000);
	if (!mpf) { result(0, "mptable", "no _MP_ floating pointer in the EBDA or BIOS area"); return; }
	const uint8_t *cfg = (const uint8_t *)(uintptr_t)*(const uint32_t *)(mpf + 4);
	uint16_t len = *(const uint16_t *)(cfg + 4), count = *(const uint16_t *)(cfg + 34);
	int ok = cfg[0] == 'P' && cfg[1] == 'C' && cfg[2] == 'M' && cfg[3] == 'P' && sum_ok(cfg, len);
	const uint8_t *e = cfg + 44;
	int bsp = 0, ioapic = 0;
	for (unsigned i = 0; ok && i < count; i++) {
		if (e[0] == 0) {
			if (mp_cpus < MAX_CPUS) apic_ids[mp_cpus++] = e[1];
			if (e[3] & 2) bsp++;
			e += 20;
		} else {
			if (e[0] == 2 && *(const uint32_t *)(e + 4) == 0xfec00000) ioapic = 1;
			e += 8;
		}
	}
	puts_("     mptable cpus "); putu(mp_cpus); puts_("\n");
	result(ok && bsp == 1 && ioapic && mp_cpus > 0, "mptable", "checksums, one boot CPU, IOAPIC at 0xfec00000");
}

static unsigned acpi_cpus;

static void check_acpi(void)
{
	const uint8_t *rsdp = NULL;
	for (uintptr_t a = 0xe0000; a < 0x100000 && !rsdp; a += 16) {
		const uint8_t *p = (const uint8_t *)a;
		if (p[0] == 'R' && p[1] == 'S' && p[2] == 'D' && p[3] == ' ' && p[4] == 'P' && p[5] == 'T' && p[6] == 'R' && p[7] == ' ')
			rsdp = p;
	}
	if (!rsdp) { result(0, "acpi", "no RSDP in 0xe0000-0xfffff"); return; }
	int ok = sum_ok(rsdp, 20) && rsdp[15] >= 2 && sum_ok(rsdp, 36);
	const uint8_t *xsdt = (const uint8_t *)(uintptr_t)*(const uint64_t *)(rsdp + 24);
	uint32_t xlen = *(const uint32_t *)(xsdt + 4);
	ok &= xsdt[0] == 'X' && xsdt[1] == 'S' && xsdt[2] == 'D' && xsdt[3] == 'T' && sum_ok(xsdt, xlen);
	int madt = 0, fadt = 0;
	for (uint32_t off = 36; ok && off + 8 <= xlen; off += 8) {
		const uint8_t *t = (const uint8_t *)(uintptr_t)*(const uint64_t *)(xsdt + off);
		uint32_t len = *(const uint32_t *)(t + 4);
		ok &= sum_ok(t, len);
		if (t[0] == 'F' && t[1] == 'A' && t[2] == 'C' && t[3] == 'P') fadt = 1;
		if (t[0] == 'A' && t[1] == 'P' && t[2] == 'I' && t[3] == 'C') {
			madt = 1;
			for (uint32_t e = 44; e + 2 <= len && t[e + 1] >= 2; e += t[e + 1])
				if (t[e] == 0 && (t[e + 4] & 1)) acpi_cpus++;
		}
	}
	puts_("     acpi madt cpus "); putu(acpi_cpus); puts_("\n");
	result(ok && madt && fadt && acpi_cpus == mp_cpus, "acpi", "RSDP, XSDT, FADT and MADT checksums; MADT CPUs match the MP table");
}

static void check_smp(void)
{
	volatile uint8_t *flags = (volatile uint8_t *)AP_FLAGS_ADDRESS;
	extern const uint8_t ap_trampoline[], ap_trampoline_end[];
	memcpy((void *)AP_TRAMPOLINE_ADDRESS, ap_trampoline, (size_t)(ap_trampoline_end - ap_trampoline));
	for (unsigned i = 0; i < MAX_CPUS; i++) flags[i] = 0;
	mmio_write32(LAPIC_BASE + LAPIC_SVR, 0x1ff);	/* software-enable the local APIC */
	unsigned online = 1, read_ok = 0;
	for (unsigned i = 0; i < mp_cpus; i++) {
		uint8_t id = apic_ids[i];
		if (id == 0) continue;
		mmio_write32(LAPIC_BASE + LAPIC_ICR_HIGH, (uint32_t)id << 24);
		mmio_write32(LAPIC_BASE + LAPIC_ICR_LOW, 0x4500);	/* INIT */
		for (int k = 0; k < 2; k++) {
			mmio_write32(LAPIC_BASE + LAPIC_ICR_HIGH, (uint32_t)id << 24);
			mmio_write32(LAPIC_BASE + LAPIC_ICR_LOW, 0x4600 | (AP_TRAMPOLINE_ADDRESS >> 12));	/* SIPI */
		}
		for (uint64_t spin = 0; spin < 50000000 && !flags[id]; spin++)
			__asm__ volatile("pause");
		if (flags[id]) online++;
		if (flags[id] == 1) read_ok++;
	}
	puts_("     smp online "); putu(online); puts_(" of "); putu(mp_cpus); puts_(", host bridge id read by "); putu(read_ok); puts_("\n");
	result(online == mp_cpus && read_ok + 1 == online, "smp", "every CPU in the MP table answered INIT/SIPI and read the host bridge's id through port I/O");
}

static void bench(const char *spec)
{
	int mmio = spec[0] == 'm', spin = spec[0] == 's';
	while (*spec && *spec != ':') spec++;
	uint64_t n = *spec ? parse_u64(spec + 1) : 100000;
	settle_devices();
	uint64_t t0 = rdtsc();
	if (spin)
		for (uint64_t i = 0; i < n; i++) __asm__ volatile("" ::: "memory");
	else if (mmio)
		for (uint64_t i = 0; i < n; i++) mmio_write32(MMIO_BENCH_ADDRESS, (uint32_t)i);
	else
		for (uint64_t i = 0; i < n; i++) outb(0x80, (uint8_t)i);
	uint64_t t1 = rdtsc();
	puts_(spin ? "bench spin loops " : mmio ? "bench mmio exits " : "bench pio exits "); putu(n);
	puts_(" tsc-per-exit "); putu((t1 - t0) / (n ? n : 1)); puts_("\n");
}

static void reset(void)
{
	outb(0x64, 0xfe);
	for (;;) __asm__ volatile("cli; hlt");
}

void guest_main(const uint8_t *zero_page, const uint8_t *pvh_start_info)
{
	if (zero_page)
		cmdline = (const char *)(uintptr_t)*(const uint32_t *)(zero_page + ZP_CMD_LINE_PTR);
	else if (pvh_start_info && *(const uint32_t *)pvh_start_info == PVH_MAGIC)
		cmdline = (const char *)(uintptr_t)*(const uint64_t *)(pvh_start_info + 24);
	puts_(zero_page ? "tsvm-guest: booted by the Linux 64-bit boot protocol\n" : "tsvm-guest: booted by PVH\n");
	puts_("     cmdline \""); puts_(cmdline); puts_("\"\n");

	const char *b = option("tsvm.bench");
	if (b && b[0] == 'b' && b[3] == 'q') {
		/* blkq:OP:KIB:DEPTH:N[:RING[:WARM]], OP one of rr (random reads), sr (sequential reads), rw,
		 * sw; RING 3 (the default) or 0: where the polling loop runs; WARM: requests in the untimed
		 * pass (N by default) */
		const char *f[7] = { b, 0, 0, 0, 0, 0, 0 };
		for (int i = 1; i < 7; i++) {
			const char *c = f[i - 1];
			while (*c && *c != ':') c++;
			f[i] = *c ? c + 1 : c;
		}
		interrupts_init();
		bench_blk_depth(f[1][1] == 'w', f[1][0] == 'r', (uint32_t)parse_u64(f[2]) * 1024, (uint32_t)parse_u64(f[3]), parse_u64(f[4]), f[5][0] != '0',
			f[6][0] ? parse_u64(f[6]) : parse_u64(f[4]));
		reset();
	}
	if (b && b[0] == 'a' && b[1] == 'c' && b[2] == 'c') {
		/* acc:KIND:N[:RING], KIND one of cfg, uart, pcicfg, notify; RING 3 only for cfg */
		const char *k = b + 4, *c = k;
		char kind[8] = { 0 };
		for (int i = 0; *c && *c != ':' && i < 7; i++) kind[i] = *c++;
		while (*c && *c != ':') c++;
		uint64_t n = *c ? parse_u64(c + 1) : 1000;
		if (*c) c++;
		while (*c && *c != ':') c++;
		interrupts_init();
		bench_access(kind, n, *c && c[1] == '3');
		reset();
	}
	if (b && (b[0] == 'b' || b[0] == 'r')) {
		/* blk:N (4 KiB reads), blk64k:N (64 KiB reads), rng:N (1-byte requests: notify -> interrupt) */
		const char *count = b;
		while (*count && *count != ':') count++;
		uint64_t n = *count ? parse_u64(count + 1) : 1000;
		interrupts_init();
		if (b[0] == 'r') bench_virtio("rng", n, 1);
		else if (b[3] == 'w') bench_virtio("blkw", n, 4096);
		else bench_virtio(b[3] == '6' ? "blk64k" : "blk", n, b[3] == '6' ? 65536 : 4096);
		reset();
	}
	if (b) { bench(b); reset(); }
	if (option_is("tsvm.fault", "triple")) {
		puts_("tsvm-guest: faulting on purpose\n");
		__asm__ volatile("lidt %0; ud2" :: "m"((struct { uint16_t l; uint64_t b; } __attribute__((packed))){0, 0}));
	}
	if (zero_page) {
		check_zero_page(zero_page);
		check_e820(zero_page);
	}
	check_serial();
	check_cmos();
	check_i8042();
	check_mptable();
	check_acpi();
	interrupts_init();
	hostile_mode = option_is("tsvm.hostile", "1");
	hostile_bars_mode = option_is("tsvm.hostile", "bars");
	console_rx_mode = option_is("tsvm.console_rx", "1");
	net_rx_mode = option_is("tsvm.net_rx", "1");
	/* tsvm.vsock=N (1-9): the vsock checks with N exchanges of 1 MiB each way, one connection each */
	const char *vsock = option("tsvm.vsock");
	vsock_mode = vsock && vsock[0] >= '1' && vsock[0] <= '9' && (vsock[1] == 0 || vsock[1] == ' ') ? vsock[0] - '0' : 0;
	check_pci();
	check_virtio();
	if (mp_cpus > 1) check_smp();
	puts_("tsvm-guest: "); putu((uint64_t)passed); puts_(" passed, "); putu((uint64_t)failed); puts_(" failed\n");
	if (option_is("tsvm.mode", "serve"))
		serve();
	if (option_is("tsvm.mode", "writer"))
		writer();
	if (option_is("tsvm.mode", "spin"))
		for (;;) __asm__ volatile("cli; hlt");
	if (option_is("tsvm.mode", "chatty"))
		for (uint64_t n = 0;; n++) { puts_("chatter "); putu(n); puts_("\n"); }
	if (option_is("tsvm.mode", "noisy"))
		for (uint16_t port = 0;; port = (port + 1) & 0x7fff) (void)inb(0x4000 + port);
	reset();
}
