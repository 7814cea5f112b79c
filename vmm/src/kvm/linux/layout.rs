//! Where a Linux guest finds things in guest-physical memory and port space, and the e820 map
//! the VMM hands it.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BIOS data area (usable RAM to Linux)
//! 0x0000_1000  GDT                      0x0000_2000  TSS (zeroed)
//! 0x0000_7000  zero page (boot_params)  0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, PDPT, 4 page directories (identity map of the first 4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA (not RAM in the e820 map)
//! 0x000e_0000  ACPI tables: RSDP first (where Linux's BIOS-area scan looks), then the others
//! 0x0010_0000  kernel (bzImage protected-mode part or vmlinux segments), then RAM to the end;
//!              the initrd at the top of RAM, as the boot protocol asks
//! 0xd000_0000  MMIO window (crate::abi): virtio-mmio slots from 0xd010_0000
//! 0xfec0_0000  IOAPIC (in-kernel)       0xfee0_0000  local APIC (in-kernel)
//! ```
//!
//! Everything below 1 MiB except the EBDA and the ACPI area is usable RAM in the e820 map: Linux
//! copies the zero page and the command line before it uses low memory, and builds its own page
//! tables and GDT.

use std::ops::Range;

use crate::abi::MMIO_BASE;

/// Guest-physical address of the GDT.
pub const GDT_ADDR: u64 = 0x1000;
/// Guest-physical address of the (zeroed) TSS the task register points at on entry.
pub const TSS_ADDR: u64 = 0x2000;
/// Size of a 64-bit TSS.
pub const TSS_LEN: u64 = 0x68;
/// Guest-physical address of the zero page (`struct boot_params`); `rsi` at entry.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer (the kernel switches to its own stack at once).
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Guest-physical address of the PML4 (CR3 at entry).
pub const PML4_ADDR: u64 = 0x9000;
/// Guest-physical address of the page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// The page directories, one per identity-mapped GiB.
pub const PD_ADDR: u64 = 0xb000;
/// GiB identity-mapped at entry: all of RAM (below [`MMIO_BASE`]), the MMIO window and the
/// APICs.
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// Guest-physical address of the kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Most bytes the VMM places there (the kernel's own limit is usually lower: `cmdline_size`).
pub const CMDLINE_MAX_BYTES: usize = 0x1_0000;
/// Start of the extended BIOS data area: usable RAM ends here below 1 MiB.
pub const EBDA_START: u64 = 0x9_fc00;
/// Where the ACPI tables live; the RSDP comes first, 16-byte aligned, where Linux's scan of the
/// BIOS area (0xe0000-0xfffff) finds it even without `boot_params.acpi_rsdp_addr`.
pub const ACPI_AREA: Range<u64> = 0xe_0000..0x10_0000;
/// Start of high memory: where the kernel is loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Where a relocatable kernel's decompressor puts the kernel when nothing else is asked
/// (`CONFIG_PHYSICAL_START`, `pref_address` in the setup header); used when the header is older.
pub const DEFAULT_KERNEL_PREF_ADDR: u64 = 0x100_0000;
/// The in-kernel IOAPIC's base address (KVM's, and every PC's, default).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Number of IOAPIC input pins (KVM's in-kernel IOAPIC): the GSIs 0..24.
pub const IOAPIC_PINS: u32 = 24;
/// The local APIC's base address.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// The first serial port's I/O base (COM1, ttyS0).
pub const COM1_PORT: u16 = 0x3f8;
/// Its interrupt (ISA IRQ 4, as every PC has it).
pub const COM1_IRQ: u32 = 4;
/// The ACPI sleep control register (hardware-reduced ACPI, FADT `SLEEP_CONTROL_REG`): the guest
/// writes `SLP_TYP << 2 | SLP_EN` to enter a sleep state; S5 powers the VM off.
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// The ACPI sleep status register (FADT `SLEEP_STATUS_REG`).
pub const SLEEP_STATUS_PORT: u16 = 0x601;

/// An e820 memory type, as Linux names them in `BIOS-e820:` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    /// Type 1: usable RAM.
    Ram,
    /// Type 2: reserved.
    Reserved,
    /// Type 3: ACPI tables (reclaimable once parsed).
    Acpi,
}

impl E820Kind {
    /// The type number in the e820 table.
    pub fn code(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
            E820Kind::Acpi => 3,
        }
    }

    /// How Linux prints the type (`e820_print_type` in arch/x86/kernel/e820.c).
    pub fn linux_name(self) -> &'static str {
        match self {
            E820Kind::Ram => "usable",
            E820Kind::Reserved => "reserved",
            E820Kind::Acpi => "ACPI data",
        }
    }
}

