//! The vCPU state Linux's 64-bit boot protocol expects (Documentation/x86/boot.rst, "64-bit
//! Boot Protocol"): long mode with paging on and an identity map covering the kernel, the zero
//! page and the command line; a GDT with flat 4 GiB `__BOOT_CS` (0x10, execute/read) and
//! `__BOOT_DS` (0x18, read/write) descriptors loaded in CS and DS/ES/SS; interrupts off; `rsi`
//! holding the zero page's address. Plus what a PC's firmware leaves behind and Linux relies on:
//! the CPUID the VMM chooses, boot MSRs (fast strings, write-back MTRR default), an initialised
//! FPU, and the local APIC's LINT0 as ExtINT and LINT1 as NMI.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
    CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::GuestMemoryMmap;

use super::layout::{
    BOOT_STACK_TOP, GDT_ADDR, IDENTITY_MAPPED_GIB, PDPT_ADDR, PD_ADDR, PML4_ADDR, TSS_ADDR,
    TSS_LEN, ZERO_PAGE_ADDR,
};
use super::quirks::Quirks;
use crate::error::{Error, Result};
use crate::kvm::x86::{descriptor, write_u64s};

/// `__BOOT_CS`: the boot protocol's code segment selector (GDT index 2).
pub const BOOT_CS: u16 = 0x10;
/// `__BOOT_DS`: the boot protocol's data segment selector (GDT index 3).
pub const BOOT_DS: u16 = 0x18;
/// The task register's selector (GDT indices 4 and 5: a system descriptor is 16 bytes).
pub const BOOT_TSS: u16 = 0x20;
const GDT_ENTRIES: usize = 6;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_HUGE: u64 = 1 << 7;

// CPUID bits the VMM sets or clears.
const LEAF1_ECX_CX16: u32 = 1 << 13;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF7_EBX_ERMS: u32 = 1 << 9;
const LEAF7_EDX_FSRM: u32 = 1 << 4;
/// CPUID.(7,1):EAX: fast zero-length MOVSB (10), fast short STOSB (11), fast short CMPSB (12).
const LEAF7_1_EAX_FAST_SHORT_STRINGS: u32 = 0b111 << 10;

// MSRs set at boot (the values a PC's firmware leaves).
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled (bit 11), default type write-back (6).
const MTRR_DEF_TYPE_ENABLED_WB: u64 = (1 << 11) | 6;

// Local APIC registers and LVT delivery modes.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// `__BOOT_CS`: flat, 64-bit, execute/read (accessed).
pub fn code_segment() -> kvm_segment {
    segment(BOOT_CS, 0xb, true)
}

/// `__BOOT_DS`: flat, read/write (accessed).
pub fn data_segment() -> kvm_segment {
    segment(BOOT_DS, 0x3, false)
}

/// The task register: a busy 64-bit TSS at [`TSS_ADDR`].
pub fn task_segment() -> kvm_segment {
    kvm_segment {
        base: TSS_ADDR,
        limit: (TSS_LEN - 1) as u32,
        selector: BOOT_TSS,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT, a zeroed TSS and page tables identity-mapping the first
/// [`IDENTITY_MAPPED_GIB`] GiB with 2 MiB pages (supervisor only: the kernel replaces them).
pub fn write_boot_structures(mem: &GuestMemoryMmap) -> Result<()> {
    let mut gdt = [0u64; GDT_ENTRIES];
    gdt[usize::from(BOOT_CS >> 3)] = descriptor(&code_segment());
    gdt[usize::from(BOOT_DS >> 3)] = descriptor(&data_segment());
    let tss = task_segment();
    gdt[usize::from(BOOT_TSS >> 3)] = descriptor(&tss);
    gdt[usize::from(BOOT_TSS >> 3) + 1] = tss.base >> 32;
    write_u64s(mem, GDT_ADDR, &gdt)?;
    write_u64s(mem, TSS_ADDR, &[0; TSS_LEN as usize / 8])?;

    let flags = PTE_PRESENT | PTE_WRITABLE;
    let mut pml4 = [0u64; 512];
    pml4[0] = PDPT_ADDR | flags;
    write_u64s(mem, PML4_ADDR, &pml4)?;
    let mut pdpt = [0u64; 512];
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd_addr = PD_ADDR + gib * 0x1000;
        pdpt[gib as usize] = pd_addr | flags;
        let pd: Vec<u64> = (0..512u64)
            .map(|i| ((gib << 30) + (i << 21)) | flags | PTE_HUGE)
            .collect();
        write_u64s(mem, pd_addr, &pd)?;
    }
    write_u64s(mem, PDPT_ADDR, &pdpt)
}

/// Special registers at the 64-bit entry, over the structures of [`write_boot_structures`].
/// `sregs` comes from `KVM_GET_SREGS` so that fields this does not own (APIC base, interrupt
/// bitmap) keep their values.
pub fn entry_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let data = data_segment();
    sregs.cs = code_segment();
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = task_segment();
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT_ENTRIES * 8 - 1) as u16;
    // No IDT: any exception before the kernel installs its own ends in a triple fault, which
    // the VMM reports (`VmOutcome::Shutdown`) with the RIP.
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

