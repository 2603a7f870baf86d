/* pci.c - PCI configuration mechanism #1 and the bus 0 scan. */
#include "guest.h"

static uint32_t address(unsigned slot, unsigned offset) { return 0x80000000u | (slot << 11) | (offset & 0xfc); }

uint32_t pci_read32(unsigned slot, unsigned offset) { outl(0xcf8, address(slot, offset)); return inl(0xcfc); }
void pci_write32(unsigned slot, unsigned offset, uint32_t value) { outl(0xcf8, address(slot, offset)); outl(0xcfc, value); }
uint16_t pci_read16(unsigned slot, unsigned offset) { return (uint16_t)(pci_read32(slot, offset) >> ((offset & 2) * 8)); }
uint8_t pci_read8(unsigned slot, unsigned offset) { return (uint8_t)(pci_read32(slot, offset) >> ((offset & 3) * 8)); }

void pci_write16(unsigned slot, unsigned offset, uint16_t value)
{
	/* a word write through the data port's lane, as drivers do */
	outl(0xcf8, address(slot, offset));
	__asm__ volatile("outw %0, %1" ::"a"(value), "Nd"((uint16_t)(0xcfc + (offset & 2))));
}

int pci_find_nth(uint16_t vendor, uint16_t device, unsigned nth)
{
	for (unsigned slot = 0; slot < 32; slot++) {
		uint32_t id = pci_read32(slot, 0);
		if ((id & 0xffff) == vendor && (id >> 16) == device && nth-- == 0)
			return (int)slot;
	}
	return -1;
}

int pci_find(uint16_t vendor, uint16_t device) { return pci_find_nth(vendor, device, 0); }

void check_pci(void)
{
	unsigned count = 0;
	for (unsigned slot = 0; slot < 32; slot++) {
		uint32_t id = pci_read32(slot, 0);
		if (id == 0xffffffff)
			continue;
		count++;
		uint32_t class = pci_read32(slot, 8) >> 8;
		puts_("     pci 00:"); putx(slot); puts_(".0 "); putx(id & 0xffff); puts_(":"); putx(id >> 16);
		puts_(" class "); putx(class); puts_("\n");
	}
	/* sizing BAR 0 of the first device after the bridge: all ones in, size mask out, address restored */
	int sized = 1;
	if (pci_read32(1, 0) != 0xffffffff) {
		uint16_t cmd = pci_read16(1, 4);
		pci_write16(1, 4, (uint16_t)(cmd & ~2));
		uint32_t bar = pci_read32(1, 0x10);
		pci_write32(1, 0x10, 0xffffffff);
		uint32_t mask = pci_read32(1, 0x10);
		pci_write32(1, 0x10, bar);
		pci_write16(1, 4, cmd);
		sized = (mask & 0xfffffff0) != 0 && ((~(mask & 0xfffffff0) + 1) & ~(mask & 0xfffffff0)) == 0 && pci_read32(1, 0x10) == bar;
		puts_("     pci 00:01.0 BAR0 "); putx(bar & ~0xfu); puts_(" size "); putx(~(mask & 0xfffffff0u) + 1); puts_("\n");
	}
	uint32_t bridge = pci_read32(0, 0), bridge_class = pci_read32(0, 8) >> 8;
	result(bridge == 0x12378086 && (bridge_class >> 8) == 0x0600 && sized && pci_read32(31, 0) == 0xffffffff && count >= 1,
	       "pci", "host bridge at 00:00.0, absent slots read all ones, BAR sizing");
}
