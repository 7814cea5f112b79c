//! The grant window: the VMM's own guest-physical window where contiguous pool grants appear.
//!
//! [`KvmGrantMapper`] implements `balloon`'s [`GrantMapper`] for a KVM VM: it picks the
//! guest-physical address with its own [`RangeAllocator`] (in page units, so alignment in pages is
//! absolute in guest-physical space) and installs the grant's pages of the pool memfd as a KVM
//! memory slot. Unmapping removes the slot and frees the addresses; slot numbers are recycled.
//! Dropping the mapper removes whatever is still mapped.
//!
//! Host side, the mapper keeps one populated shared mapping of the whole pool memfd (the *pool
//! view*, made by [`KvmGrantMapper::premap`] or on the first grant) and points each slot into it.
//! Mapping and populating every grant afresh cost about as much as the pool's own zeroing (page
//! table set-up for every page, then a munmap); with the view, a grant costs one
//! `KVM_SET_USER_MEMORY_REGION`. The guest still sees only its granted slots: the view is the
//! VMM's own address space, which can already reach all pool memory. A grant from a different
//! memfd than the view's falls back to a mapping of its own.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use balloon::gcma::{GrantMapper, GrantWindow, MapError};
use gcma_host::api::ContigGrant;
use gcma_host::range::RangeAllocator;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

use crate::abi::PAGE_SIZE;
use crate::error::{Error, Result};

/// One grant as mapped.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    slot: u32,
    host_addr: usize,
    len_bytes: u64,
    grant: ContigGrant,
    /// The host mapping belongs to this grant alone (unmapped with it), rather than to the view.
    owned: bool,
}

/// A populated shared mapping of a whole pool memfd.
#[derive(Debug, Clone, Copy)]
struct PoolView {
    dev: u64,
    ino: u64,
    base: usize,
    len: usize,
}

/// Device and inode of an fd, and its size.
fn identify(fd: BorrowedFd<'_>) -> std::io::Result<(u64, u64, u64)> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is a live descriptor and `st` a valid out-pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.st_dev, st.st_ino, st.st_size as u64))
}

#[derive(Debug)]
struct State {
    /// Free guest page numbers of the window.
    space: RangeAllocator,
    /// Live mappings by guest-physical address.
    mapped: HashMap<u64, Mapping>,
    /// Memory slots given back by unmaps, reused first.
    free_slots: Vec<u32>,
    /// Next never-used slot.
    next_slot: u32,
    /// The whole-pool mapping grants point into.
    view: Option<PoolView>,
}

/// Counts describing the mapper, for tests, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantWindowUsage {
    /// Grants mapped now.
    pub mapped: usize,
    /// Bytes of the window not used by a grant.
    pub free_bytes: u64,
    /// Distinct memory slots ever used (recycling keeps this at the peak of live grants).
    pub slots_used: u32,
}

/// Maps pool grants into a KVM guest's grant window.
pub struct KvmGrantMapper {
    vm: Arc<VmFd>,
    window: GrantWindow,
    first_slot: u32,
    slot_limit: u32,
    state: Mutex<State>,
}

impl std::fmt::Debug for KvmGrantMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmGrantMapper")
            .field("window", &self.window)
            .field("usage", &self.usage())
            .finish_non_exhaustive()
    }
}

fn host_error(what: &str, e: impl std::fmt::Display) -> MapError {
    MapError::Host(std::io::Error::other(format!("{what}: {e}")))
}

