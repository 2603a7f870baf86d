/* virtio.c - a virtio 1.x modern PCI driver written from the spec, and the device checks that use it. */
#include "guest.h"

#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_F_VERSION_1 32
#define VIRTIO_RING_F_INDIRECT_DESC 28
#define VIRTIO_RING_F_EVENT_IDX 29
#define STATUS_ACK 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4
#define STATUS_FEATURES_OK 8
#define STATUS_NEEDS_RESET 0x40
#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define DESC_F_INDIRECT 4
#define QSIZE 8

/* struct virtio_pci_common_cfg offsets */
enum { DFSEL = 0x00, DF = 0x04, GFSEL = 0x08, GF = 0x0c, MSIX_CFG = 0x10, NUMQ = 0x12, STATUS = 0x14, GEN = 0x15,
       QSEL = 0x16, QSIZEREG = 0x18, QMSIX = 0x1a, QEN = 0x1c, QNOFF = 0x1e, QDESC = 0x20, QDRV = 0x28, QDEV = 0x30 };

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct vq {
	struct desc desc[QSIZE] __attribute__((aligned(16)));
	struct { uint16_t flags, idx, ring[QSIZE], used_event; } avail __attribute__((aligned(2)));
	struct { uint16_t flags, idx; struct { uint32_t id, len; } ring[QSIZE]; uint16_t avail_event; } used __attribute__((aligned(4)));
	uint16_t next_avail, last_used, index;
	uintptr_t notify;
};
struct vdev {
	int slot;
	uintptr_t common, isr, device, notify_base;
	uint32_t notify_mult;
	unsigned msix_cap, msix_vectors;
};

/* Returns the address BAR `index` decodes (64-bit BARs included), or 0 when it is above what we map. */
static uintptr_t bar_address(unsigned slot, unsigned index)
{
	uint32_t low = pci_read32(slot, 0x10 + index * 4);
	if (low & 1) return 0; /* I/O BAR */
	uint64_t address = low & ~0xfu;
	if ((low & 0x6) == 0x4) address |= (uint64_t)pci_read32(slot, 0x14 + index * 4) << 32;
	return address < 0x100000000ull ? (uintptr_t)address : 0;
}

/* Finds the common, notify, ISR and device regions (in whichever BARs the device put them) and MSI-X. */
static int find_caps(struct vdev *d)
{
	unsigned found = 0;
	unsigned slot = (unsigned)d->slot;
	pci_write16(slot, 4, pci_read16(slot, 4) | 0x6); /* memory decoding and bus mastering */
	for (unsigned at = pci_read8(slot, 0x34); at; at = pci_read8(slot, at + 1)) {
		uint8_t id = pci_read8(slot, at);
		if (id == 0x11) {
			d->msix_cap = at;
			d->msix_vectors = (pci_read16(slot, at + 2) & 0x7ff) + 1;
			continue;
		}
		if (id != 0x09) continue;
		uint8_t type = pci_read8(slot, at + 3), bar = pci_read8(slot, at + 4);
		if (bar > 5 || !bar_address(slot, bar)) continue;
		uintptr_t base = bar_address(slot, bar) + pci_read32(slot, at + 8);
		if (type == 1 && !d->common) { d->common = base; found |= 1; }
		if (type == 2 && !d->notify_base) { d->notify_base = base; d->notify_mult = pci_read32(slot, at + 16); found |= 2; }
		if (type == 3 && !d->isr) { d->isr = base; found |= 4; }
		if (type == 4 && !d->device) { d->device = base; found |= 8; }
	}
	return (found & 7) == 7 && d->msix_cap;
}

