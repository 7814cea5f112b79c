//! Loader for kernel-less payloads: static, non-relocatable x86-64 ELF executables.
//!
//! Why not `linux-loader`'s `Elf` loader: it is built for kernels. It loads at `p_paddr` without
//! checking the target against anything but guest memory's end (so a payload could overwrite the
//! VMM's page tables), does not check `e_machine`/`e_type`, leaves `.bss` as whatever memory held,
//! and does not return the segments (the VMM needs them to tell whether a faulting RIP is in the
//! payload's code). Reading `PT_LOAD` headers is a few dozen lines, so we do it here, with every
//! field of the (untrusted) image checked. A Linux bzImage loader can sit beside this one later.

use std::ops::Range;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Why an image could not be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    /// Not an ELF file, or not a 64-bit little-endian one.
    #[error("not a 64-bit little-endian ELF image")]
    NotElf64,
    /// An ELF file for another machine or of another type.
    #[error("not a static x86-64 executable (e_type {e_type}, e_machine {e_machine})")]
    WrongKind {
        /// ELF `e_type` (2 = executable).
        e_type: u16,
        /// ELF `e_machine` (62 = x86-64).
        e_machine: u16,
    },
    /// A header points outside the file or is malformed.
    #[error("malformed ELF image: {0}")]
    Malformed(&'static str),
    /// A segment would land outside the area payloads may occupy.
    #[error("segment [{start:#x}, {end:#x}) is outside the loadable area [{allowed_start:#x}, {allowed_end:#x})")]
    SegmentOutOfRange {
        /// Segment start (guest-physical).
        start: u64,
        /// Segment end (exclusive).
        end: u64,
        /// Start of the area payloads may use.
        allowed_start: u64,
        /// End of that area.
        allowed_end: u64,
    },
    /// The image has nothing to load.
    #[error("the image has no loadable segment")]
    NoSegments,
    /// The entry point is not inside an executable segment.
    #[error("entry point {0:#x} is not in an executable segment")]
    BadEntry(u64),
    /// Writing to guest memory failed.
    #[error("writing the image to guest memory failed at {0:#x}")]
    GuestWrite(u64),
}

/// One loaded segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical (= virtual, identity-mapped) range the segment occupies.
    pub range: Range<u64>,
    /// Whether the segment is executable (`PF_X`).
    pub executable: bool,
}

/// What was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// Entry point.
    pub entry: u64,
    /// Loaded segments in image order.
    pub segments: Vec<Segment>,
}

impl LoadedImage {
    /// Whether `addr` lies in one of the image's executable segments (its code).
    pub fn code_contains(&self, addr: u64) -> bool {
        self.segments
            .iter()
            .any(|s| s.executable && s.range.contains(&addr))
    }

    /// Highest end of any segment.
    pub fn end(&self) -> u64 {
        self.segments.iter().map(|s| s.range.end).max().unwrap_or(0)
    }
}

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;

