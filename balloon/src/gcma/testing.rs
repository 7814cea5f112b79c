//! A [`GrantMapper`] for tests (feature `test-utils`): it `mmap`s each grant's range of the pool
//! memfd into this process, as the VMM would before handing it to KVM, and records the mappings,
//! so a test can read and write "guest" bytes of a grant and see exactly what the pool holds.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use gcma_host::api::{ContigGrant, PAGE_SIZE};

use super::mapper::{GrantMapper, GrantWindow, MapError};

struct Mapping {
    grant: ContigGrant,
    host: *mut u8,
    len: usize,
}

// SAFETY: the raw pointer is a private mapping owned by this struct; it is only dereferenced
// under the mapper's mutex.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `host`/`len` describe a mapping created by `mmap` in `map` and not unmapped
        // since (each Mapping is dropped once).
        unsafe {
            libc::munmap(self.host.cast(), self.len);
        }
    }
}

/// One recorded mapping: where a grant appeared in the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedGrant {
    /// Guest-physical address of the grant.
    pub gpa: u64,
    /// The grant.
    pub grant: ContigGrant,
}

/// A grant mapper over a window at a fixed guest-physical base, with lowest-address first fit.
pub struct MemfdGrantMapper {
    window: GrantWindow,
    maps: Mutex<BTreeMap<u64, Mapping>>,
    fail_next_map: AtomicBool,
    fail_unmaps: AtomicBool,
}

impl std::fmt::Debug for MemfdGrantMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemfdGrantMapper")
            .field("window", &self.window)
            .field("mapped", &self.mapped().len())
            .finish()
    }
}

impl MemfdGrantMapper {
    /// A mapper for a window of `len_bytes` at `gpa` (both page-aligned).
    pub fn new(gpa: u64, len_bytes: u64) -> Self {
        MemfdGrantMapper {
            window: GrantWindow { gpa, len_bytes },
            maps: Mutex::new(BTreeMap::new()),
            fail_next_map: AtomicBool::new(false),
            fail_unmaps: AtomicBool::new(false),
        }
    }

    /// Makes the next [`GrantMapper::map`] fail with a host error (to test `MAP_FAILED`).
    pub fn fail_next_map(&self) {
        self.fail_next_map.store(true, Ordering::SeqCst);
    }

    /// Makes every [`GrantMapper::unmap`] fail while `fail` is set.
    pub fn fail_unmaps(&self, fail: bool) {
        self.fail_unmaps.store(fail, Ordering::SeqCst);
    }

    /// Current mappings in address order.
    pub fn mapped(&self) -> Vec<MappedGrant> {
        self.lock()
            .iter()
            .map(|(&gpa, m)| MappedGrant {
                gpa,
                grant: m.grant,
            })
            .collect()
    }

    /// Reads guest-physical bytes of a mapped grant (through the mapping, as the guest would).
    /// `None` if the range is not inside one mapping.
    pub fn read(&self, gpa: u64, out: &mut [u8]) -> Option<()> {
        let maps = self.lock();
        let (host, off) = locate(&maps, gpa, out.len())?;
        // SAFETY: `locate` checked that `off..off+len` lies inside the live mapping at `host`.
        unsafe { std::ptr::copy_nonoverlapping(host.add(off), out.as_mut_ptr(), out.len()) };
        Some(())
    }

    /// Writes guest-physical bytes of a mapped grant. `None` if not inside one mapping.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Option<()> {
        let maps = self.lock();
        let (host, off) = locate(&maps, gpa, data.len())?;
        // SAFETY: `locate` checked that `off..off+len` lies inside the live, writable mapping.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), host.add(off), data.len()) };
        Some(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Mapping>> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn locate(maps: &BTreeMap<u64, Mapping>, gpa: u64, len: usize) -> Option<(*mut u8, usize)> {
    let (&start, m) = maps.range(..=gpa).next_back()?;
    let off = usize::try_from(gpa - start).ok()?;
    (off.checked_add(len)? <= m.len).then_some((m.host, off))
}

impl GrantMapper for MemfdGrantMapper {
    fn window(&self) -> GrantWindow {
        self.window
    }

    fn map(
        &self,
        pool_memfd: BorrowedFd<'_>,
        grant: &ContigGrant,
        align_pages: u64,
    ) -> Result<u64, MapError> {
        if self.fail_next_map.swap(false, Ordering::SeqCst) {
            return Err(MapError::Host(std::io::Error::other(
                "injected map failure",
            )));
        }
        let full = MapError::WindowFull {
            nr_pages: grant.nr_pages,
            align_pages,
        };
        let len = grant.len_bytes();
        let align = align_pages
            .checked_mul(PAGE_SIZE as u64)
            .ok_or(MapError::WindowFull {
                nr_pages: grant.nr_pages,
                align_pages,
            })?;
        let len_usize = usize::try_from(len).map_err(|_| MapError::WindowFull {
            nr_pages: grant.nr_pages,
            align_pages,
        })?;
        let mut maps = self.lock();
        // Lowest-address first fit between existing mappings.
        let end = self.window.gpa + self.window.len_bytes;
        let mut cursor = self.window.gpa;
        let mut found = None;
        for (&start, m) in maps.iter().chain(std::iter::once((
            &end,
            &Mapping {
                grant: *grant,
                host: std::ptr::null_mut(),
                len: 0,
            },
        ))) {
            let Some(cand) = cursor.checked_next_multiple_of(align) else {
                break;
            };
            if cand.checked_add(len).is_some_and(|e| e <= start) {
                found = Some(cand);
                break;
            }
            cursor = start + m.len as u64;
        }
        let Some(gpa) = found else {
            return Err(full);
        };
        // SAFETY: a fresh shared mapping of a valid fd; the kernel picks the address, so no
        // existing memory is affected.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                pool_memfd.as_raw_fd(),
                grant.offset_bytes() as libc::off_t,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(MapError::Host(std::io::Error::last_os_error()));
        }
        maps.insert(
            gpa,
            Mapping {
                grant: *grant,
                host: host.cast(),
                len: len_usize,
            },
        );
        Ok(gpa)
    }

    fn unmap(&self, gpa: u64, grant: &ContigGrant) -> Result<(), MapError> {
        if self.fail_unmaps.load(Ordering::SeqCst) {
            return Err(MapError::Host(std::io::Error::other(
                "injected unmap failure",
            )));
        }
        let mut maps = self.lock();
        match maps.get(&gpa) {
            Some(m) if m.grant == *grant => {
                maps.remove(&gpa);
                Ok(())
            }
            _ => Err(MapError::NotMapped(gpa)),
        }
    }
}
