//! Reading the instruction a vCPU stopped on, for reports of exits the VMM cannot continue from
//! (`KVM_EXIT_INTERNAL_ERROR`: KVM's instruction emulator failed).
//!
//! KVM hands over the instruction bytes itself on newer kernels
//! (`KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES`); otherwise the VMM reads them from
//! guest memory at the linear address of RIP, translated by KVM (`KVM_TRANSLATE`) or, when that
//! fails, by walking the guest's page tables here. The page tables are guest memory: every entry
//! is read through `vm-memory`'s bounds checks, and a bad entry ends the walk.

use kvm_bindings::kvm_sregs;
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// Up to 15 instruction bytes (fewer when memory at RIP could not be read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InsnBytes {
    len: u8,
    bytes: [u8; MAX_INSN_LEN],
}

impl InsnBytes {
    /// The bytes (at most [`MAX_INSN_LEN`]).
    pub fn new(bytes: &[u8]) -> InsnBytes {
        let n = bytes.len().min(MAX_INSN_LEN);
        let mut b = [0u8; MAX_INSN_LEN];
        b[..n].copy_from_slice(&bytes[..n]);
        InsnBytes {
            len: n as u8,
            bytes: b,
        }
    }

    /// The bytes read.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(MAX_INSN_LEN)]
    }
}