/// General registers at the 64-bit entry point `entry`.
pub fn entry_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsi: ZERO_PAGE_ADDR,
        rsp: BOOT_STACK_TOP,
        rbp: BOOT_STACK_TOP,
        rflags: 1 << 1,
        ..Default::default()
    }
}

/// The CPUID the guest sees: what KVM supports, with the VMM's changes (see
/// [`adjust_cpuid_entries`]).
pub fn guest_cpuid(kvm: &Kvm, quirks: &Quirks) -> Result<CpuId> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    adjust_cpuid_entries(cpuid.as_mut_slice(), quirks);
    Ok(cpuid)
}

/// The VMM's changes to KVM's supported CPUID for a one-vCPU guest with APIC ID 0:
/// * leaf 1: APIC ID 0 and one logical processor in EBX; the hypervisor bit set; TSC deadline
///   timer on (the in-kernel local APIC emulates it); CX16 cleared on kvm-pvm hosts
///   ([`Quirks::hide_cx16`]: their instruction emulator fails on `lock cmpxchg16b`);
/// * leaf 7: the fast-string bits cleared on kvm-pvm hosts ([`Quirks::hide_fast_strings`]);
/// * leaf 4: one core per package;
/// * leaf 0xb: x2APIC ID 0 in EDX.
///
/// KVM's own leaves (0x4000_0000: the "KVMKVMKVM" signature and paravirtual features) are kept
/// as KVM reports them, so the guest knows it runs on KVM.
pub fn adjust_cpuid_entries(entries: &mut [kvm_cpuid_entry2], quirks: &Quirks) {
    for e in entries {
        match e.function {
            1 => {
                // EBX: [31:24] initial APIC ID, [23:16] logical processors, [15:8] CLFLUSH size.
                e.ebx = (e.ebx & 0x0000_ffff) | (1 << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR | LEAF1_ECX_TSC_DEADLINE;
                if quirks.hide_cx16 {
                    e.ecx &= !LEAF1_ECX_CX16;
                }
                // EDX bit 28 (HTT) says EBX[23:16] is valid.
                e.edx |= 1 << 28;
            }
            4 => {
                // EAX[31:26]: cores per package - 1; [25:14]: threads sharing this cache - 1.
                e.eax &= 0x3fff;
            }
            7 if quirks.hide_fast_strings => match e.index {
                0 => {
                    e.ebx &= !LEAF7_EBX_ERMS;
                    e.edx &= !LEAF7_EDX_FSRM;
                }
                1 => e.eax &= !LEAF7_1_EAX_FAST_SHORT_STRINGS,
                _ => {}
            },
            0xb => {
                e.edx = 0;
            }
            _ => {}
        }
    }
}

/// The boot MSRs (as Firecracker and a PC's firmware leave them).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_ENABLED_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

fn lapic_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &state.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().into_iter().enumerate() {
        state.regs[offset + i] = b as _;
    }
}

/// LVT LINT0 as ExtINT (the PIC's output reaches the CPU, as on a PC) and LINT1 as NMI.
pub fn set_lint(state: &mut kvm_lapic_state) {
    let mode = |v: u32, m: u32| (v & !0x700) | (m << 8);
    let lint0 = lapic_reg(state, APIC_LVT_LINT0);
    set_lapic_reg(state, APIC_LVT_LINT0, mode(lint0, APIC_MODE_EXTINT));
    let lint1 = lapic_reg(state, APIC_LVT_LINT1);
    set_lapic_reg(state, APIC_LVT_LINT1, mode(lint1, APIC_MODE_NMI));
}