/* Resets, negotiates `wanted` (VERSION_1 always) and returns the accepted feature word pair, or -1. */
static int64_t negotiate(struct vdev *d, uint64_t wanted)
{
	mmio_write8(d->common + STATUS, 0);
	while (mmio_read8(d->common + STATUS) != 0) ;
	mmio_write8(d->common + STATUS, STATUS_ACK);
	mmio_write8(d->common + STATUS, STATUS_ACK | STATUS_DRIVER);
	mmio_write32(d->common + DFSEL, 0);
	uint64_t offered = mmio_read32(d->common + DF);
	mmio_write32(d->common + DFSEL, 1);
	offered |= (uint64_t)mmio_read32(d->common + DF) << 32;
	uint64_t accept = offered & (wanted | (1ull << VIRTIO_F_VERSION_1));
	mmio_write32(d->common + GFSEL, 0);
	mmio_write32(d->common + GF, (uint32_t)accept);
	mmio_write32(d->common + GFSEL, 1);
	mmio_write32(d->common + GF, (uint32_t)(accept >> 32));
	mmio_write8(d->common + STATUS, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
	if (!(mmio_read8(d->common + STATUS) & STATUS_FEATURES_OK)) return -1;
	return (int64_t)accept;
}

/* Turns MSI-X on and points vector v at IDT vector IRQ_VECTOR_BASE + first + v on CPU 0. */
static void msix_setup(struct vdev *d, unsigned first)
{
	uint32_t table = pci_read32((unsigned)d->slot, d->msix_cap + 4);
	uintptr_t base = bar_address((unsigned)d->slot, table & 7) + (table & ~7u);
	pci_write16((unsigned)d->slot, d->msix_cap + 2, 0x8000);
	for (unsigned v = 0; v < d->msix_vectors && first + v < 16; v++) {
		mmio_write32(base + v * 16, 0xfee00000);
		mmio_write32(base + v * 16 + 4, 0);
		mmio_write32(base + v * 16 + 8, IRQ_VECTOR_BASE + first + v);
		mmio_write32(base + v * 16 + 12, 0); /* unmasked */
	}
}

static int queue_setup(struct vdev *d, struct vq *q, uint16_t index, uint16_t vector)
{
	memset(q, 0, sizeof(*q));
	q->index = index;
	mmio_write16(d->common + QSEL, index);
	if (mmio_read16(d->common + QSIZEREG) < QSIZE) return 0;
	mmio_write16(d->common + QSIZEREG, QSIZE);
	mmio_write16(d->common + QMSIX, vector);
	if (mmio_read16(d->common + QMSIX) != vector) return 0;
	mmio_write32(d->common + QDESC, (uint32_t)(uintptr_t)q->desc);
	mmio_write32(d->common + QDESC + 4, 0);
	mmio_write32(d->common + QDRV, (uint32_t)(uintptr_t)&q->avail);
	mmio_write32(d->common + QDRV + 4, 0);
	mmio_write32(d->common + QDEV, (uint32_t)(uintptr_t)&q->used);
	mmio_write32(d->common + QDEV + 4, 0);
	q->notify = d->notify_base + mmio_read16(d->common + QNOFF) * d->notify_mult;
	mmio_write16(d->common + QEN, 1);
	return 1;
}

static void driver_ok(struct vdev *d) { mmio_write8(d->common + STATUS, mmio_read8(d->common + STATUS) | STATUS_DRIVER_OK); }

static void submit(struct vq *q, uint16_t head)
{
	q->avail.ring[q->next_avail % QSIZE] = head;
	barrier();
	q->avail.idx = ++q->next_avail;
	barrier();
	mmio_write16(q->notify, q->index);
}

/* Makes `head` available without notifying: vq_kick notifies once for a batch, as Linux's driver
 * does (virtqueue_add, then one virtqueue_kick). */
static void vq_add(struct vq *q, uint16_t head)
{
	q->avail.ring[q->next_avail % QSIZE] = head;
	barrier();
	q->avail.idx = ++q->next_avail;
}

/* Notifies the device of what vq_add made available, unless it says it needs no notification
 * (VIRTQ_USED_F_NO_NOTIFY, virtio 1.2 §2.7.10: it is still looking at the queue). The fence orders
 * the avail index before the flag is read: a device that clears the flag looks at the ring once
 * more afterwards, so one side always sees the other. */
static void vq_kick(struct vq *q)
{
	__asm__ volatile("mfence" ::: "memory");
	if (!(*(volatile uint16_t *)&q->used.flags & 1)) mmio_write16(q->notify, q->index);
}

static void submit_polite(struct vq *q, uint16_t head)
{
	vq_add(q, head);
	vq_kick(q);
}

struct used_wait { struct vq *q; unsigned irq; uint32_t before; };
static int used_and_irq(const void *arg)
{
	const struct used_wait *w = arg;
	return *(volatile uint16_t *)&w->q->used.idx != w->q->last_used && irq_counts[w->irq] != w->before;
}

/* Waits until the used ring has advanced and interrupt `irq` has come since `irq_before` was read
 * (in either order); returns the used length, or -1. */
static int64_t wait_used(struct vq *q, unsigned irq, uint32_t irq_before)
{
	struct used_wait w = { q, irq, irq_before };
	if (!wait_until(used_and_irq, &w)) return -1;
	return q->used.ring[q->last_used++ % QSIZE].len;
}

static int open_device(struct vdev *d, uint16_t device_id, const char *name)
{
	memset(d, 0, sizeof(*d));
	d->slot = pci_find(VIRTIO_VENDOR, device_id);
	if (d->slot < 0) { result(0, name, "device not found on PCI bus 0"); return 0; }
	if (!find_caps(d)) { result(0, name, "common/notify/ISR capabilities or MSI-X missing"); return 0; }
	return 1;
}

/* ---- virtio-rng ---- */
static struct vq rngq;
static uint8_t rng_buf[2][32];

static void check_rng(void)
{
	struct vdev d;
	if (!open_device(&d, 0x1044, "virtio-rng")) return;
	int64_t features = negotiate(&d, 0);
	msix_setup(&d, 0);
	mmio_write16(d.common + MSIX_CFG, 0);
	int ok = features >= 0 && queue_setup(&d, &rngq, 0, 1);
	driver_ok(&d);
	for (int i = 0; ok && i < 2; i++) {
		rngq.desc[i] = (struct desc){ (uint64_t)(uintptr_t)rng_buf[i], sizeof(rng_buf[i]), DESC_F_WRITE, 0 };
		uint32_t before = irq_counts[1];
		submit(&rngq, (uint16_t)i);
		ok &= wait_used(&rngq, 1, before) == sizeof(rng_buf[i]);
	}
	int differ = 0, nonzero = 0;
	for (unsigned i = 0; i < sizeof(rng_buf[0]); i++) {
		differ |= rng_buf[0][i] != rng_buf[1][i];
		nonzero |= rng_buf[0][i] | rng_buf[1][i];
	}
	puts_("     virtio-rng irqs "); putu(irq_counts[1]); puts_(" first bytes "); putx(rng_buf[0][0]); puts_(" "); putx(rng_buf[1][0]); puts_("\n");
	result(ok && differ && nonzero && !(mmio_read8(d.common + STATUS) & STATUS_NEEDS_RESET), "virtio-rng",
	       "found by PCI scan, features negotiated, two reads by MSI-X, the bytes differ");
	mmio_write8(d.common + STATUS, 0);
}

/* ---- virtio-blk ---- */
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_F_RO 5
#define BLK_F_FLUSH 9
static struct vq blkq;
static struct { uint32_t type, reserved; uint64_t sector; } blk_hdr;
static uint8_t blk_data[512] __attribute__((aligned(512)));
static uint8_t blk_id[20];
static volatile uint8_t blk_status;
static struct desc blk_indirect[3] __attribute__((aligned(16)));
static int blk_event_idx;

/* Issues one request (header, optional data, status) and returns the status byte, or -1. */
static int blk_request(uint32_t type, uint64_t sector, void *data, uint32_t len, int device_writes, int indirect)
{
	blk_hdr.type = type;
	blk_hdr.sector = sector;
	blk_status = 0xff;
	struct desc chain[3];
	unsigned n = 0;
	chain[n++] = (struct desc){ (uint64_t)(uintptr_t)&blk_hdr, sizeof(blk_hdr), DESC_F_NEXT, 0 };
	if (len) chain[n++] = (struct desc){ (uint64_t)(uintptr_t)data, len, (uint16_t)(DESC_F_NEXT | (device_writes ? DESC_F_WRITE : 0)), 0 };
	chain[n++] = (struct desc){ (uint64_t)(uintptr_t)&blk_status, 1, DESC_F_WRITE, 0 };
	for (unsigned i = 0; i + 1 < n; i++) chain[i].next = (uint16_t)(i + 1);
	if (indirect) {
		memcpy(blk_indirect, chain, n * sizeof(struct desc));
		blkq.desc[0] = (struct desc){ (uint64_t)(uintptr_t)blk_indirect, n * sizeof(struct desc), DESC_F_INDIRECT, 0 };
	} else {
		memcpy(blkq.desc, chain, n * sizeof(struct desc));
	}
	if (blk_event_idx) blkq.avail.used_event = blkq.last_used;
	uint32_t before = irq_counts[3];
	submit(&blkq, 0);
	if (wait_used(&blkq, 3, before) < 0) return -1;
	return blk_status;
}

static void check_blk(unsigned nth)
{
	struct vdev d;
	char name[] = "virtio-blk0";
	name[10] = (char)('0' + nth);
	memset(&d, 0, sizeof(d));
	d.slot = pci_find_nth(VIRTIO_VENDOR, 0x1042, nth);
	if (d.slot < 0) return;
	if (!find_caps(&d) || !d.device) { result(0, name, "capabilities missing"); return; }
	int64_t features = negotiate(&d, (1ull << BLK_F_RO) | (1ull << BLK_F_FLUSH) | (1ull << VIRTIO_RING_F_INDIRECT_DESC) | (1ull << VIRTIO_RING_F_EVENT_IDX));
	blk_event_idx = features >= 0 && (features >> VIRTIO_RING_F_EVENT_IDX) & 1;
	msix_setup(&d, 2);
	mmio_write16(d.common + MSIX_CFG, 0);
	int ok = features >= 0 && queue_setup(&d, &blkq, 0, 1);
	driver_ok(&d);
	uint64_t capacity = (uint64_t)mmio_read32(d.device) | ((uint64_t)mmio_read32(d.device + 4) << 32);
	int ro = features >= 0 && (features >> BLK_F_RO) & 1;
	ok &= blk_request(BLK_T_GET_ID, 0, blk_id, sizeof(blk_id), 1, 0) == 0;
	puts_("     "); puts_(name); puts_(" capacity "); putu(capacity); puts_(" sectors, id \"");
	char id[21]; memcpy(id, blk_id, 20); id[20] = 0; puts_(id); puts_(ro ? "\", read-only\n" : "\", read-write\n");
	ok &= blk_request(BLK_T_IN, 0, blk_data, 512, 1, 0) == 0;
	puts_("     "); puts_(name); puts_(" sector 0 starts \""); char head[9]; memcpy(head, blk_data, 8); head[8] = 0;
	for (int i = 0; i < 8; i++) if (head[i] < 32 || head[i] > 126) head[i] = '.';
	puts_(head); puts_("\"\n");
	const char *pattern = "written by the tsvm test guest";
	memset(blk_data, 0, 512);
	memcpy(blk_data, pattern, 30);
	int w = blk_request(BLK_T_OUT, 1, blk_data, 512, 0, 1); /* through an indirect table */
	if (ro) {
		ok &= w == 1; /* VIRTIO_BLK_S_IOERR */
	} else {
		ok &= w == 0 && blk_request(BLK_T_FLUSH, 0, 0, 0, 0, 0) == 0;
		memset(blk_data, 0, 512);
		ok &= blk_request(BLK_T_IN, 1, blk_data, 512, 1, 1) == 0 && blk_data[0] == 'w' && blk_data[29] == 't';
	}
	ok &= blk_request(BLK_T_IN, capacity, blk_data, 512, 1, 0) == 1; /* past the end: IOERR */
	ok &= blk_request(99, 0, 0, 0, 0, 0) == 2; /* unknown type: UNSUPP */
	result(ok && !(mmio_read8(d.common + STATUS) & STATUS_NEEDS_RESET), name,
	       ro ? "id, read, write refused, read past the end refused" : "id, write through an indirect table, flush, read back, read past the end refused");
	mmio_write8(d.common + STATUS, 0);
}

/* ---- a hostile driver: what a malicious guest may post, then proof the device still works ---- */
static void check_hostile(void)
{
	struct vdev d;
	if (!open_device(&d, 0x1044, "hostile")) return;
	int ok = negotiate(&d, 0) >= 0;
	msix_setup(&d, 0);
	mmio_write16(d.common + MSIX_CFG, 0);
	ok &= queue_setup(&d, &rngq, 0, 1);
	driver_ok(&d);
	/* a chain whose NEXT points at itself: returned with length 0 */
	rngq.desc[0] = (struct desc){ (uint64_t)(uintptr_t)rng_buf[0], 16, DESC_F_WRITE | DESC_F_NEXT, 0 };
	uint32_t before = irq_counts[1];
	submit(&rngq, 0);
	int loop_len = (int)wait_used(&rngq, 1, before);
	/* a buffer far beyond RAM: returned with length 0 */
	rngq.desc[1] = (struct desc){ 0x7ffffff00000ull, 16, DESC_F_WRITE, 0 };
	before = irq_counts[1];
	submit(&rngq, 1);
	int beyond_len = (int)wait_used(&rngq, 1, before);
	/* an avail index that jumps past the queue size: the device asks for a reset */
	uint32_t config_before = irq_counts[0];
	rngq.avail.idx = (uint16_t)(rngq.next_avail + 100);
	barrier();
	mmio_write16(rngq.notify, 0);
	int config_irq = wait_for_irq(0, config_before);
	int needs_reset = (mmio_read8(d.common + STATUS) & STATUS_NEEDS_RESET) != 0;
	puts_("     hostile loop len "); putu((uint64_t)(int64_t)loop_len); puts_(", beyond-RAM len "); putu((uint64_t)(int64_t)beyond_len);
	puts_(needs_reset ? ", needs reset after the jump\n" : ", no reset requested\n");
	ok &= loop_len == 0 && beyond_len == 0 && config_irq && needs_reset;
	/* after a reset the device works again */
	ok &= negotiate(&d, 0) >= 0 && queue_setup(&d, &rngq, 0, 1);
	driver_ok(&d);
	rngq.desc[0] = (struct desc){ (uint64_t)(uintptr_t)rng_buf[0], 16, DESC_F_WRITE, 0 };
	before = irq_counts[1];
	submit(&rngq, 0);
	ok &= wait_used(&rngq, 1, before) == 16;
	result(ok, "hostile", "looping chain and beyond-RAM buffer returned empty, avail jump -> DEVICE_NEEDS_RESET, works after reset");
	mmio_write8(d.common + STATUS, 0);
}

/* ---- a hostile guest moving one device's BAR over another's (tsvm.hostile=bars) ---- */

/* Finds the VIRTIO_PCI_CAP_PCI_CFG capability of `slot`, or 0. */
static unsigned pci_cfg_cap(unsigned slot)
{
	for (unsigned at = pci_read8(slot, 0x34); at; at = pci_read8(slot, at + 1))
		if (pci_read8(slot, at) == 0x09 && pci_read8(slot, at + 3) == 5) return at;
	return 0;
}

/* Writes `len` bytes of `value` at `offset` of BAR 0 through the PCI configuration access window. */
static void cfg_window_write(unsigned slot, unsigned cap, uint32_t offset, uint32_t len, uint32_t value)
{
	pci_write32(slot, cap + 4, 0); /* bar 0 */
	pci_write32(slot, cap + 8, offset);
	pci_write32(slot, cap + 12, len);
	pci_write32(slot, cap + 16, value); /* the window takes the low `len` bytes */
}

static uint32_t cfg_window_read(unsigned slot, unsigned cap, uint32_t offset, uint32_t len)
{
	pci_write32(slot, cap + 4, 0);
	pci_write32(slot, cap + 8, offset);
	pci_write32(slot, cap + 12, len);
	uint32_t v = pci_read32(slot, cap + 16);
	return len == 1 ? (v & 0xff) : len == 2 ? (v & 0xffff) : v;
}

static struct vq balloon_inflate;
static uint32_t bars_pfn[2] __attribute__((aligned(8)));
static uint8_t bars_page[4096] __attribute__((aligned(4096)));

/* rng's BAR over the balloon's: the rng, driven through its configuration window, cannot take the
 * balloon's notification addresses (it needs a reset instead); the balloon keeps working; once the
 * BAR is back, the rng works again after a reset. */
static void check_hostile_bars(void)
{
	struct vdev a, b;
	if (!open_device(&b, 0x1045, "hostile-bars") || !open_device(&a, 0x1044, "hostile-bars")) return;
	int ok = negotiate(&b, 0) >= 0;
	msix_setup(&b, 12);
	ok &= queue_setup(&b, &balloon_inflate, 0, 1);
	driver_ok(&b);
	unsigned slot = (unsigned)a.slot, cap = pci_cfg_cap(slot);
	uint32_t a_bar = pci_read32(slot, 0x10), b_bar = pci_read32((unsigned)b.slot, 0x10);
	ok &= cap != 0;
	pci_write32(slot, 0x10, b_bar); /* overlap */
	memset(&rngq, 0, sizeof(rngq));
	cfg_window_write(slot, cap, STATUS, 1, 0);
	cfg_window_write(slot, cap, STATUS, 1, STATUS_ACK | STATUS_DRIVER);
	cfg_window_write(slot, cap, GFSEL, 4, 1);
	cfg_window_write(slot, cap, GF, 4, 1); /* VIRTIO_F_VERSION_1 */
	cfg_window_write(slot, cap, STATUS, 1, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
	cfg_window_write(slot, cap, QSEL, 2, 0);
	cfg_window_write(slot, cap, QSIZEREG, 2, QSIZE);
	cfg_window_write(slot, cap, QDESC, 4, (uint32_t)(uintptr_t)rngq.desc);
	cfg_window_write(slot, cap, QDRV, 4, (uint32_t)(uintptr_t)&rngq.avail);
	cfg_window_write(slot, cap, QDEV, 4, (uint32_t)(uintptr_t)&rngq.used);
	cfg_window_write(slot, cap, QEN, 2, 1);
	cfg_window_write(slot, cap, STATUS, 1, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
	int refused = (cfg_window_read(slot, cap, STATUS, 1) & STATUS_NEEDS_RESET) != 0;
	/* the balloon still takes a page through its own notification address */
	bars_pfn[0] = (uint32_t)((uintptr_t)bars_page >> 12);
	balloon_inflate.desc[0] = (struct desc){ (uint64_t)(uintptr_t)bars_pfn, 4, 0, 0 };
	uint32_t before = irq_counts[13];
	submit(&balloon_inflate, 0);
	int balloon_ok = wait_used(&balloon_inflate, 13, before) >= 0;
	/* the rng's BAR goes back; after a reset it works again */
	pci_write32(slot, 0x10, a_bar);
	mmio_write8(a.common + STATUS, 0);
	ok &= negotiate(&a, 0) >= 0 && queue_setup(&a, &rngq, 0, 0xffff);
	driver_ok(&a);
	rngq.desc[0] = (struct desc){ (uint64_t)(uintptr_t)rng_buf[0], 16, DESC_F_WRITE, 0 };
	submit(&rngq, 0);
	int rng_ok = 0;
	for (int spin = 0; spin < 50000000 && !rng_ok; spin++) rng_ok = *(volatile uint16_t *)&rngq.used.idx == 1;
	puts_("     hostile-bars "); puts_(refused ? "overlap refused" : "overlap accepted"); puts_(balloon_ok ? ", balloon served" : ", balloon lost");
	puts_(rng_ok ? ", rng works after reset\n" : ", rng dead after reset\n");
	result(ok && refused && balloon_ok && rng_ok, "hostile-bars", "a BAR moved over another device's: refused (needs reset), the other device unharmed, works after a reset");
	mmio_write8(a.common + STATUS, 0);
	mmio_write8(b.common + STATUS, 0);
}

/* ---- virtio-console ---- */
static struct vq conrx, contx;
static char con_out[] = "hello from the guest over virtio-console\n";
static char con_in[64];
int console_rx_mode;

static void check_console(void)
{
	struct vdev d;
	memset(&d, 0, sizeof(d));
	d.slot = pci_find(VIRTIO_VENDOR, 0x1043);
	if (d.slot < 0) return;
	if (!find_caps(&d)) { result(0, "virtio-console", "capabilities missing"); return; }
	int ok = negotiate(&d, 0) >= 0;
	msix_setup(&d, 4);
	mmio_write16(d.common + MSIX_CFG, 0);
	ok &= queue_setup(&d, &conrx, 0, 1) && queue_setup(&d, &contx, 1, 2);
	driver_ok(&d);
	uint32_t rx_before = irq_counts[5];
	conrx.desc[0] = (struct desc){ (uint64_t)(uintptr_t)con_in, sizeof(con_in) - 1, DESC_F_WRITE, 0 };
	conrx.avail.ring[0] = 0;
	barrier();
	conrx.avail.idx = ++conrx.next_avail;
	barrier();
	mmio_write16(conrx.notify, 0);
	contx.desc[0] = (struct desc){ (uint64_t)(uintptr_t)con_out, sizeof(con_out) - 1, 0, 0 };
	uint32_t before = irq_counts[6];
	submit(&contx, 0);
	ok &= wait_used(&contx, 6, before) == 0;
	if (console_rx_mode) {
		int64_t n = wait_used(&conrx, 5, rx_before);
		ok &= n > 0;
		if (n > 0) { con_in[n] = 0; puts_("     virtio-console received \""); puts_(con_in); puts_("\"\n"); }
	}
	result(ok && !(mmio_read8(d.common + STATUS) & STATUS_NEEDS_RESET), "virtio-console",
	       console_rx_mode ? "a line out through the transmit queue, host input in through the receive queue" : "a line out through the transmit queue");
	mmio_write8(d.common + STATUS, 0);
}

/* ---- virtio-net ---- */
#define NET_F_MAC 5
#define NET_HDR 12
#define RX_BUFS 4
static struct vq netrx, nettx;
static uint8_t net_rxbuf[RX_BUFS][1526];
static uint8_t net_txbuf[NET_HDR + 64];
int net_rx_mode;

static void check_net(void)
{
	struct vdev d;
	memset(&d, 0, sizeof(d));
	d.slot = pci_find(VIRTIO_VENDOR, 0x1041);
	if (d.slot < 0) return;
	if (!find_caps(&d) || !d.device) { result(0, "virtio-net", "capabilities missing"); return; }
	int64_t features = negotiate(&d, 1ull << NET_F_MAC);
	int ok = features >= 0 && (features >> NET_F_MAC) & 1;
	msix_setup(&d, 8);
	mmio_write16(d.common + MSIX_CFG, 0);
	ok &= queue_setup(&d, &netrx, 0, 1) && queue_setup(&d, &nettx, 1, 2);
	uint8_t mac[6];
	for (int i = 0; i < 6; i++) mac[i] = mmio_read8(d.device + (uintptr_t)i);
	driver_ok(&d);
	uint32_t rx_before = irq_counts[9];
	for (uint16_t i = 0; i < RX_BUFS; i++) {
		netrx.desc[i] = (struct desc){ (uint64_t)(uintptr_t)net_rxbuf[i], sizeof(net_rxbuf[i]), DESC_F_WRITE, 0 };
		netrx.avail.ring[netrx.next_avail++ % QSIZE] = i;
	}
	barrier();
	netrx.avail.idx = netrx.next_avail;
	barrier();
	mmio_write16(netrx.notify, 0);
	/* a broadcast frame of the local experimental ethertype 0x88b5 */
	static const char payload[] = "hello from the tsvm guest";
	uint8_t *f = net_txbuf + NET_HDR;
	memset(net_txbuf, 0, sizeof(net_txbuf));
	memset(f, 0xff, 6);
	memcpy(f + 6, mac, 6);
	f[12] = 0x88; f[13] = 0xb5;
	memcpy(f + 14, payload, sizeof(payload));
	nettx.desc[0] = (struct desc){ (uint64_t)(uintptr_t)net_txbuf, NET_HDR + 14 + sizeof(payload), 0, 0 };
	uint32_t before = irq_counts[10];
	submit(&nettx, 0);
	int sent = wait_used(&nettx, 10, before) == 0;
	ok &= sent;
	puts_("     virtio-net mac "); for (int i = 0; i < 6; i++) { putx(mac[i]); puts_(i < 5 ? ":" : "\n"); }
	if (!sent) puts_("     virtio-net: the device did not return the TX frame\n");
	if (net_rx_mode) {
		int got = 0;
		for (int frames = 0; frames < 16 && !got; frames++) {
			int64_t n = wait_used(&netrx, 9, rx_before);
			rx_before = irq_counts[9] - 1; /* later frames may share an interrupt with this one */
			if (n < 0) break;
			uint32_t id = netrx.used.ring[(netrx.last_used - 1) % QSIZE].id;
			uint8_t *rf = net_rxbuf[id % RX_BUFS] + NET_HDR;
			if (n > NET_HDR + 14 && rf[12] == 0x88 && rf[13] == 0xb5) {
				char text[64];
				int len = (int)n - NET_HDR - 14;
				if (len > 63) len = 63;
				memcpy(text, rf + 14, (size_t)len);
				text[len] = 0;
				puts_("     virtio-net received \""); puts_(text); puts_("\"\n");
				got = 1;
			}
			netrx.avail.ring[netrx.next_avail++ % QSIZE] = (uint16_t)id; /* give the buffer back */
			barrier();
			netrx.avail.idx = netrx.next_avail;
			barrier();
			mmio_write16(netrx.notify, 0);
		}
		if (!got) puts_("     virtio-net: no frame of ethertype 0x88b5 came in through RX\n");
		ok &= got;
	}
	result(ok && !(mmio_read8(d.common + STATUS) & STATUS_NEEDS_RESET), "virtio-net",
	       net_rx_mode ? "MAC from config, a frame out through TX, a frame in through RX" : "MAC from config, a frame out through TX");
	mmio_write8(d.common + STATUS, 0);
}

/* ---- virtio-balloon ---- */
#define BALLOON_F_STATS_VQ 1
static struct vq binf, bdef, bstats;
static uint8_t victim[4096] __attribute__((aligned(4096)));
static uint32_t balloon_pfn;
static struct { uint16_t tag; uint64_t val; } __attribute__((packed)) balloon_stats[2];

static void check_balloon(void)
{
	struct vdev d;
	memset(&d, 0, sizeof(d));
	d.slot = pci_find(VIRTIO_VENDOR, 0x1045);
	if (d.slot < 0) return;
	if (!find_caps(&d) || !d.device) { result(0, "virtio-balloon", "capabilities missing"); return; }
	int64_t features = negotiate(&d, 1ull << BALLOON_F_STATS_VQ);
	int ok = features >= 0 && (features >> BALLOON_F_STATS_VQ) & 1;
	msix_setup(&d, 12);
	mmio_write16(d.common + MSIX_CFG, 0);
	ok &= queue_setup(&d, &binf, 0, 1) && queue_setup(&d, &bdef, 1, 2) && queue_setup(&d, &bstats, 2, 3);
	driver_ok(&d);
	uint32_t target = mmio_read32(d.device);
	balloon_stats[0].tag = 4; balloon_stats[0].val = 100ull << 20; /* free memory */
	balloon_stats[1].tag = 5; balloon_stats[1].val = 256ull << 20; /* total memory */
	bstats.desc[0] = (struct desc){ (uint64_t)(uintptr_t)balloon_stats, sizeof(balloon_stats), 0, 0 };
	submit(&bstats, 0);
	memset(victim, 0xab, sizeof(victim));
	balloon_pfn = (uint32_t)((uintptr_t)victim >> 12);
	binf.desc[0] = (struct desc){ (uint64_t)(uintptr_t)&balloon_pfn, 4, 0, 0 };
	uint32_t before = irq_counts[13];
	submit(&binf, 0);
	ok &= wait_used(&binf, 13, before) == 0;
	mmio_write32(d.device + 4, 1); /* actual */
	bdef.desc[0] = (struct desc){ (uint64_t)(uintptr_t)&balloon_pfn, 4, 0, 0 };
	before = irq_counts[14];
	submit(&bdef, 0);
	ok &= wait_used(&bdef, 14, before) == 0;
	mmio_write32(d.device + 4, 0);
	int released = victim[0] == 0 && victim[4095] == 0;
	puts_("     virtio-balloon target "); putu(target); puts_(" pages, inflated page reads back ");
	puts_(released ? "zero\n" : "unchanged\n");
	result(ok && released && !(mmio_read8(d.common + STATUS) & STATUS_NEEDS_RESET), "virtio-balloon",
	       "inflate gives a page back to the host (it reads zero after deflate), stats posted");
	mmio_write8(d.common + STATUS, 0);
}

/* ---- benchmarks: one request in flight, timed with the TSC, the same code under any VMM ---- */
static uint8_t bench_buf[65536] __attribute__((aligned(4096)));

void bench_virtio(const char *kind, uint64_t n, uint32_t size)
{
	struct vdev d;
	int blk = kind[0] == 'b';
	int write = blk && kind[3] == 'w';
	if (!open_device(&d, blk ? 0x1042 : 0x1044, kind)) return;
	if (negotiate(&d, 0) < 0) { result(0, kind, "feature negotiation failed"); return; }
	msix_setup(&d, 0);
	mmio_write16(d.common + MSIX_CFG, 0);
	struct vq *q = blk ? &blkq : &rngq;
	if (!queue_setup(&d, q, 0, 1)) { result(0, kind, "queue setup failed"); return; }
	driver_ok(&d);
	uint64_t capacity = blk ? ((uint64_t)mmio_read32(d.device) | ((uint64_t)mmio_read32(d.device + 4) << 32)) : 0;
	uint64_t sectors = size / 512, failures = 0;
	/* Poll the used ring with interrupts suppressed, so the figure is the device's and the
	 * notification path's, the same way under every VMM. */
	q->avail.flags = 1; /* VIRTQ_AVAIL_F_NO_INTERRUPT */
	uint64_t t0 = rdtsc();
	for (uint64_t i = 0; i < n; i++) {
		uint32_t before = irq_counts[1];
		if (blk) {
			blk_hdr.type = write ? BLK_T_OUT : BLK_T_IN;
			blk_hdr.sector = (i * sectors) % (capacity - sectors);
			q->desc[0] = (struct desc){ (uint64_t)(uintptr_t)&blk_hdr, sizeof(blk_hdr), DESC_F_NEXT, 1 };
			q->desc[1] = (struct desc){ (uint64_t)(uintptr_t)bench_buf, size, (uint16_t)(DESC_F_NEXT | (write ? 0 : DESC_F_WRITE)), 2 };
			q->desc[2] = (struct desc){ (uint64_t)(uintptr_t)&blk_status, 1, DESC_F_WRITE, 0 };
		} else {
			q->desc[0] = (struct desc){ (uint64_t)(uintptr_t)bench_buf, size, DESC_F_WRITE, 0 };
		}
		(void)before;
		submit(q, 0);
		uint64_t spin = 0;
		while (*(volatile uint16_t *)&q->used.idx == q->last_used && ++spin < 100000000) __asm__ volatile("pause");
		if (spin >= 100000000) failures++;
		else q->last_used++;
	}
	uint64_t t1 = rdtsc();
	puts_("bench "); puts_(kind); puts_(" requests "); putu(n); puts_(" bytes "); putu(size);
	puts_(" failures "); putu(failures); puts_(" tsc-per-request "); putu((t1 - t0) / (n ? n : 1)); puts_("\n");
	mmio_write8(d.common + STATUS, 0);
}

/* ---- block benchmark at queue depth: up to BQ_DEPTH requests in flight, polled ---- */
#define BQ_SIZE 128		/* descriptors: three per request */
#define BQ_DEPTH 32
#define BQ_MAX_BYTES 65536
struct bq {
	struct desc desc[BQ_SIZE] __attribute__((aligned(16)));
	struct { uint16_t flags, idx, ring[BQ_SIZE], used_event; } avail __attribute__((aligned(2)));
	struct { uint16_t flags, idx; struct { uint32_t id, len; } ring[BQ_SIZE]; uint16_t avail_event; } used __attribute__((aligned(4)));
};
static struct bq bq __attribute__((aligned(4096)));
static struct { uint32_t type, reserved; uint64_t sector; } bq_hdr[BQ_DEPTH];
static volatile uint8_t bq_status[BQ_DEPTH];
static uint8_t bq_buf[BQ_DEPTH][BQ_MAX_BYTES] __attribute__((aligned(4096)));

/* Spins 2^31 TSC cycles (under a second on current hosts) before a benchmark is timed, so that what
 * runs at a VMM's start-up besides the guest (device processes finishing theirs, JIT, GC) is over:
 * the benchmarks time a steady state, and start-up has a benchmark of its own. */
static void settle_vmm(void)
{
	for (uint64_t start = rdtsc(); rdtsc() - start < (1ull << 31);) __asm__ volatile("pause");
}

/* What the polling loop of blkq works on; it runs in ring 3 when asked, so it touches only memory
 * and the notify register. */
struct blkq_run {
	int write, random;
	uint32_t depth;
	uint64_t n, sectors, slots, next, rng, posted, done, failures, skipped;
	uint16_t avail, used;
	uintptr_t notify;
};

static void blkq_post(struct blkq_run *b, uint32_t r)
{
	uint64_t slot;
	if (b->random) {
		b->rng ^= b->rng << 13; b->rng ^= b->rng >> 7; b->rng ^= b->rng << 17;
		slot = b->rng % b->slots;
	} else {
		slot = b->next++ % b->slots;
	}
	bq_hdr[r].type = b->write ? BLK_T_OUT : BLK_T_IN;
	bq_hdr[r].sector = slot * b->sectors;
	bq_status[r] = 0xff;
	bq.avail.ring[b->avail % BQ_SIZE] = (uint16_t)(3 * r);
	b->avail++;
	b->posted++;
}

/* Publishes what was posted and notifies unless the device said it need not (VIRTQ_USED_F_NO_NOTIFY
 * while it is draining the ring anyway; virtio 1.2 §2.7.10), as Linux's driver does: the full
 * barrier orders the index store before the flags load, so a device that re-enables notifications
 * and then looks at the ring once more cannot miss this buffer. */
static void blkq_publish(struct blkq_run *b)
{
	barrier();
	bq.avail.idx = b->avail;
	barrier();
	if (*(volatile uint16_t *)&bq.used.flags & 1) { b->skipped++; return; }
	mmio_write16(b->notify, 0);
}

/* Posts `depth` requests with one notify, then re-posts each completion as the used ring shows it. */
static void blkq_loop(void *arg)
{
	struct blkq_run *b = arg;
	for (uint32_t r = 0; r < b->depth && b->posted < b->n; r++) blkq_post(b, r);
	blkq_publish(b);
	uint64_t spin = 0;
	while (b->done < b->n) {
		uint16_t now = *(volatile uint16_t *)&bq.used.idx;
		if (now == b->used) {
			if (++spin > 200000000) { b->failures += b->posted - b->done; return; }
			__asm__ volatile("pause");
			continue;
		}
		spin = 0;
		int reposted = 0;
		for (; b->used != now; b->used++) {
			uint32_t r = bq.used.ring[b->used % BQ_SIZE].id / 3;
			if (r >= b->depth || bq_status[r] != 0) b->failures++;
			b->done++;
			if (b->posted < b->n) { blkq_post(b, r); reposted = 1; }
		}
		if (reposted) blkq_publish(b);
	}
}

static uint8_t user_stack[16384] __attribute__((aligned(16)));

/*
 * blkq: `n` requests of `size` bytes (reads, or writes), sequential or random offsets, keeping
 * `depth` in flight: all posted with one notify, then each completion found by polling the used
 * ring is re-posted at once, with one notify per pass over the ring. The loop runs in ring 3 with
 * `ring3` (these machines emulate guest ring 0, which would hide the device behind the emulator).
 * It waits under a second, runs an untimed pass of `warm` requests, then `n` requests timed, and
 * prints TSC cycles per request of the timed pass.
 */
void bench_blk_depth(int write, int random, uint32_t size, uint32_t depth, uint64_t n, int ring3, uint64_t warm)
{
	const char *kind = "blkq";
	struct vdev d;
	if (depth < 1 || depth > BQ_DEPTH || size < 512 || size > BQ_MAX_BYTES || size % 512) { result(0, kind, "bad depth or size"); return; }
	if (!open_device(&d, 0x1042, kind)) return;
	/* VIRTIO_BLK_F_FLUSH, as Linux takes it: writes complete from the host's cache (write-back) */
	if (negotiate(&d, 1ull << 9) < 0) { result(0, kind, "feature negotiation failed"); return; }
	msix_setup(&d, 0);
	mmio_write16(d.common + MSIX_CFG, 0);
	memset(&bq, 0, sizeof(bq));
	mmio_write16(d.common + QSEL, 0);
	if (mmio_read16(d.common + QSIZEREG) < BQ_SIZE) { result(0, kind, "the queue is smaller than 128"); return; }
	mmio_write16(d.common + QSIZEREG, BQ_SIZE);
	mmio_write16(d.common + QMSIX, 0xffff); /* no interrupts: the driver polls */
	mmio_write32(d.common + QDESC, (uint32_t)(uintptr_t)bq.desc);
	mmio_write32(d.common + QDESC + 4, 0);
	mmio_write32(d.common + QDRV, (uint32_t)(uintptr_t)&bq.avail);
	mmio_write32(d.common + QDRV + 4, 0);
	mmio_write32(d.common + QDEV, (uint32_t)(uintptr_t)&bq.used);
	mmio_write32(d.common + QDEV + 4, 0);
	struct blkq_run b;
	memset(&b, 0, sizeof(b));
	b.notify = d.notify_base + mmio_read16(d.common + QNOFF) * d.notify_mult;
	mmio_write16(d.common + QEN, 1);
	driver_ok(&d);
	bq.avail.flags = 1; /* VIRTQ_AVAIL_F_NO_INTERRUPT */
	uint64_t capacity = (uint64_t)mmio_read32(d.device) | ((uint64_t)mmio_read32(d.device + 4) << 32);
	b.write = write;
	b.random = random;
	b.depth = depth;
	b.sectors = size / 512;
	b.slots = capacity / b.sectors;
	b.rng = 0x9e3779b97f4a7c15ull;
	for (uint32_t r = 0; r < depth; r++) {
		bq.desc[3 * r] = (struct desc){ (uint64_t)(uintptr_t)&bq_hdr[r], 16, DESC_F_NEXT, (uint16_t)(3 * r + 1) };
		bq.desc[3 * r + 1] = (struct desc){ (uint64_t)(uintptr_t)bq_buf[r], size, (uint16_t)(DESC_F_NEXT | (write ? 0 : DESC_F_WRITE)), (uint16_t)(3 * r + 2) };
		bq.desc[3 * r + 2] = (struct desc){ (uint64_t)(uintptr_t)&bq_status[r], 1, DESC_F_WRITE, 0 };
		if (write) memset(bq_buf[r], (int)(0x41 + r), size);
	}
	if (ring3) ring3_init();
	/* Timed once the VMM has settled (settle_vmm), after an untimed pass that warms what a VMM sets
	 * up lazily (JIT tiers, page faults, a device thread's placement), as a guest that keeps doing
	 * I/O finds it. */
	settle_vmm();
	uint64_t t0 = 0, t1 = 0, failures = 0;
	for (int pass = 0; pass < 2; pass++) {
		b.n = pass ? n : warm;
		b.posted = b.done = b.skipped = 0;
		t0 = rdtsc();
		if (ring3) run_in_ring3(blkq_loop, &b, user_stack + sizeof(user_stack));
		else blkq_loop(&b);
		t1 = rdtsc();
		failures += b.failures;
		b.failures = 0;
	}
	b.failures = failures;
	puts_("bench blkq "); puts_(write ? "write" : "read"); puts_(random ? " random" : " sequential");
	puts_(" bytes "); putu(size); puts_(" depth "); putu(depth); puts_(ring3 ? " ring 3" : " ring 0");
	puts_(" requests "); putu(b.done); puts_(" failures "); putu(b.failures);
	puts_(" tsc-per-request "); putu((t1 - t0) / (b.done ? b.done : 1));
	puts_(" notifies-skipped "); putu(b.skipped); puts_("\n");
	mmio_write8(d.common + STATUS, 0);
}

/*
 * Waits until every virtio device on bus 0 answers for itself: reading device_feature needs the
 * device (a jailed device's process must have started). Benchmarks call it first, so that nothing
 * still starting up competes with the loop they time.
 */
void settle_devices(void)
{
	for (unsigned slot = 1; slot < 32; slot++) {
		if ((pci_read32(slot, 0) & 0xffff) != VIRTIO_VENDOR) continue;
		struct vdev d;
		memset(&d, 0, sizeof(d));
		d.slot = (int)slot;
		if (!find_caps(&d)) continue;
		mmio_write32(d.common + DFSEL, 0);
		(void)mmio_read32(d.common + DF);
	}
}

/* ---- single-access benchmarks: what one exit of each kind costs, the same code under any VMM ---- */
struct access_run { uintptr_t address; uint64_t n; uint64_t sink; };

/* 16-bit reads of a virtio-pci common-configuration register (num_queues): served by the VMM */
static void common_reads(void *arg)
{
	struct access_run *a = arg;
	for (uint64_t i = 0; i < a->n; i++) a->sink += mmio_read16(a->address);
}

/*
 * acc: `n` accesses of one kind, timed with the TSC; prints cycles per access. `kind`:
 *   cfg     16-bit read of the virtio-rng's common-config num_queues (ring 3 with `ring3`)
 *   uart    one byte of COM1 output as Linux's 8250 driver writes it: LSR read, then THR write
 *   pcicfg  a PCI configuration read through 0xCF8/0xCFC (an address write and a data read)
 *   notify  a 16-bit virtio notify of an enabled rng queue (a KVM ioeventfd: no userspace at all)
 */
void bench_access(const char *kind, uint64_t n, int ring3)
{
	struct vdev d;
	struct access_run a = { 0, n, 0 };
	uint64_t t0 = 0, t1 = 0;
	settle_devices();
	/* Timed once the VMM has settled, as blkq is (see there): 2^31 TSC cycles first, then every loop
	 * twice, only the second timed: the first warms what a VMM sets up lazily (JIT tiers, page
	 * faults, a device thread's placement), as a long-running guest would find it. */
	settle_vmm();
	if (kind[0] == 'u') {
		for (int pass = 0; pass < 2; pass++) {
			t0 = rdtsc();
			for (uint64_t i = 0; i < n; i++) {
				while (!(inb(0x3f8 + 5) & 0x20)) ; /* LSR: THR empty */
				outb(0x3f8, (uint8_t)('a' + i % 26));
			}
			t1 = rdtsc();
			outb(0x3f8, '\n');
		}
	} else if (kind[0] == 'p') {
		for (int pass = 0; pass < 2; pass++) {
			t0 = rdtsc();
			for (uint64_t i = 0; i < n; i++) a.sink += pci_read32(0, 0);
			t1 = rdtsc();
		}
	} else {
		if (!open_device(&d, 0x1044, kind)) return;
		if (negotiate(&d, 0) < 0) { result(0, kind, "feature negotiation failed"); return; }
		if (kind[0] == 'c') {
			a.address = d.common + NUMQ;
			if (ring3) ring3_init();
			for (int pass = 0; pass < 2; pass++) {
				t0 = rdtsc();
				if (ring3) run_in_ring3(common_reads, &a, user_stack + sizeof(user_stack));
				else common_reads(&a);
				t1 = rdtsc();
			}
		} else {
			msix_setup(&d, 0);
			if (!queue_setup(&d, &rngq, 0, 0xffff)) { result(0, kind, "queue setup failed"); return; }
			driver_ok(&d);
			for (int pass = 0; pass < 2; pass++) {
				t0 = rdtsc();
				for (uint64_t i = 0; i < n; i++) mmio_write16(rngq.notify, 0);
				t1 = rdtsc();
			}
		}
		mmio_write8(d.common + STATUS, 0);
	}
	puts_("bench acc "); puts_(kind); puts_(ring3 ? " ring 3" : " ring 0"); puts_(" accesses "); putu(n);
	puts_(" sink "); putu(a.sink & 1); puts_(" tsc-per-access "); putu((t1 - t0) / (n ? n : 1)); puts_("\n");
}

/* ---- writer mode: sector after sector, each completion announced, until the host stops the VM ---- */
void writer(void)
{
	struct vdev d;
	memset(&d, 0, sizeof(d));
	d.slot = pci_find(VIRTIO_VENDOR, 0x1042);
	if (d.slot < 0 || !find_caps(&d) || negotiate(&d, 0) < 0) { puts_("writer: no disk\n"); return; }
	msix_setup(&d, 2);
	mmio_write16(d.common + MSIX_CFG, 0);
	if (!queue_setup(&d, &blkq, 0, 1)) return;
	driver_ok(&d);
	uint64_t capacity = (uint64_t)mmio_read32(d.device) | ((uint64_t)mmio_read32(d.device + 4) << 32);
	for (uint64_t i = 0; i < capacity; i++) {
		memset(blk_data, 0, 512);
		blk_data[0] = 'W';
		char digits[21]; int n = 20; digits[n] = 0; uint64_t v = i;
		do { digits[--n] = (char)('0' + v % 10); v /= 10; } while (v);
		memcpy(blk_data + 1, digits + n, (size_t)(20 - n));
		if (blk_request(BLK_T_OUT, i, blk_data, 512, 0, 0) != 0) { puts_("writer: write failed\n"); return; }
		puts_("wrote "); putu(i); puts_("\n");
	}
}

/* ---- serve mode: keep running, report what the host changes, count timer ticks ---- */
#define TICK_INDEX 11

static int serve_open(struct vdev *d, uint16_t id, unsigned first, uint64_t wanted)
{
	memset(d, 0, sizeof(*d));
	d->slot = pci_find(VIRTIO_VENDOR, id);
	if (d->slot < 0 || !find_caps(d) || negotiate(d, wanted) < 0) return 0;
	msix_setup(d, first);
	mmio_write16(d->common + MSIX_CFG, 0);
	driver_ok(d);
	return 1;
}

/* Never returns: prints "tick N" every 100 LAPIC timer ticks of about 1 ms (time the guest sees
 * pass), and what it finds after each configuration interrupt of the balloon and the first disk. */
void serve(void)
{
	struct vdev balloon, blk;
	int have_balloon = serve_open(&balloon, 0x1045, 12, 0);
	int have_blk = serve_open(&blk, 0x1042, 2, 0);
	puts_("serving\n");
	uint32_t seen_balloon = irq_counts[12], seen_blk = irq_counts[2], ticks = 0, seen_ticks = irq_counts[TICK_INDEX];
	mmio_write32(0xfee003e0, 0xb);
	mmio_write32(0xfee00320, (1u << 17) | (IRQ_VECTOR_BASE + TICK_INDEX)); /* periodic */
	mmio_write32(0xfee00380, 1000000);
	for (;;) {
		__asm__ volatile("sti; hlt; cli" ::: "memory");
		if (irq_counts[TICK_INDEX] != seen_ticks) {
			ticks += irq_counts[TICK_INDEX] - seen_ticks;
			seen_ticks = irq_counts[TICK_INDEX];
			if (ticks >= 100) { ticks -= 100; puts_("tick\n"); }
		}
		if (have_balloon && irq_counts[12] != seen_balloon) {
			seen_balloon = irq_counts[12];
			puts_("balloon target "); putu(mmio_read32(balloon.device)); puts_(" pages\n");
		}
		if (have_blk && irq_counts[2] != seen_blk) {
			seen_blk = irq_counts[2];
			uint64_t capacity = (uint64_t)mmio_read32(blk.device) | ((uint64_t)mmio_read32(blk.device + 4) << 32);
			puts_("disk capacity "); putu(capacity); puts_(" sectors\n");
		}
	}
}

int hostile_mode;

/* ---- virtio-fs (virtio 1.2 §5.11): FUSE requests on the request queue, to a directory the host shares ---- */
#define FUSE_LOOKUP 1
#define FUSE_OPEN 14
#define FUSE_READ 15
#define FUSE_WRITE 16
#define FUSE_RELEASE 18
#define FUSE_INIT 26
#define FUSE_CREATE 35
struct fuse_in_header { uint32_t len, opcode; uint64_t unique, nodeid; uint32_t uid, gid, pid; uint16_t total_extlen, padding; };
struct fuse_out_header { uint32_t len; int32_t error; uint64_t unique; };
static struct vq fs_hiprio, fs_req;
static uint8_t fs_in[512] __attribute__((aligned(8)));
static uint8_t fs_out[1024] __attribute__((aligned(8)));
static uint64_t fs_unique;
static const char fs_expected[] = "hello from the host over virtio-fs";
static const char fs_written[] = "written by the tsvm test guest over virtio-fs\n";

/* Sends one FUSE request (header, `arg`, then `data`) and waits for the answer in fs_out; returns the
 * FUSE error (0: success, negative errno) or 1 when the device did not answer. */
static int fuse_call(uint32_t opcode, uint64_t nodeid, const void *arg, uint32_t arglen, const void *data, uint32_t datalen, uint32_t outlen)
{
	struct fuse_in_header *h = (struct fuse_in_header *)fs_in;
	uint32_t len = sizeof(*h) + arglen + datalen;
	if (len > sizeof(fs_in) || sizeof(struct fuse_out_header) + outlen > sizeof(fs_out)) return 1;
	memset(h, 0, sizeof(*h));
	h->len = len;
	h->opcode = opcode;
	h->unique = ++fs_unique;
	h->nodeid = nodeid;
	memcpy(fs_in + sizeof(*h), arg, arglen);
	if (datalen) memcpy(fs_in + sizeof(*h) + arglen, data, datalen);
	memset(fs_out, 0, sizeof(fs_out));
	fs_req.desc[0] = (struct desc){ (uint64_t)(uintptr_t)fs_in, len, DESC_F_NEXT, 1 };
	fs_req.desc[1] = (struct desc){ (uint64_t)(uintptr_t)fs_out, (uint32_t)sizeof(struct fuse_out_header) + outlen, DESC_F_WRITE, 0 };
	uint32_t before = irq_counts[2];
	submit(&fs_req, 0);
	if (wait_used(&fs_req, 2, before) < (int64_t)sizeof(struct fuse_out_header)) return 1;
	const struct fuse_out_header *o = (const struct fuse_out_header *)fs_out;
	return o->unique == fs_unique ? o->error : 1;
}

static void check_fs(void)
{
	struct vdev d;
	memset(&d, 0, sizeof(d));
	d.slot = pci_find(VIRTIO_VENDOR, 0x105a);
	if (d.slot < 0) return;
	if (!find_caps(&d) || !d.device) { result(0, "virtio-fs", "capabilities missing"); return; }
	int ok = negotiate(&d, 0) >= 0;
	msix_setup(&d, 0);
	mmio_write16(d.common + MSIX_CFG, 0);
	ok &= queue_setup(&d, &fs_hiprio, 0, 1) && queue_setup(&d, &fs_req, 1, 2);
	driver_ok(&d);
	char tag[37];
	for (int i = 0; i < 36; i++) tag[i] = (char)mmio_read8(d.device + (uintptr_t)i);
	tag[36] = 0;
	puts_("     virtio-fs tag \""); puts_(tag); puts_("\"\n");
	uint32_t init_in[4] = { 7, 31, 0, 0 }; /* major, minor, max_readahead, flags */
	ok &= fuse_call(FUSE_INIT, 0, init_in, sizeof(init_in), 0, 0, 64) == 0 && ((uint32_t *)(fs_out + 16))[0] == 7;
	/* LOOKUP hello.txt in the root (node 1) -> its node; OPEN; READ */
	int looked = fuse_call(FUSE_LOOKUP, 1, "hello.txt", 10, 0, 0, 128);
	uint64_t node = *(uint64_t *)(fs_out + 16), size = *(uint64_t *)(fs_out + 16 + 40 + 8);
	uint32_t open_in[2] = { 0, 0 }; /* O_RDONLY */
	int opened = looked == 0 ? fuse_call(FUSE_OPEN, node, open_in, sizeof(open_in), 0, 0, 16) : 1;
	uint64_t fh = *(uint64_t *)(fs_out + 16);
	uint64_t read_in[5] = { fh, 0, 64, 0, 0 }; /* fh, offset, size | read_flags, lock_owner, flags | padding */
	int read = opened == 0 ? fuse_call(FUSE_READ, node, read_in, sizeof(read_in), 0, 0, 64) : 1;
	uint32_t got = ((struct fuse_out_header *)fs_out)->len - 16;
	char text[65];
	memcpy(text, fs_out + 16, got < 64 ? got : 64);
	text[got < 64 ? got : 64] = 0;
	puts_("     virtio-fs read "); putu(got); puts_(" of "); putu(size); puts_(" bytes \""); puts_(text); puts_("\"\n");
	ok &= read == 0 && got == sizeof(fs_expected) - 1 && size == got;
	for (unsigned i = 0; ok && i < got; i++) ok &= text[i] == fs_expected[i];
	uint64_t release_in[3] = { fh, 0, 0 };
	if (opened == 0) fuse_call(FUSE_RELEASE, node, release_in, sizeof(release_in), 0, 0, 0);
	/* CREATE from-guest.txt, WRITE, RELEASE: the host finds the file */
	uint32_t create_in[4] = { 0x41, 0644, 022, 0 }; /* O_WRONLY | O_CREAT, mode, umask, open_flags */
	char name[] = "from-guest.txt";
	uint8_t create_arg[sizeof(create_in) + sizeof(name)];
	memcpy(create_arg, create_in, sizeof(create_in));
	memcpy(create_arg + sizeof(create_in), name, sizeof(name));
	int created = fuse_call(FUSE_CREATE, 1, create_arg, sizeof(create_arg), 0, 0, 128 + 16);
	uint64_t new_node = *(uint64_t *)(fs_out + 16), new_fh = *(uint64_t *)(fs_out + 16 + 128);
	uint64_t write_in[5] = { new_fh, 0, sizeof(fs_written) - 1, 0, 0 };
	int wrote = created == 0 ? fuse_call(FUSE_WRITE, new_node, write_in, sizeof(write_in), fs_written, sizeof(fs_written) - 1, 8) : 1;
	ok &= wrote == 0 && *(uint32_t *)(fs_out + 16) == sizeof(fs_written) - 1;
	release_in[0] = new_fh;
	if (created == 0) fuse_call(FUSE_RELEASE, new_node, release_in, sizeof(release_in), 0, 0, 0);
	puts_("     virtio-fs create "); putu((uint64_t)(int64_t)created); puts_(", write "); putu((uint64_t)(int64_t)wrote); puts_("\n");
	result(ok && !(mmio_read8(d.common + STATUS) & STATUS_NEEDS_RESET), "virtio-fs", "tag, FUSE_INIT, LOOKUP, OPEN, READ of a host file; CREATE and WRITE of a new one");
	mmio_write8(d.common + STATUS, 0);
}


/* ---- virtio-vsock (virtio 1.2 §5.10): stream sockets to the host (CID 2) ---- */
#define VSOCK_OP_REQUEST 1
#define VSOCK_OP_RESPONSE 2
#define VSOCK_OP_RST 3
#define VSOCK_OP_SHUTDOWN 4
#define VSOCK_OP_RW 5
#define VSOCK_OP_CREDIT_UPDATE 6
#define VSOCK_OP_CREDIT_REQUEST 7
#define VSOCK_HOST_CID 2
#define VSOCK_RX_SIZE 65536
/* what the guest can hold for a connection: a quarter of what the host sends, so the host must wait
 * for credit updates (each receive buffer takes a whole packet of up to 64 KiB, as the device sends) */
#define VSOCK_GUEST_BUF (256 * 1024)
#define VSOCK_ECHO_PORT 1234
#define VSOCK_HOST_PORT 5000
#define VSOCK_DEAD_PORT 5001
#define VSOCK_TRANSFER (1024 * 1024)

struct vsock_hdr {
	uint64_t src_cid, dst_cid;
	uint32_t src_port, dst_port, len;
	uint16_t type, op;
	uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

static struct vq vs_rx, vs_tx, vs_ev;
static uint8_t vs_rxbuf[QSIZE][VSOCK_RX_SIZE] __attribute__((aligned(16)));
/* a packet the driver sends: up to 64 KiB of data, as Linux's driver sends at most */
#define VSOCK_TX_DATA (64 * 1024)
/* Control packets (and the echo) go out one at a time in descriptor 0, header and data together. */
static struct { struct vsock_hdr h; uint8_t data[VSOCK_TX_DATA]; } __attribute__((packed)) vs_txbuf;
/* The transfer's data packets go out as two descriptors each, the header and the data in place (as
 * Linux's driver sends them), up to VS_TX_SLOTS at a time: slot k uses descriptors 1 + 2k and 2 + 2k. */
#define VS_TX_SLOTS 3
static struct vsock_hdr vs_tx_hdr[VS_TX_SLOTS];
static uint8_t vs_tx_busy[VS_TX_SLOTS];
/* Credit updates the transfer sends without waiting for the device to take them, as Linux's driver
 * does: one at a time, in descriptor VS_CREDIT_DESC. */
#define VS_CREDIT_DESC (1 + 2 * VS_TX_SLOTS)
static struct vsock_hdr vs_credit_hdr;
static int vs_credit_busy;
static int vs_ctl_done;
/* the 1 MiB the guest sends, made before the transfer is timed */
static uint8_t vs_pattern_buf[1024 * 1024];
static uint8_t vs_evbuf[QSIZE][8];
static uint64_t vs_cid;
/* one connection at a time: the host's credit, and what the guest has received and consumed */
static struct { uint32_t local_port, peer_port, peer_buf, peer_fwd, tx_cnt, fwd_cnt; } vs_conn;
int vsock_mode;

/* The byte at `offset` of the 1 MiB the guest sends (the host test computes the same). */
static uint8_t vsock_pattern(uint32_t offset) { return (uint8_t)(offset * 7 + (offset >> 11)); }

/* While the data of tsvm.vsock=1 moves (vsock_transfer), the driver runs in ring 3, as the block
 * benchmark does, so that this host's emulated ring 0 does not set the pace: waits then poll the
 * rings against a TSC deadline instead of halting for interrupts (hlt is privileged), and nothing
 * prints (port I/O faults in ring 3). */
static int vs_in_ring3;
static uint64_t vs_tsc_per_ms = 3000000; /* measured against the LAPIC timer before ring 3 */

static int vs_wait(int (*done)(const void *), const void *arg, unsigned ms)
{
	if (!vs_in_ring3) return wait_until_ms(done, arg, ms);
	for (uint64_t start = rdtsc(); !done(arg);) {
		if (rdtsc() - start > vs_tsc_per_ms * ms) return 0;
		__asm__ volatile("pause");
	}
	return 1;
}

static int vs_never(const void *arg) { (void)arg; return 0; }

/* TSC ticks per millisecond, from 20 LAPIC timer ticks of about 1 ms (KVM's 1 GHz APIC bus). */
static void vs_calibrate_tsc(void)
{
	uint64_t start = rdtsc();
	wait_until_ms(vs_never, 0, 20);
	uint64_t per_ms = (rdtsc() - start) / 20;
	if (per_ms > 100000) vs_tsc_per_ms = per_ms; /* else keep the guess: no timer interrupts came */
}

/* Takes back what the device has used on the transmit queue: descriptor 0 (a control packet), or a
 * data packet's slot. */
static void vs_tx_reap(void)
{
	while (*(volatile uint16_t *)&vs_tx.used.idx != vs_tx.last_used) {
		uint32_t id = vs_tx.used.ring[vs_tx.last_used % QSIZE].id;
		vs_tx.last_used++;
		if (id == 0) vs_ctl_done = 1;
		else if (id == VS_CREDIT_DESC) vs_credit_busy = 0;
		else if ((id - 1) / 2 < VS_TX_SLOTS) vs_tx_busy[(id - 1) / 2] = 0;
	}
}

static int vs_ctl_sent(const void *arg) { (void)arg; vs_tx_reap(); return vs_ctl_done; }

static int vs_tx_idle(const void *arg)
{
	(void)arg;
	vs_tx_reap();
	for (int k = 0; k < VS_TX_SLOTS; k++) if (vs_tx_busy[k]) return 0;
	return !vs_credit_busy;
}

/* Receive buffers given back in ring 3 and not yet notified: the notification goes out once for
 * all of them, before the driver next waits for a packet. */
static int vs_rx_unkicked;

static void vs_post_rx(uint16_t i)
{
	vs_rx.desc[i] = (struct desc){ (uint64_t)(uintptr_t)vs_rxbuf[i], VSOCK_RX_SIZE, DESC_F_WRITE, 0 };
	if (vs_in_ring3) {
		vq_add(&vs_rx, i);
		vs_rx_unkicked = 1;
	} else {
		submit(&vs_rx, i);
	}
}

static void vs_kick_rx(void)
{
	if (!vs_rx_unkicked) return;
	vs_rx_unkicked = 0;
	vq_kick(&vs_rx);
}

/* Sends one packet on the current connection and waits for the device to take it. */
static int vs_send(uint16_t op, uint32_t flags, const uint8_t *data, uint32_t len)
{
	vs_txbuf.h = (struct vsock_hdr){ vs_cid, VSOCK_HOST_CID, vs_conn.local_port, vs_conn.peer_port, len, 1, op, flags,
	                                 VSOCK_GUEST_BUF, vs_conn.fwd_cnt };
	if (len) memcpy(vs_txbuf.data, data, len);
	vs_tx.desc[0] = (struct desc){ (uint64_t)(uintptr_t)&vs_txbuf, (uint32_t)sizeof(struct vsock_hdr) + len, 0, 0 };
	if (vs_in_ring3) {
		vs_ctl_done = 0;
		submit_polite(&vs_tx, 0);
		if (!vs_wait(vs_ctl_sent, 0, 30000)) return 0;
	} else {
		uint32_t before = irq_counts[6];
		submit(&vs_tx, 0);
		if (wait_used(&vs_tx, 6, before) < 0) return 0;
	}
	if (op == VSOCK_OP_RW) vs_conn.tx_cnt += len;
	return 1;
}

struct rx_wait { uint16_t last; };
static int vs_rx_ready(const void *arg) { (void)arg; return *(volatile uint16_t *)&vs_rx.used.idx != vs_rx.last_used; }

/* Receives the next packet into *h, leaving its payload in its receive buffer (*payload, *id) until
 * vs_recv_done gives the buffer back; waits up to `seconds`. Returns the payload length or -1. */
static int64_t vs_recv_begin(struct vsock_hdr *h, const uint8_t **payload, uint16_t *id_out, unsigned seconds)
{
	if (!vs_rx_ready(0)) vs_kick_rx(); /* the device may be waiting for the buffers given back */
	vs_wait(vs_rx_ready, 0, seconds * 1000);
	if (!vs_rx_ready(0)) return -1;
	uint32_t id = vs_rx.used.ring[vs_rx.last_used % QSIZE].id, len = vs_rx.used.ring[vs_rx.last_used % QSIZE].len;
	vs_rx.last_used++;
	if (id >= QSIZE || len < sizeof(struct vsock_hdr)) return -1;
	memcpy(h, vs_rxbuf[id], sizeof(*h));
	uint32_t n = len - (uint32_t)sizeof(struct vsock_hdr);
	if (n > h->len) n = h->len;
	*payload = vs_rxbuf[id] + sizeof(struct vsock_hdr);
	*id_out = (uint16_t)id;
	if (h->src_cid == VSOCK_HOST_CID && h->dst_port == vs_conn.local_port && h->src_port == vs_conn.peer_port) {
		vs_conn.peer_buf = h->buf_alloc;
		vs_conn.peer_fwd = h->fwd_cnt;
	}
	return n;
}

static void vs_recv_done(uint16_t id) { vs_post_rx(id); }

/* Receives the next packet into *h and data (up to VSOCK_RX_SIZE); waits up to `seconds`. Returns the payload length or -1. */
static int64_t vs_recv(struct vsock_hdr *h, uint8_t *data, unsigned seconds)
{
	const uint8_t *payload;
	uint16_t id;
	int64_t n = vs_recv_begin(h, &payload, &id, seconds);
	if (n < 0) return n;
	if (data && n) memcpy(data, payload, (size_t)n);
	vs_recv_done(id);
	return n;
}

static uint8_t vs_data[VSOCK_TX_DATA];

/* Like vs_recv, for the current connection only: a packet of another (the echo connection's
 * SHUTDOWN or RST arriving late, say) is set aside; a SHUTDOWN is answered with the RST that ends
 * that connection. Gives up after 64 foreign packets. */
static int vs_is_conn(const struct vsock_hdr *h)
{
	return h->src_cid == VSOCK_HOST_CID && h->dst_port == vs_conn.local_port && h->src_port == vs_conn.peer_port;
}

/* A packet of another connection: a SHUTDOWN gets the RST that ends it; anything else is dropped. */
static void vs_answer_foreign(const struct vsock_hdr *h)
{
	if (h->op != VSOCK_OP_SHUTDOWN) return;
	uint32_t local = vs_conn.local_port, peer = vs_conn.peer_port;
	vs_conn.local_port = h->dst_port;
	vs_conn.peer_port = h->src_port;
	vs_send(VSOCK_OP_RST, 0, 0, 0);
	vs_conn.local_port = local;
	vs_conn.peer_port = peer;
}

static int64_t vs_recv_conn(struct vsock_hdr *h, uint8_t *data, unsigned seconds)
{
	for (int foreign = 0; foreign < 64; foreign++) {
		int64_t n = vs_recv(h, data, seconds);
		if (n < 0) return n;
		if (vs_is_conn(h)) return n;
		vs_answer_foreign(h);
	}
	return -1;
}

/* Host -> guest: waits for a host program's request on VSOCK_ECHO_PORT, accepts it and echoes one message. */
static int vsock_echo(void)
{
	struct vsock_hdr h;
	puts_("     virtio-vsock listening on port 1234\n");
	for (;;) {
		int64_t n = vs_recv(&h, 0, 60);
		if (n < 0) { puts_("     virtio-vsock: no connection request from the host\n"); return 0; }
		if (h.op == VSOCK_OP_REQUEST && h.dst_port == VSOCK_ECHO_PORT) break;
	}
	vs_conn = (typeof(vs_conn)){ VSOCK_ECHO_PORT, h.src_port, h.buf_alloc, h.fwd_cnt, 0, 0 };
	if (!vs_send(VSOCK_OP_RESPONSE, 0, 0, 0)) return 0;
	for (;;) {
		int64_t n = vs_recv(&h, vs_data, 30);
		if (n < 0) return 0;
		if (h.op != VSOCK_OP_RW || h.dst_port != VSOCK_ECHO_PORT) continue;
		vs_conn.fwd_cnt += (uint32_t)n;
		puts_("     virtio-vsock echoing "); putu((uint64_t)n); puts_(" bytes\n");
		return vs_send(VSOCK_OP_RW, 0, vs_data, (uint32_t)n);
	}
}

/* What the host sent on the transfer connection so far: bytes, their checksum (vs_checksum), the
 * stream's last partial 32-bit word, and the fwd_cnt last reported. */
struct vs_inbound { uint32_t received, a, b, word, reported; };

/* A Fletcher-style checksum of the byte stream read as little-endian 32-bit words (the last one
 * padded with zeros): a = the sum of the words, b = the sum of the running values of a, both mod
 * 2^32. b weighs each word by how far from the end it is, so lost, repeated or reordered data shows.
 * Two additions per word: the guest reads every byte at about the speed of memory, so the benchmark
 * measures the transport, not the checksum. Packets may split words; `in->word` holds the part so far. */
typedef uint32_t __attribute__((aligned(1), may_alias)) vs_u32; /* a word at any address */
static void vs_checksum(struct vs_inbound *in, const uint8_t *p, uint32_t n)
{
	uint32_t a = in->a, b = in->b, at = in->received, i = 0;
	for (; i < n && (at + i) % 4 != 0; i++) {
		in->word |= (uint32_t)p[i] << (8 * ((at + i) % 4));
		if ((at + i) % 4 == 3) { a += in->word; b += a; in->word = 0; }
	}
	for (; i + 4 <= n; i += 4) {
		a += *(const vs_u32 *)(p + i);
		b += a;
	}
	for (; i < n; i++) in->word |= (uint32_t)p[i] << (8 * ((at + i) % 4));
	in->a = a;
	in->b = b;
}

/* The checksum of everything received: b in the high half, a in the low, the partial word counted. */
static uint64_t vs_checksum_value(const struct vs_inbound *in)
{
	uint32_t a = in->a, b = in->b;
	if (in->received % 4 != 0) { a += in->word; b += a; }
	return (uint64_t)b << 32 | a;
}

/* Tells the host what the guest has consumed (a CREDIT_UPDATE) without waiting for the device to
 * take the packet; when the last one is still in flight this one is left for later (the one in
 * flight already gives the host room, and the next wait or a CREDIT_REQUEST sends the rest). */
static void vs_post_credit(struct vs_inbound *in)
{
	vs_tx_reap();
	if (vs_credit_busy) return;
	vs_credit_hdr = (struct vsock_hdr){ vs_cid, VSOCK_HOST_CID, vs_conn.local_port, vs_conn.peer_port, 0, 1,
	                                    VSOCK_OP_CREDIT_UPDATE, 0, VSOCK_GUEST_BUF, vs_conn.fwd_cnt };
	vs_tx.desc[VS_CREDIT_DESC] = (struct desc){ (uint64_t)(uintptr_t)&vs_credit_hdr, (uint32_t)sizeof(struct vsock_hdr), 0, 0 };
	vs_credit_busy = 1;
	in->reported = vs_conn.fwd_cnt;
	vq_add(&vs_tx, VS_CREDIT_DESC);
	vq_kick(&vs_tx);
}
/* Takes one packet of the transfer connection the host sent (`n` payload bytes at `data`): data is
 * counted, with credit given back every quarter buffer (vs_post_credit), and a CREDIT_REQUEST is answered, wherever it
 * comes (while sending too: the host may start its answer before the last chunk is out, and a request
 * left unanswered then stalls both sides). Returns 0 when the connection broke. */
static int vs_take(const struct vsock_hdr *h, const uint8_t *data, int64_t n, struct vs_inbound *in)
{
	if (h->op == VSOCK_OP_RST) return 0;
	if (h->op == VSOCK_OP_CREDIT_REQUEST) return vs_send(VSOCK_OP_CREDIT_UPDATE, 0, 0, 0);
	if (h->op != VSOCK_OP_RW) return 1;
	vs_checksum(in, data, (uint32_t)n);
	in->received += (uint32_t)n;
	vs_conn.fwd_cnt += (uint32_t)n;
	if (vs_conn.fwd_cnt - in->reported >= VSOCK_GUEST_BUF / 4) vs_post_credit(in);
	return 1;
}

/* Whether vs_transfer_data has touched the receive buffers from ring 3 yet. */
static int vs_rx_touched_in_ring3;

/* The data phase of vsock_transfer, in ring 3: what it did, and why it stopped early (0: it did not). */
struct vs_transfer { uint32_t sent, waits; struct vs_inbound in; const char *failure; int shut; };

/* Receives the next packet, of this connection or another; one of this connection is taken in place
 * (vs_take), one of another answered (vs_answer_foreign). Returns 1 for a packet of this connection
 * (its header in *h), 0 for another's, -1 when none came or this connection broke. */
static int vs_recv_take(struct vsock_hdr *h, struct vs_inbound *in, unsigned seconds)
{
	const uint8_t *payload;
	uint16_t id;
	/* about to wait: the host hears of everything consumed so far first */
	if (!vs_rx_ready(0) && vs_conn.fwd_cnt != in->reported) vs_post_credit(in);
	int64_t n = vs_recv_begin(h, &payload, &id, seconds);
	if (n < 0) return -1;
	if (!vs_is_conn(h)) {
		vs_recv_done(id);
		vs_answer_foreign(h); /* the echo connection ending, say */
		return 0;
	}
	int ok = vs_take(h, payload, n, in);
	vs_recv_done(id);
	return ok ? 1 : -1;
}

/* A free data slot, or -1 when all are in flight. */
static int vs_free_slot(void)
{
	vs_tx_reap();
	for (int k = 0; k < VS_TX_SLOTS; k++) if (!vs_tx_busy[k]) return k;
	return -1;
}

static int vs_some_slot_free(const void *arg) { (void)arg; return vs_free_slot() >= 0; }

/* Makes `len` bytes at `data` (which stay put until the device has used them) available as one RW
 * packet in free slot `k`; the caller kicks once for the batch. */
static void vs_add_data(int k, const uint8_t *data, uint32_t len)
{
	uint16_t d = (uint16_t)(1 + 2 * k);
	vs_tx_hdr[k] = (struct vsock_hdr){ vs_cid, VSOCK_HOST_CID, vs_conn.local_port, vs_conn.peer_port, len, 1,
	                                   VSOCK_OP_RW, 0, VSOCK_GUEST_BUF, vs_conn.fwd_cnt };
	vs_tx.desc[d] = (struct desc){ (uint64_t)(uintptr_t)&vs_tx_hdr[k], (uint32_t)sizeof(struct vsock_hdr), DESC_F_NEXT, (uint16_t)(d + 1) };
	vs_tx.desc[d + 1] = (struct desc){ (uint64_t)(uintptr_t)data, len, 0, 0 };
	vs_tx_busy[k] = 1;
	vq_add(&vs_tx, d);
	vs_conn.tx_cnt += len;
}

/* Sends 1 MiB within the host's credit, several packets in flight, taking what the host sends
 * meanwhile; then takes the host's 1 MiB in place, giving credit back as it goes, and shuts the
 * connection down (so the host's clock stops when the data is in, not after the console lines). */
static void vs_transfer_data(void *arg)
{
	struct vs_transfer *t = arg;
	struct vsock_hdr h;
	/* The receive buffers were touched in ring 0 (check_vsock), but ring 3 runs on page tables of
	 * its own (ring3_init), and on a host that shadows the guest's page tables (kvm_pvm, here) the
	 * first access to each page through new ones is an exit to build its mapping: reading a byte of
	 * each of the 128 pages took ~1.16M TSC cycles the first time and ~6k the next, costs that fell in
	 * the first exchange's host-to-guest MiB, for the guest's paging, not the transport. Touch each
	 * page once from here too, before any data moves, as a guest that has run a while has. */
	if (!vs_rx_touched_in_ring3) {
		for (uint16_t i = 0; i < QSIZE; i++)
			for (uint32_t at = 0; at < VSOCK_RX_SIZE; at += 4096) (void)((volatile const uint8_t *)vs_rxbuf[i])[at];
		vs_rx_touched_in_ring3 = 1;
	}
	while (t->sent < VSOCK_TRANSFER) {
		uint32_t credit = vs_conn.peer_buf - (vs_conn.tx_cnt - vs_conn.peer_fwd);
		if (credit == 0 || credit > vs_conn.peer_buf) {
			/* out of credit: the host says when it has taken more (a CREDIT_UPDATE, or any packet) */
			t->waits++;
			if (vs_recv_take(&h, &t->in, 30) < 0) { t->failure = "no credit came back"; return; }
			continue;
		}
		if (vs_free_slot() < 0 && !vs_wait(vs_some_slot_free, 0, 30000)) { t->failure = "a packet was not taken"; return; }
		/* as many packets as slots and credit allow, then one notification for them */
		for (int k = vs_free_slot(); k >= 0 && t->sent < VSOCK_TRANSFER; k = vs_free_slot()) {
			credit = vs_conn.peer_buf - (vs_conn.tx_cnt - vs_conn.peer_fwd);
			if (credit == 0 || credit > vs_conn.peer_buf) break;
			uint32_t n = VSOCK_TX_DATA;
			if (n > credit) n = credit;
			if (n > VSOCK_TRANSFER - t->sent) n = VSOCK_TRANSFER - t->sent;
			vs_add_data(k, vs_pattern_buf + t->sent, n);
			t->sent += n;
		}
		vq_kick(&vs_tx);
		while (vs_rx_ready(0)) { /* credit updates (and perhaps the host's first data) that came meanwhile */
			if (vs_recv_take(&h, &t->in, 1) < 0) { t->failure = "the connection broke while sending"; return; }
		}
	}
	if (!vs_wait(vs_tx_idle, 0, 30000)) { t->failure = "the last packets were not taken"; return; }
	/* the host answers with 1 MiB of its own; the guest consumes it and gives credit back as it goes */
	while (t->in.received < VSOCK_TRANSFER) {
		if (vs_recv_take(&h, &t->in, 30) < 0) { t->failure = "the host's data stopped"; return; }
	}
	vs_kick_rx(); /* ring 0 waits for the host's RST with interrupts, not by asking */
	t->shut = vs_send(VSOCK_OP_SHUTDOWN, 3, 0, 0);
}

/* Guest -> host, exchange `k` (from 0) of tsvm.vsock=N: connects from port 40000 + k to
 * VSOCK_HOST_PORT, sends 1 MiB within the host's credit, then reads 1 MiB back; the data moves in
 * ring 3 (vs_transfer_data). The first exchange sets up what all of them use. */
static int vsock_transfer(int k)
{
	struct vsock_hdr h;
	if (k == 0) {
		vs_calibrate_tsc(); /* before connecting: the host times the transfer from its accept */
		for (uint32_t i = 0; i < VSOCK_TRANSFER; i++) vs_pattern_buf[i] = vsock_pattern(i);
		ring3_init();
	}
	vs_conn = (typeof(vs_conn)){ 40000 + (uint32_t)k, VSOCK_HOST_PORT, 0, 0, 0, 0 };
	if (!vs_send(VSOCK_OP_REQUEST, 0, 0, 0)) return 0;
	if (vs_recv_conn(&h, 0, 30) < 0 || h.op != VSOCK_OP_RESPONSE) { puts_("     virtio-vsock: the host refused port 5000\n"); return 0; }
	struct vs_transfer t;
	memset(&t, 0, sizeof(t));
	/* A driver that polls asks for no interrupts (VIRTQ_AVAIL_F_NO_INTERRUPT; with interrupts off in
	 * ring 3 each one would only wait, pending, for ring 0). */
	vs_tx.avail.flags = vs_rx.avail.flags = 1;
	vs_in_ring3 = 1;
	run_in_ring3(vs_transfer_data, &t, user_stack + sizeof(user_stack));
	vs_in_ring3 = 0;
	vs_tx.avail.flags = vs_rx.avail.flags = 0;
	puts_("     virtio-vsock sent "); putu(t.sent); puts_(" bytes, waited for credit "); putu(t.waits); puts_(" times\n");
	if (t.failure) { puts_("     virtio-vsock: "); puts_(t.failure); puts_("\n"); return 0; }
	puts_("     virtio-vsock received "); putu(t.in.received); puts_(" bytes checksum "); putx(vs_checksum_value(&t.in)); puts_("\n");
	if (!t.shut) return 0;
	while (vs_recv_conn(&h, 0, 10) >= 0) if (h.op == VSOCK_OP_RST) return 1;
	return 0;
}

static void check_vsock(void)
{
	struct vdev d;
	memset(&d, 0, sizeof(d));
	d.slot = pci_find(VIRTIO_VENDOR, 0x1040 + 19);
	if (d.slot < 0) return; /* no vsock device: nothing to check */
	if (!find_caps(&d)) { result(0, "virtio-vsock", "common/notify/ISR capabilities or MSI-X missing"); return; }
	int ok = negotiate(&d, 0) >= 0;
	msix_setup(&d, 4);
	mmio_write16(d.common + MSIX_CFG, 0);
	ok = ok && queue_setup(&d, &vs_rx, 0, 1) && queue_setup(&d, &vs_tx, 1, 2) && queue_setup(&d, &vs_ev, 2, 3);
	vs_cid = (uint64_t)mmio_read32(d.device) | ((uint64_t)mmio_read32(d.device + 4) << 32);
	driver_ok(&d);
	/* The transfer's clock runs while the device writes into these buffers: touch each page once
	 * first, as a guest that has run a while has touched the buffers it recycles. Otherwise the
	 * device's first write to each page allocates and zeroes it in the host, a cost of a fresh VM,
	 * not of the transport: the vsock device's CPU time over the host's 1 MiB was 1.7-2.8 ms with
	 * untouched buffers and 1.2-1.7 ms with touched ones (five rounds each). */
	for (uint16_t i = 0; vsock_mode && i < QSIZE; i++)
		for (uint32_t at = 0; at < VSOCK_RX_SIZE; at += 4096) ((volatile uint8_t *)vs_rxbuf[i])[at] = 0;
	for (uint16_t i = 0; ok && i < QSIZE; i++) {
		vs_post_rx(i);
		vs_ev.desc[i] = (struct desc){ (uint64_t)(uintptr_t)vs_evbuf[i], 8, DESC_F_WRITE, 0 };
		submit(&vs_ev, i);
	}
	puts_("     virtio-vsock cid "); putu(vs_cid); puts_("\n");
	/* A port nobody serves on the host is refused with a reset. */
	struct vsock_hdr h;
	vs_conn = (typeof(vs_conn)){ 40001, VSOCK_DEAD_PORT, 0, 0, 0, 0 };
	int refused = ok && vs_send(VSOCK_OP_REQUEST, 0, 0, 0) && vs_recv(&h, 0, 10) >= 0 && h.op == VSOCK_OP_RST &&
	              h.dst_port == 40001 && h.src_port == VSOCK_DEAD_PORT;
	int exchanged = 1;
	if (vsock_mode) exchanged = vsock_echo();
	for (int k = 0; exchanged && k < vsock_mode; k++) exchanged = vsock_transfer(k);
	result(ok && vs_cid > 2 && refused && exchanged && !(mmio_read8(d.common + STATUS) & STATUS_NEEDS_RESET), "virtio-vsock",
	       vsock_mode ? "CID from config space; reset for a port nobody serves; a host connection echoed; 1 MiB each way within credit"
	                  : "CID from config space; a connection to a port nobody serves is reset");
	mmio_write8(d.common + STATUS, 0);
}

int hostile_bars_mode;

void check_virtio(void)
{
	if (hostile_bars_mode) check_hostile_bars();
	if (hostile_mode) check_hostile();
	check_console();
	check_net();
	check_balloon();
	check_rng();
	for (unsigned i = 0; i < 4; i++) check_blk(i);
	check_fs();
	check_vsock();
}