impl KvmGrantMapper {
    /// A mapper for `window` (page-aligned, non-empty) of `vm`, using memory slots
    /// `first_slot..slot_limit`.
    pub fn new(
        vm: Arc<VmFd>,
        window: GrantWindow,
        first_slot: u32,
        slot_limit: u32,
    ) -> Result<Self> {
        if !window.gpa.is_multiple_of(PAGE_SIZE)
            || !window.len_bytes.is_multiple_of(PAGE_SIZE)
            || window.len_bytes == 0
        {
            return Err(Error::Config(format!(
                "grant window {:#x}+{:#x} is not page-aligned and non-empty",
                window.gpa, window.len_bytes
            )));
        }
        if first_slot >= slot_limit {
            return Err(Error::Config("no memory slot left for grants".into()));
        }
        let space = RangeAllocator::new(window.gpa / PAGE_SIZE, window.len_bytes / PAGE_SIZE)
            .map_err(|e| Error::Config(format!("grant window: {e}")))?;
        Ok(KvmGrantMapper {
            vm,
            window,
            first_slot,
            slot_limit,
            state: Mutex::new(State {
                space,
                mapped: HashMap::new(),
                free_slots: Vec::new(),
                next_slot: first_slot,
                view: None,
            }),
        })
    }

    /// Maps and populates the whole pool memfd now, so that grants only need a memory slot
    /// (otherwise the first grant pays for it). Idempotent for the same memfd.
    pub fn premap(&self, pool_memfd: BorrowedFd<'_>) -> std::io::Result<()> {
        let mut s = self.lock();
        Self::view_for(&mut s, pool_memfd).map(|_| ())
    }

    /// The pool view for `fd`, made if there is none yet; `None` if the view is another memfd's.
    fn view_for(s: &mut State, fd: BorrowedFd<'_>) -> std::io::Result<Option<PoolView>> {
        let (dev, ino, size) = identify(fd)?;
        if let Some(v) = s.view {
            return Ok((v.dev == dev && v.ino == ino).then_some(v));
        }
        let len = usize::try_from(size).map_err(std::io::Error::other)?;
        if len == 0 {
            return Ok(None);
        }
        // SAFETY: a new shared mapping of the memfd, checked below, owned by the mapper until drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let v = PoolView {
            dev,
            ino,
            base: base as usize,
            len,
        };
        s.view = Some(v);
        Ok(Some(v))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is mapped now.
    pub fn usage(&self) -> GrantWindowUsage {
        let s = self.lock();
        GrantWindowUsage {
            mapped: s.mapped.len(),
            free_bytes: s.space.free_bytes() * PAGE_SIZE,
            slots_used: s.next_slot - self.first_slot,
        }
    }

    /// The grants mapped now, with their guest-physical addresses, lowest address first.
    pub fn grants(&self) -> Vec<(u64, ContigGrant)> {
        let mut v: Vec<(u64, ContigGrant)> = self
            .lock()
            .mapped
            .iter()
            .map(|(&gpa, m)| (gpa, m.grant))
            .collect();
        v.sort_by_key(|(gpa, _)| *gpa);
        v
    }

    fn set_slot(
        &self,
        slot: u32,
        gpa: u64,
        len_bytes: u64,
        host_addr: usize,
    ) -> std::io::Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: len_bytes,
            userspace_addr: host_addr as u64,
        };
        // SAFETY: when adding, `host_addr..+len_bytes` is a live shared mapping owned by this
        // mapper until the slot is removed again (size 0), which always happens before munmap.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn remove(&self, gpa: u64, m: Mapping) -> std::io::Result<()> {
        // A slot is deleted by setting its size to 0.
        self.set_slot(m.slot, gpa, 0, m.host_addr)?;
        if m.owned {
            // SAFETY: the mapping was created by `map` with this address and length and nothing
            // refers to it any more (the guest lost access when the slot was removed).
            unsafe { libc::munmap(m.host_addr as *mut libc::c_void, m.len_bytes as usize) };
        }
        Ok(())
    }
}

impl GrantMapper for KvmGrantMapper {
    fn window(&self) -> GrantWindow {
        self.window
    }