/// Sets up vCPU 0 for a Linux guest: CPUID, boot MSRs, FPU, local APIC LINT pins, and the
/// special registers of the 64-bit entry. The general registers (entry point) are set when the
/// kernel is loaded.
pub fn setup_vcpu(kvm: &Kvm, vcpu: &VcpuFd, quirks: &Quirks) -> Result<()> {
    vcpu.set_cpuid2(&guest_cpuid(kvm, quirks)?)
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries)
        .map_err(|e| Error::Config(format!("building the boot MSR list: {e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        // KVM stops at the first MSR it refuses; the rest keep their reset values, which Linux
        // copes with (it programs all of these itself).
        log::warn!(
            "KVM accepted {set} of {} boot MSRs; MSR {:#x} was refused",
            entries.len(),
            entries[set].index
        );
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(Error::kvm("KVM_SET_FPU"))?;
    let mut lapic = vcpu.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
    set_lint(&mut lapic);
    vcpu.set_lapic(&lapic)
        .map_err(Error::kvm("KVM_SET_LAPIC"))?;
    let sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&entry_sregs(sregs))
        .map_err(Error::kvm("KVM_SET_SREGS"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn gdt_holds_flat_boot_segments_at_the_protocol_selectors() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_boot_structures(&mem).unwrap();
        let read = |at: u64| mem.read_obj::<u64>(GuestAddress(at)).unwrap();
        // Linux's own GDT_ENTRY_INIT(0xa09b, 0, 0xfffff) and (0xc093, 0, 0xfffff).
        assert_eq!(read(GDT_ADDR + u64::from(BOOT_CS)), 0x00af_9b00_0000_ffff);
        assert_eq!(read(GDT_ADDR + u64::from(BOOT_DS)), 0x00cf_9300_0000_ffff);
        let tss = read(GDT_ADDR + u64::from(BOOT_TSS));
        assert_eq!((tss >> 40) & 0xff, 0x8b, "present, busy 64-bit TSS");
        assert_eq!((tss >> 16) & 0xff_ffff, TSS_ADDR);
        let sregs = entry_sregs(kvm_sregs::default());
        assert_eq!(sregs.cs.selector, 0x10);
        assert_eq!((sregs.ds.selector, sregs.ss.selector), (0x18, 0x18));
        assert_eq!(sregs.cr0 & CR0_PG, CR0_PG);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
    }

    #[test]
    fn page_tables_identity_map_4_gib_with_2_mib_pages() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_boot_structures(&mem).unwrap();
        let read = |at: u64| mem.read_obj::<u64>(GuestAddress(at)).unwrap();
        let walk = |va: u64| {
            let pdpt = read(PML4_ADDR + ((va >> 39) & 511) * 8) & !0xfff;
            let pd = read(pdpt + ((va >> 30) & 511) * 8) & !0xfff;
            let pde = read(pd + ((va >> 21) & 511) * 8);
            assert_eq!(pde & (PTE_PRESENT | PTE_HUGE), PTE_PRESENT | PTE_HUGE);
            (pde & !0x1f_ffff & ((1 << 52) - 1)) | (va & 0x1f_ffff)
        };
        for va in [0, 0x7000, 0x100_0000, 0xd010_0000, 0xfec0_0000, 0xffff_ffff] {
            assert_eq!(walk(va), va);
        }
        assert_eq!(read(PDPT_ADDR + 4 * 8), 0, "nothing above 4 GiB");
    }

    #[test]
    fn cpuid_changes() {
        let entry = |function, ebx, ecx| kvm_cpuid_entry2 {
            function,
            ebx,
            ecx,
            ..Default::default()
        };
        let mut e = [
            entry(1, 0x0708_0800, LEAF1_ECX_CX16 | 1),
            entry(0x4000_0000, 0x4b4d_564b, 0),
            kvm_cpuid_entry2 {
                function: 7,
                ebx: LEAF7_EBX_ERMS | 1,
                edx: LEAF7_EDX_FSRM,
                ..Default::default()
            },
        ];
        adjust_cpuid_entries(&mut e, &Quirks::default());
        assert_eq!(e[0].ebx, 0x0001_0800, "APIC ID 0, one logical processor");
        assert_ne!(e[0].ecx & LEAF1_ECX_CX16, 0);
        assert_eq!((e[2].ebx, e[2].edx), (LEAF7_EBX_ERMS | 1, LEAF7_EDX_FSRM));
        assert_ne!(e[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(e[1].ebx, 0x4b4d_564b, "KVM's signature is kept");
        adjust_cpuid_entries(
            &mut e,
            &Quirks {
                hide_cx16: true,
                hide_fast_strings: true,
                ..Quirks::default()
            },
        );
        assert_eq!(e[0].ecx & LEAF1_ECX_CX16, 0);
        assert_eq!((e[2].ebx, e[2].edx), (1, 0), "ERMS and FSRM cleared");
        assert_eq!(e[0].ecx & 1, 1, "other bits untouched");
    }

    #[test]
    fn lint_pins_become_extint_and_nmi() {
        let mut s = kvm_lapic_state::default();
        set_lapic_reg(&mut s, APIC_LVT_LINT0, 0x1_0700);
        set_lint(&mut s);
        assert_eq!(lapic_reg(&s, APIC_LVT_LINT0), 0x1_0700);
        assert_eq!(lapic_reg(&s, APIC_LVT_LINT1), 0x400);
    }
}