fn field<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], LoadError> {
    at.checked_add(N)
        .and_then(|end| bytes.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or(LoadError::Malformed("header runs past the end of the file"))
}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16, LoadError> {
    field(bytes, at).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, LoadError> {
    field(bytes, at).map(u32::from_le_bytes)
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, LoadError> {
    field(bytes, at).map(u64::from_le_bytes)
}

/// Loads `image` into `mem`. Every byte of every segment (file part and zero-filled `.bss` part)
/// must fall inside `allowed`.
pub fn load_elf(
    mem: &GuestMemoryMmap,
    image: &[u8],
    allowed: Range<u64>,
) -> Result<LoadedImage, LoadError> {
    if image.len() < EHDR_LEN || image[..4] != *b"\x7fELF" || image[4] != 2 || image[5] != 1 {
        return Err(LoadError::NotElf64);
    }
    let e_type = u16_at(image, 16)?;
    let e_machine = u16_at(image, 18)?;
    if e_type != ET_EXEC || e_machine != EM_X86_64 {
        return Err(LoadError::WrongKind { e_type, e_machine });
    }
    let entry = u64_at(image, 24)?;
    let phoff = usize::try_from(u64_at(image, 32)?)
        .map_err(|_| LoadError::Malformed("program header offset"))?;
    let phentsize = usize::from(u16_at(image, 54)?);
    let phnum = usize::from(u16_at(image, 56)?);
    if phentsize != PHDR_LEN {
        return Err(LoadError::Malformed("program header size"));
    }

    let mut segments = Vec::new();
    let mut plan = Vec::new();
    for i in 0..phnum {
        let at = i
            .checked_mul(PHDR_LEN)
            .and_then(|o| o.checked_add(phoff))
            .ok_or(LoadError::Malformed("program header offset"))?;
        if u32_at(image, at)? != PT_LOAD {
            continue;
        }
        let flags = u32_at(image, at + 4)?;
        let offset = u64_at(image, at + 8)?;
        let vaddr = u64_at(image, at + 16)?;
        let filesz = u64_at(image, at + 32)?;
        let memsz = u64_at(image, at + 40)?;
        if memsz == 0 {
            continue;
        }
        if filesz > memsz {
            return Err(LoadError::Malformed(
                "segment file size exceeds its memory size",
            ));
        }
        let file_range = offset
            .checked_add(filesz)
            .filter(|&end| end <= image.len() as u64)
            .map(|end| offset as usize..end as usize)
            .ok_or(LoadError::Malformed(
                "segment data runs past the end of the file",
            ))?;
        let end = vaddr.checked_add(memsz).ok_or(LoadError::Malformed(
            "segment wraps around the address space",
        ))?;
        if vaddr < allowed.start || end > allowed.end {
            return Err(LoadError::SegmentOutOfRange {
                start: vaddr,
                end,
                allowed_start: allowed.start,
                allowed_end: allowed.end,
            });
        }
        segments.push(Segment {
            range: vaddr..end,
            executable: flags & PF_X != 0,
        });
        plan.push((vaddr, file_range, memsz - filesz));
    }
    if segments.is_empty() {
        return Err(LoadError::NoSegments);
    }
    let loaded = LoadedImage { entry, segments };
    if !loaded.code_contains(entry) {
        return Err(LoadError::BadEntry(entry));
    }

    const ZEROS: [u8; 4096] = [0; 4096];
    for (gpa, file_range, bss_len) in plan {
        mem.write_slice(&image[file_range.clone()], GuestAddress(gpa))
            .map_err(|_| LoadError::GuestWrite(gpa))?;
        let mut at = gpa + file_range.len() as u64;
        let mut left = bss_len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64);
            mem.write_slice(&ZEROS[..n as usize], GuestAddress(at))
                .map_err(|_| LoadError::GuestWrite(at))?;
            at += n;
            left -= n;
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF: one header, `segs` program headers of (flags, vaddr, data, memsz).
    fn elf(entry: u64, segs: &[(u32, u64, &[u8], u64)]) -> Vec<u8> {
        let mut out = vec![0u8; EHDR_LEN + PHDR_LEN * segs.len()];
        out[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        out[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        out[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&(EHDR_LEN as u64).to_le_bytes());
        out[54..56].copy_from_slice(&(PHDR_LEN as u16).to_le_bytes());
        out[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, (flags, vaddr, data, memsz)) in segs.iter().enumerate() {
            let offset = out.len() as u64;
            out.extend_from_slice(data);
            let at = EHDR_LEN + i * PHDR_LEN;
            out[at..at + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            out[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&offset.to_le_bytes());
            out[at + 16..at + 24].copy_from_slice(&vaddr.to_le_bytes());
            out[at + 24..at + 32].copy_from_slice(&vaddr.to_le_bytes());
            out[at + 32..at + 40].copy_from_slice(&(data.len() as u64).to_le_bytes());
            out[at + 40..at + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        out
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn loads_segments_and_zeroes_bss() {
        let m = mem();
        m.write_slice(&[0xee; 16], GuestAddress(0x2004)).unwrap();
        let img = elf(
            0x1000,
            &[
                (PF_X | 4, 0x1000, &[0x90, 0x0f, 0x0b], 3),
                (6, 0x2000, &[1, 2, 3, 4], 20),
            ],
        );
        let loaded = load_elf(&m, &img, 0x1000..0x8000).unwrap();
        assert_eq!(loaded.entry, 0x1000);
        assert!(loaded.code_contains(0x1002));
        assert!(!loaded.code_contains(0x2000));
        assert_eq!(loaded.end(), 0x2014);
        let mut code = [0u8; 3];
        m.read_slice(&mut code, GuestAddress(0x1000)).unwrap();
        assert_eq!(code, [0x90, 0x0f, 0x0b]);
        let mut data = [0xffu8; 20];
        m.read_slice(&mut data, GuestAddress(0x2000)).unwrap();
        assert_eq!(&data[..4], &[1, 2, 3, 4]);
        assert!(
            data[4..].iter().all(|&b| b == 0),
            "bss must be zeroed: {data:?}"
        );
    }

    #[test]
    fn rejects_segments_outside_the_allowed_area() {
        let img = elf(0x1000, &[(PF_X, 0x1000, &[0x90], 0x2000)]);
        assert!(matches!(
            load_elf(&mem(), &img, 0x1000..0x2000),
            Err(LoadError::SegmentOutOfRange { .. })
        ));
        let img = elf(0x1000, &[(PF_X, 0x800, &[0x90; 0x900], 0x900)]);
        assert!(matches!(
            load_elf(&mem(), &img, 0x1000..0x8000),
            Err(LoadError::SegmentOutOfRange { .. })
        ));
        let img = elf(0x1000, &[(PF_X, u64::MAX - 1, &[0x90], 8)]);
        assert!(load_elf(&mem(), &img, 0x1000..0x8000).is_err());
    }

    #[test]
    fn rejects_bad_headers_and_entries() {
        let m = mem();
        assert_eq!(
            load_elf(&m, b"\x7fELF", 0..0x8000),
            Err(LoadError::NotElf64)
        );
        let good = elf(0x1000, &[(PF_X, 0x1000, &[0x90], 1)]);
        let mut wrong_machine = good.clone();
        wrong_machine[18] = 3;
        assert!(matches!(
            load_elf(&m, &wrong_machine, 0..0x8000),
            Err(LoadError::WrongKind { .. })
        ));
        let mut truncated_phdrs = good.clone();
        truncated_phdrs[56] = 200;
        assert!(matches!(
            load_elf(&m, &truncated_phdrs, 0..0x8000),
            Err(LoadError::Malformed(_))
        ));
        let data_entry = elf(0x1000, &[(6, 0x1000, &[0x90], 1)]);
        assert_eq!(
            load_elf(&m, &data_entry, 0..0x8000),
            Err(LoadError::BadEntry(0x1000))
        );
        let mut past_end = good.clone();
        past_end[EHDR_LEN + 8..EHDR_LEN + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            load_elf(&m, &past_end, 0..0x8000),
            Err(LoadError::Malformed(_))
        ));
        assert!(load_elf(&m, &good, 0..0x8000).is_ok());
    }

    #[test]
    fn never_panics_on_truncated_images() {
        let good = elf(
            0x1000,
            &[(PF_X, 0x1000, &[0x90; 64], 128), (6, 0x3000, &[7; 32], 64)],
        );
        for len in 0..good.len() {
            let _ = load_elf(&mem(), &good[..len], 0..0x8000);
        }
    }
}