/// One entry of the e820 map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Memory type.
    pub kind: E820Kind,
}

impl E820Entry {
    /// The line Linux prints for this entry at boot, after `BIOS-e820: `
    /// (`[mem 0x%016llx-0x%016llx] <type>`).
    pub fn linux_line(&self) -> String {
        format!(
            "[mem {:#018x}-{:#018x}] {}",
            self.addr,
            self.addr + self.size - 1,
            self.kind.linux_name()
        )
    }
}

/// The e820 map of a Linux guest with `mem_bytes` of RAM from address 0 (`mem_bytes` is at
/// least [`HIMEM_START`] and at most [`MMIO_BASE`]): low RAM up to the EBDA, the ACPI area, and
/// RAM from 1 MiB to the end.
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    let end = mem_bytes.clamp(HIMEM_START, MMIO_BASE);
    vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: ACPI_AREA.start,
            size: ACPI_AREA.end - ACPI_AREA.start,
            kind: E820Kind::Acpi,
        },
        E820Entry {
            addr: HIMEM_START,
            size: end - HIMEM_START,
            kind: E820Kind::Ram,
        },
    ]
    .into_iter()
    .filter(|e| e.size > 0)
    .collect()
}

/// Where the initrd goes: as high as possible (page-aligned) below both the end of RAM and the
/// kernel's `initrd_addr_max`, and not below `lowest` (the end of what the kernel occupies while
/// it boots). `None` when it does not fit.
pub fn initrd_placement(
    mem_bytes: u64,
    len_bytes: u64,
    initrd_addr_max: u64,
    lowest: u64,
) -> Option<Range<u64>> {
    let top = mem_bytes.min(initrd_addr_max.saturating_add(1));
    let start = top.checked_sub(len_bytes)? & !0xfff;
    (start >= lowest && len_bytes > 0).then_some(start..start + len_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_low_ram_acpi_and_high_ram_without_overlap() {
        let map = e820_map(256 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[0].linux_line(),
            "[mem 0x0000000000000000-0x000000000009fbff] usable"
        );
        assert_eq!(
            map[1].linux_line(),
            "[mem 0x00000000000e0000-0x00000000000fffff] ACPI data"
        );
        assert_eq!(
            map[2].linux_line(),
            "[mem 0x0000000000100000-0x000000000fffffff] usable"
        );
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr);
        }
        // The boot structures sit in low RAM, below the EBDA, and clear of each other.
        let mut used = [
            GDT_ADDR..GDT_ADDR + 0x100,
            TSS_ADDR..TSS_ADDR + TSS_LEN,
            ZERO_PAGE_ADDR..ZERO_PAGE_ADDR + 0x1000,
            PML4_ADDR..PD_ADDR + IDENTITY_MAPPED_GIB * 0x1000,
            CMDLINE_ADDR..CMDLINE_ADDR + CMDLINE_MAX_BYTES as u64,
        ];
        used.sort_by_key(|r| r.start);
        for w in used.windows(2) {
            assert!(w[0].end <= w[1].start, "{w:?}");
        }
        assert!(used.last().unwrap().end <= EBDA_START);
        const {
            assert!(BOOT_STACK_TOP > ZERO_PAGE_ADDR + 0x1000 && BOOT_STACK_TOP < PML4_ADDR);
            assert!(IDENTITY_MAPPED_GIB << 30 > LAPIC_ADDR);
        }
    }

    #[test]
    fn initrd_goes_to_the_top_page_aligned_or_nowhere() {
        let mem = 256 << 20;
        let r = initrd_placement(mem, 0x1234, u64::from(u32::MAX >> 1), 0).unwrap();
        assert_eq!(r.start % 0x1000, 0);
        assert_eq!(r.start, (mem - 0x1234) & !0xfff);
        assert_eq!(r.end - r.start, 0x1234);
        // Capped by initrd_addr_max.
        let r = initrd_placement(mem, 0x1000, 0x7ff_ffff, 0).unwrap();
        assert_eq!(r, 0x7fff000..0x800_0000);
        // Too large, or would overlap the kernel.
        assert_eq!(initrd_placement(mem, mem + 1, u64::MAX, 0), None);
        assert_eq!(
            initrd_placement(mem, 0x10_0000, u64::MAX, mem - 0x8_0000),
            None
        );
        assert_eq!(initrd_placement(mem, 0, u64::MAX, 0), None);
        assert_eq!(
            initrd_placement(mem, 1, u64::MAX, 0).unwrap().start,
            mem - 0x1000
        );
    }
}
