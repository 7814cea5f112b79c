//! x86-64 CPU set-up for kernel-less payloads entered directly in ring 3, 64-bit mode.
//!
//! This is the set-up ARCHITECTURE.md ("Where guests run") records as working under the nested
//! `kvm-pvm` KVM of the development hosts: an
//! identity map with the user bit set on every entry, 64-bit code and data segments of DPL 3,
//! a task register, `EFER.LME|LMA`, `CR0.PG|PE|MP|NE`, `CR4.PAE|OSFXSR|OSXMMEXCPT`, interrupts
//! off, no IDT (so any guest exception escalates to a triple fault, which KVM reports as
//! `KVM_EXIT_SHUTDOWN`), and `rsp` 16-byte aligned minus 8 at entry.
//!
//! Boot structures live in the first pages of guest RAM, below
//! [`crate::abi::PAYLOAD_LOAD_ADDR`].

use std::collections::BTreeMap;
use std::ops::Range;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::abi::PAYLOAD_LOAD_ADDR;
use crate::error::{Error, Result};

/// Guest-physical address of the GDT.
pub const GDT_ADDR: u64 = 0x1000;
/// Guest-physical address of the 64-bit TSS.
pub const TSS_ADDR: u64 = 0x2000;
/// Guest-physical address of the PML4 (the value of CR3).
pub const PML4_ADDR: u64 = 0x3000;
/// Guest-physical address of the single page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0x4000;
/// Page directories (one per mapped GiB) are allocated from here up to `PAYLOAD_LOAD_ADDR`.
pub const PD_AREA: Range<u64> = 0x5000..PAYLOAD_LOAD_ADDR;

/// Selector of the ring-3 64-bit code segment (GDT index 6, RPL 3), as Linux's `__USER_CS`.
pub const USER_CS: u16 = 0x33;
/// Selector of the ring-3 data/stack segment (GDT index 5, RPL 3), as Linux's `__USER_DS`.
pub const USER_DS: u16 = 0x2b;
/// Selector of the TSS (GDT indices 7 and 8: a system descriptor is 16 bytes).
pub const TSS_SEL: u16 = 0x38;
const GDT_ENTRIES: usize = 9;
const TSS_LEN: u64 = 0x68;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED1: u64 = 1 << 1;

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_HUGE: u64 = 1 << 7;
const HUGE_PAGE: u64 = 2 << 20;
const GIB: u64 = 1 << 30;
/// One PDPT covers the first 512 GiB of guest-physical space: the limit of what can be mapped.
pub const MAPPABLE_LIMIT: u64 = 512 * GIB;

fn segment(selector: u16, type_: u8, long: bool, s: bool, base: u64, limit: u32) -> kvm_segment {
    kvm_segment {
        base,
        limit,
        selector,
        type_,
        present: 1,
        dpl: (selector & 3) as u8,
        db: u8::from(s && !long),
        s: u8::from(s),
        l: u8::from(long),
        g: u8::from(s),
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The ring-3 code segment.
pub fn user_code_segment() -> kvm_segment {
    segment(USER_CS, 0xb, true, true, 0, 0xffff_ffff)
}

/// The ring-3 data and stack segment.
pub fn user_data_segment() -> kvm_segment {
    segment(USER_DS, 0x3, false, true, 0, 0xffff_ffff)
}

/// The task register's segment (a busy 64-bit TSS).
pub fn task_segment() -> kvm_segment {
    segment(TSS_SEL, 0xb, false, false, TSS_ADDR, (TSS_LEN - 1) as u32)
}

/// Encodes the low 8 bytes of the GDT descriptor for `seg`.
pub(crate) fn descriptor(seg: &kvm_segment) -> u64 {
    let limit = u64::from(if seg.g != 0 {
        seg.limit >> 12
    } else {
        seg.limit
    });
    let base = seg.base & 0xffff_ffff;
    (limit & 0xffff)
        | ((base & 0x00ff_ffff) << 16)
        | (u64::from(seg.type_) << 40)
        | (u64::from(seg.s) << 44)
        | (u64::from(seg.dpl) << 45)
        | (u64::from(seg.present) << 47)
        | (((limit >> 16) & 0xf) << 48)
        | (u64::from(seg.avl) << 52)
        | (u64::from(seg.l) << 53)
        | (u64::from(seg.db) << 54)
        | (u64::from(seg.g) << 55)
        | ((base >> 24) << 56)
}

/// Writes `words` little-endian at guest address `at`.
pub(crate) fn write_u64s(mem: &GuestMemoryMmap, at: u64, words: &[u64]) -> Result<()> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(at))
        .map_err(|e| Error::Memory(format!("writing boot structures at {at:#x}: {e}")))
}