impl std::fmt::Display for InsnBytes {
    /// Hex bytes separated by spaces, or `unreadable`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.as_slice().is_empty() {
            return write!(f, "unreadable");
        }
        for (i, b) in self.as_slice().iter().enumerate() {
            if i > 0 {
                write!(f, " ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PTE_PRESENT: u64 = 1;
const PTE_LARGE: u64 = 1 << 7;
/// Physical-address bits of a 64-bit entry (bits 12..52).
const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The linear address of the instruction at `rip`: in 64-bit code CS's base is ignored; in
/// other modes it is added and the result is 32 bits.
pub fn linear_rip(sregs: &kvm_sregs, rip: u64) -> u64 {
    if sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0 {
        rip
    } else {
        sregs.cs.base.wrapping_add(rip) & 0xffff_ffff
    }
}

/// Translates linear address `la` to guest-physical by walking the page tables `sregs` point at
/// (no paging, 32-bit, PAE, 4- and 5-level). `None` when an entry is not present or unreadable.
pub fn walk(mem: &GuestMemoryMmap, sregs: &kvm_sregs, la: u64) -> Option<u64> {
    if sregs.cr0 & CR0_PG == 0 {
        return Some(la);
    }
    let read64 = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).ok();
    if sregs.efer & EFER_LMA != 0 || sregs.cr4 & CR4_PAE != 0 {
        let long = sregs.efer & EFER_LMA != 0;
        // (shift, index bits) of each level from the top; PAE has a 4-entry top level.
        let levels: &[(u32, u64)] = if !long {
            &[(30, 0x3), (21, 0x1ff), (12, 0x1ff)]
        } else if sregs.cr4 & CR4_LA57 != 0 {
            &[
                (48, 0x1ff),
                (39, 0x1ff),
                (30, 0x1ff),
                (21, 0x1ff),
                (12, 0x1ff),
            ]
        } else {
            &[(39, 0x1ff), (30, 0x1ff), (21, 0x1ff), (12, 0x1ff)]
        };
        let mut table = if long {
            sregs.cr3 & PTE_ADDR_MASK
        } else {
            sregs.cr3 & 0xffff_ffe0
        };
        for (i, &(shift, mask)) in levels.iter().enumerate() {
            let entry = read64(table + ((la >> shift) & mask) * 8)?;
            if entry & PTE_PRESENT == 0 {
                return None;
            }
            let last = i + 1 == levels.len();
            // Large pages: 1 GiB at shift 30 (long mode), 2 MiB at shift 21. The PAE
            // page-directory-pointer entries (first level without long mode) have no PS bit.
            let can_be_large = shift == 21 || (shift == 30 && long);
            if last || (can_be_large && entry & PTE_LARGE != 0) {
                let page_mask = (1u64 << shift) - 1;
                return Some((entry & PTE_ADDR_MASK & !page_mask) | (la & page_mask));
            }
            table = entry & PTE_ADDR_MASK;
        }
        None
    } else {
        let read32 = |a: u64| mem.read_obj::<u32>(GuestAddress(a)).ok().map(u64::from);
        let la = la & 0xffff_ffff;
        let pde = read32((sregs.cr3 & 0xffff_f000) + (la >> 22) * 4)?;
        if pde & PTE_PRESENT == 0 {
            return None;
        }
        if sregs.cr4 & CR4_PSE != 0 && pde & PTE_LARGE != 0 {
            // 4 MiB page: bits 31..22 of the address, bits 39..32 from PDE bits 20..13.
            let high = ((pde >> 13) & 0xff) << 32;
            return Some(high | (pde & 0xffc0_0000) | (la & 0x3f_ffff));
        }
        let pte = read32((pde & 0xffff_f000) + ((la >> 12) & 0x3ff) * 4)?;
        (pte & PTE_PRESENT != 0).then_some((pte & 0xffff_f000) | (la & 0xfff))
    }
}

/// Reads up to [`MAX_INSN_LEN`] bytes at linear address `la`, translating each page with
/// `translate` (stopping at the first page that does not translate or read).
pub fn read_linear(
    mem: &GuestMemoryMmap,
    la: u64,
    mut translate: impl FnMut(u64) -> Option<u64>,
) -> InsnBytes {
    let mut out = Vec::with_capacity(MAX_INSN_LEN);
    let mut at = la;
    while out.len() < MAX_INSN_LEN {
        let Some(gpa) = translate(at) else { break };
        let in_page = (0x1000 - (at & 0xfff)) as usize;
        let n = in_page.min(MAX_INSN_LEN - out.len());
        let mut buf = vec![0u8; n];
        if mem.read_slice(&mut buf, GuestAddress(gpa)).is_err() {
            break;
        }
        out.extend_from_slice(&buf);
        at = at.wrapping_add(n as u64);
    }
    InsnBytes::new(&out)
}

/// The bytes at the vCPU's RIP: linear address from RIP and CS, translated by `KVM_TRANSLATE`,
/// else by a walk of the guest's page tables.
pub fn bytes_at_rip(vcpu: &VcpuFd, mem: &GuestMemoryMmap, rip: u64) -> InsnBytes {
    let Ok(sregs) = vcpu.get_sregs() else {
        return InsnBytes::default();
    };
    let la = linear_rip(&sregs, rip);
    read_linear(mem, la, |a| match vcpu.translate_gva(a) {
        Ok(t) if t.valid != 0 => Some(t.physical_address),
        _ => walk(mem, &sregs, a),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn put(mem: &GuestMemoryMmap, at: u64, v: u64) {
        mem.write_obj(v, GuestAddress(at)).unwrap();
    }

    fn long_mode(cr3: u64) -> kvm_sregs {
        let mut s = kvm_sregs {
            cr0: CR0_PG | 1,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
            ..Default::default()
        };
        s.cs.l = 1;
        s
    }

    #[test]
    fn four_level_walk_with_4k_and_2m_pages() {
        let m = mem();
        // PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000.
        let va: u64 = 0xffff_ffff_8100_0000 + 0x2345;
        put(&m, 0x1000 + ((va >> 39) & 511) * 8, 0x2000 | 3);
        put(&m, 0x2000 + ((va >> 30) & 511) * 8, 0x3000 | 3);
        put(&m, 0x3000 + ((va >> 21) & 511) * 8, 0x4000 | 3);
        put(&m, 0x4000 + ((va >> 12) & 511) * 8, 0x20_0000 | 3);
        let s = long_mode(0x1000);
        assert_eq!(walk(&m, &s, va), Some(0x20_0345));
        // A 2 MiB page one directory entry up.
        let va2 = va + 0x20_0000;
        put(
            &m,
            0x3000 + ((va2 >> 21) & 511) * 8,
            0x20_0000 | PTE_LARGE | 3,
        );
        assert_eq!(walk(&m, &s, va2 + 0x1000), Some(0x20_0000 + 0x3345));
        // Not present, and tables pointing outside guest memory.
        assert_eq!(walk(&m, &s, va + 0x4000_0000), None);
        put(&m, 0x4000 + ((va >> 12) & 511) * 8 + 8, 0xffff_f000 | 3);
        assert_eq!(walk(&m, &s, va + 0x1000), Some(0xffff_f345));
        put(&m, 0x3000 + ((va >> 21) & 511) * 8, 0x7_0000_0000 | 3);
        assert_eq!(walk(&m, &s, va), None, "table outside RAM");
    }

    /// Offsets of a 32-bit virtual address's page-directory and page-table entries.
    fn pde32(va: u64) -> u64 {
        (va >> 22) * 4
    }
    fn pte32(va: u64) -> u64 {
        ((va >> 12) & 0x3ff) * 4
    }

    #[test]
    fn paging_off_and_32_bit_modes() {
        let m = mem();
        let mut s = kvm_sregs::default();
        assert_eq!(walk(&m, &s, 0x1234), Some(0x1234));
        s.cr0 = CR0_PG | 1;
        s.cr3 = 0x1000;
        put(&m, 0x1000 + pde32(0x0040_1234), 0x2000 | 3);
        put(&m, 0x2000 + pte32(0x0040_1234), 0x9000 | 3);
        assert_eq!(walk(&m, &s, 0x0040_1234), Some(0x9234));
        s.cr4 = CR4_PSE;
        put(
            &m,
            0x1000 + (0x0080_0000u64 >> 22) * 4,
            0x0040_0000 | PTE_LARGE | 3,
        );
        assert_eq!(walk(&m, &s, 0x0081_2345), Some(0x0041_2345));
        // PAE: 4-entry PDPT at CR3, then 2 MiB page.
        s.cr4 = CR4_PAE;
        s.cr3 = 0x5000;
        put(&m, 0x5000, 0x6000 | 1);
        put(&m, 0x6000 + 2 * 8, 0x20_0000 | PTE_LARGE | 3);
        assert_eq!(walk(&m, &s, 0x40_0042), Some(0x20_0042));
    }

    #[test]
    fn reads_across_a_page_boundary_and_stops_where_translation_fails() {
        let m = mem();
        m.write_slice(&[0xf0, 0x48, 0x0f], GuestAddress(0x1ffd))
            .unwrap();
        m.write_slice(&[0xc7, 0x0e], GuestAddress(0x5000)).unwrap();
        // Linear page 0x1000 -> 0x1000, page 0x2000 -> 0x5000.
        let b = read_linear(&m, 0x1ffd, |a| match a & !0xfff {
            0x1000 => Some(a),
            0x2000 => Some(0x5000 | (a & 0xfff)),
            _ => None,
        });
        assert_eq!(b.as_slice().len(), MAX_INSN_LEN);
        assert_eq!(&b.as_slice()[..5], &[0xf0, 0x48, 0x0f, 0xc7, 0x0e]);
        assert_eq!(b.to_string().split(' ').count(), MAX_INSN_LEN);
        let b = read_linear(&m, 0x1ffd, |a| (a < 0x2000).then_some(a));
        assert_eq!(b.as_slice(), &[0xf0, 0x48, 0x0f]);
        let b = read_linear(&m, 0x1ffd, |_| None);
        assert_eq!(b.to_string(), "unreadable");
        let b = read_linear(&m, 0x3f_fffe, Some);
        assert_eq!(b.as_slice().len(), 2, "stops at the end of RAM");
    }

    #[test]
    fn linear_address_uses_cs_base_outside_64_bit_code() {
        let mut s = kvm_sregs::default();
        s.cs.base = 0x1_0000;
        assert_eq!(linear_rip(&s, 0x20), 0x1_0020);
        s.efer = EFER_LMA;
        s.cs.l = 1;
        assert_eq!(linear_rip(&s, 0xffff_ffff_8100_0000), 0xffff_ffff_8100_0000);
    }
}