    fn map(
        &self,
        pool_memfd: BorrowedFd<'_>,
        grant: &ContigGrant,
        align_pages: u64,
    ) -> std::result::Result<u64, MapError> {
        let len_bytes = grant.len_bytes();
        let len = usize::try_from(len_bytes).map_err(|e| host_error("grant length", e))?;
        let offset = libc::off_t::try_from(grant.offset_bytes())
            .map_err(|e| host_error("grant offset", e))?;
        let mut s = self.lock();
        let page = s
            .space
            .alloc(grant.nr_pages, align_pages.max(1))
            .map_err(|_| MapError::WindowFull {
                nr_pages: grant.nr_pages,
                align_pages,
            })?;
        let gpa = page * PAGE_SIZE;
        let slot = match s.free_slots.pop() {
            Some(slot) => slot,
            None if s.next_slot < self.slot_limit => {
                s.next_slot += 1;
                s.next_slot - 1
            }
            None => {
                let _ = s.space.free(page);
                return Err(host_error("memory slots", "all in use"));
            }
        };
        let view = Self::view_for(&mut s, pool_memfd).map_err(MapError::Host);
        let in_view = match view {
            Ok(Some(v)) if grant.offset_bytes().saturating_add(len_bytes) <= v.len as u64 => {
                Some(v.base + offset as usize)
            }
            _ => None,
        };
        let (host, owned) = match in_view {
            Some(addr) => (addr as *mut libc::c_void, false),
            None => {
                // SAFETY: a new shared mapping of the caller's memfd; checked for failure below
                // and owned by this mapper until `unmap` or drop.
                let host = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        // Populate the host page tables now, in one call: otherwise every first
                        // guest touch of a page takes a host page fault inside KVM's fault path.
                        libc::MAP_SHARED | libc::MAP_POPULATE,
                        pool_memfd.as_raw_fd(),
                        offset,
                    )
                };
                (host, true)
            }
        };
        let host_addr = host as usize;
        if let Err(e) = self.set_slot(slot, gpa, len_bytes, host_addr) {
            if owned {
                // SAFETY: unmapping the mapping made just above; the guest never saw it.
                unsafe { libc::munmap(host, len) };
            }
            let _ = s.space.free(page);
            s.free_slots.push(slot);
            return Err(MapError::Host(e));
        }
        s.mapped.insert(
            gpa,
            Mapping {
                slot,
                host_addr,
                len_bytes,
                grant: *grant,
                owned,
            },
        );
        Ok(gpa)
    }

    fn unmap(&self, gpa: u64, grant: &ContigGrant) -> std::result::Result<(), MapError> {
        let mut s = self.lock();
        let m = match s.mapped.get(&gpa) {
            Some(m) if m.len_bytes == grant.len_bytes() => *m,
            _ => return Err(MapError::NotMapped(gpa)),
        };
        self.remove(gpa, m)?;
        s.mapped.remove(&gpa);
        s.free_slots.push(m.slot);
        s.space
            .free(gpa / PAGE_SIZE)
            .map_err(|e| host_error("grant window bookkeeping", e))?;
        Ok(())
    }
}

impl Drop for KvmGrantMapper {
    fn drop(&mut self) {
        let mapped: Vec<(u64, Mapping)> = self.lock().mapped.drain().collect();
        for (gpa, m) in mapped {
            if let Err(e) = self.set_slot(m.slot, gpa, 0, m.host_addr) {
                log::warn!("removing the memory slot of grant {gpa:#x} on shutdown: {e}");
            }
            if m.owned {
                // SAFETY: the mapping was created by `map`; no vCPU can run any more (the mapper
                // is dropped with the VM), so nothing reaches it.
                unsafe { libc::munmap(m.host_addr as *mut libc::c_void, m.len_bytes as usize) };
            }
        }
        if let Some(v) = self.lock().view.take() {
            // SAFETY: the view was mapped by `view_for` with this address and length; every slot
            // pointing into it was removed above.
            unsafe { libc::munmap(v.base as *mut libc::c_void, v.len) };
        }
    }
}