/// Writes the GDT, the TSS and identity-mapping page tables covering `mapped` (each range is
/// rounded out to 2 MiB pages; every entry is present, writable and user-accessible).
pub fn write_boot_structures(mem: &GuestMemoryMmap, mapped: &[Range<u64>]) -> Result<()> {
    let mut gdt = [0u64; GDT_ENTRIES];
    gdt[1] = 0x00af_9b00_0000_ffff; // ring-0 64-bit code, unused by payloads
    gdt[2] = 0x00cf_9300_0000_ffff; // ring-0 data, unused by payloads
    gdt[usize::from(USER_DS >> 3)] = descriptor(&user_data_segment());
    gdt[usize::from(USER_CS >> 3)] = descriptor(&user_code_segment());
    let tss = task_segment();
    gdt[usize::from(TSS_SEL >> 3)] = descriptor(&tss);
    gdt[usize::from(TSS_SEL >> 3) + 1] = tss.base >> 32;
    write_u64s(mem, GDT_ADDR, &gdt)?;

    // TSS: all zero except the I/O map base, placed past the limit (no I/O permission bitmap).
    let mut tss_bytes = [0u8; TSS_LEN as usize];
    tss_bytes[0x66..0x68].copy_from_slice(&(TSS_LEN as u16).to_le_bytes());
    mem.write_slice(&tss_bytes, GuestAddress(TSS_ADDR))
        .map_err(|e| Error::Memory(format!("writing the TSS: {e}")))?;

    let table_flags = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
    // Page directory contents per GiB index.
    let mut dirs: BTreeMap<u64, Box<[u64; 512]>> = BTreeMap::new();
    for range in mapped {
        if range.end > MAPPABLE_LIMIT || range.start > range.end {
            return Err(Error::Config(format!(
                "cannot map [{:#x}, {:#x}): only the first {} GiB can be mapped",
                range.start,
                range.end,
                MAPPABLE_LIMIT / GIB
            )));
        }
        let mut page = range.start & !(HUGE_PAGE - 1);
        while page < range.end {
            let dir = dirs.entry(page / GIB).or_insert_with(|| Box::new([0; 512]));
            dir[((page % GIB) / HUGE_PAGE) as usize] = page | table_flags | PTE_HUGE;
            page += HUGE_PAGE;
        }
    }
    let mut pdpt = [0u64; 512];
    let mut next_pd = PD_AREA.start;
    for (gib, dir) in &dirs {
        if next_pd + 0x1000 > PD_AREA.end {
            return Err(Error::Config(
                "too many page directories for the boot area".into(),
            ));
        }
        write_u64s(mem, next_pd, dir.as_slice())?;
        pdpt[*gib as usize] = next_pd | table_flags;
        next_pd += 0x1000;
    }
    write_u64s(mem, PDPT_ADDR, &pdpt)?;
    let mut pml4 = [0u64; 512];
    pml4[0] = PDPT_ADDR | table_flags;
    write_u64s(mem, PML4_ADDR, &pml4)
}

/// Sets the special registers of a vCPU for ring-3 64-bit execution over the boot structures
/// written by [`write_boot_structures`]. `sregs` should come from `KVM_GET_SREGS` so that fields
/// this function does not own (APIC base, interrupt bitmap) keep their values.
pub fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let data = user_data_segment();
    sregs.cs = user_code_segment();
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = task_segment();
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT_ENTRIES * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_NE | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

/// General registers at payload entry: `rip` = `entry`, `rsp` = `stack_top - 8` (`stack_top`
/// must be 16-byte aligned), `rdi` = `ram_size`, `rsi` = `arg`, interrupts off.
pub fn entry_regs(entry: u64, stack_top: u64, ram_size: u64, arg: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: (stack_top & !0xf) - 8,
        rflags: RFLAGS_RESERVED1,
        rdi: ram_size,
        rsi: arg,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_well_known_encodings() {
        // Linux's __USER_CS and __USER_DS descriptors (GDT_ENTRY_INIT(0xa0fb, 0, 0xfffff) and
        // GDT_ENTRY_INIT(0xc0f3, 0, 0xfffff)), with the accessed bit set.
        assert_eq!(descriptor(&user_code_segment()), 0x00af_fb00_0000_ffff);
        assert_eq!(descriptor(&user_data_segment()), 0x00cf_f300_0000_ffff);
        let tss = descriptor(&task_segment());
        assert_eq!((tss >> 40) & 0xff, 0x8b, "present, DPL 0, busy 64-bit TSS");
        assert_eq!((tss >> 16) & 0xff_ffff, TSS_ADDR);
    }

    #[test]
    fn page_tables_identity_map_requested_ranges_with_user_bit() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        write_boot_structures(&mem, &[0..0x30_0000, 0xd000_0000..0xd020_0000]).unwrap();
        let read = |at: u64| mem.read_obj::<u64>(GuestAddress(at)).unwrap();
        let pml4e = read(PML4_ADDR);
        assert_eq!(pml4e & !0xfff, PDPT_ADDR);
        assert_eq!(pml4e & 7, 7);
        let pd0 = read(PDPT_ADDR) & !0xfff;
        let pd3 = read(PDPT_ADDR + 3 * 8) & !0xfff;
        assert_eq!(read(PDPT_ADDR + 8), 0, "GiB 1 is not mapped");
        assert_eq!(read(pd0), PTE_HUGE | 7);
        assert_eq!(read(pd0 + 8), HUGE_PAGE | PTE_HUGE | 7);
        assert_eq!(read(pd0 + 16), 0, "RAM ends within the second 2 MiB page");
        let mmio_index = (0xd000_0000u64 % GIB) / HUGE_PAGE;
        assert_eq!(read(pd3 + mmio_index * 8), 0xd000_0000 | PTE_HUGE | 7);
        assert!(write_boot_structures(&mem, &[0..MAPPABLE_LIMIT + 1, 0..1]).is_err());
    }

    #[test]
    fn entry_stack_is_aligned_as_after_a_call() {
        let regs = entry_regs(0x40_1000, 0x400_0000, 0x400_0000, 5);
        assert_eq!(regs.rsp % 16, 8);
        assert_eq!((regs.rip, regs.rdi, regs.rsi), (0x40_1000, 0x400_0000, 5));
        assert_eq!(regs.rflags & (1 << 9), 0, "interrupts off");
    }
}
