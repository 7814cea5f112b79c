//! The previous way of mapping grants, kept to measure against: one KVM memory slot per grant,
//! pointing into one populated host mapping of the whole pool (the *pool view*).
//!
//! Each grant costs a `KVM_SET_USER_MEMORY_REGION` to add its slot and another to remove it;
//! `vmm/examples/grant_bench.rs` compares it with the one-slot window of [`super::KvmWindow`].
//! Select it with [`crate::kvm::vm::GrantMapping::SlotPerGrant`].

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use balloon::gcma::{WindowMapper, WindowRange};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

#[derive(Debug)]
struct Slots {
    /// Slot of each mapped grant, by its offset in the window.
    by_offset: HashMap<u64, u32>,
    free: Vec<u32>,
    next: u32,
}

/// A [`WindowMapper`] that adds a KVM memory slot per grant.
#[derive(Debug)]
pub struct SlotPerGrant {
    vm: Arc<VmFd>,
    range: WindowRange,
    view: usize,
    view_len: usize,
    slot_limit: u32,
    slots: Mutex<Slots>,
}

impl SlotPerGrant {
    /// Maps and populates the whole pool memfd once, and places grants of `range` in memory
    /// slots `first_slot..slot_limit` of `vm`.
    pub fn new(
        vm: Arc<VmFd>,
        range: WindowRange,
        pool_memfd: BorrowedFd<'_>,
        pool_len: u64,
        first_slot: u32,
        slot_limit: u32,
    ) -> std::io::Result<Self> {
        let view_len = usize::try_from(pool_len).map_err(std::io::Error::other)?;
        // SAFETY: a new shared mapping of the memfd at an address the kernel picks; checked
        // below and owned by this mapper until drop.
        let view = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                view_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                pool_memfd.as_raw_fd(),
                0,
            )
        };
        if view == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SlotPerGrant {
            vm,
            range,
            view: view as usize,
            view_len,
            slot_limit,
            slots: Mutex::new(Slots {
                by_offset: HashMap::new(),
                free: Vec::new(),
                next: first_slot,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_slot(&self, slot: u32, gpa: u64, len: u64, host: usize) -> std::io::Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: len,
            userspace_addr: host as u64,
        };
        // SAFETY: when adding, `host..host+len` lies inside the pool view, which this mapper
        // keeps mapped until every slot is removed (drop).
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

impl WindowMapper for SlotPerGrant {
    fn map(&self, offset: u64, pool_offset: u64, len: u64) -> std::io::Result<()> {
        let end = pool_offset
            .checked_add(len)
            .ok_or_else(|| std::io::Error::other("overflow"))?;
        if end > self.view_len as u64 {
            return Err(std::io::Error::other("grant outside the pool view"));
        }
        let mut s = self.lock();
        let slot = match s.free.pop() {
            Some(slot) => slot,
            None if s.next < self.slot_limit => {
                s.next += 1;
                s.next - 1
            }
            None => return Err(std::io::Error::other("all memory slots in use")),
        };
        let host = self.view + pool_offset as usize;
        if let Err(e) = self.set_slot(slot, self.range.gpa + offset, len, host) {
            s.free.push(slot);
            return Err(e);
        }
        s.by_offset.insert(offset, slot);
        Ok(())
    }

    fn unmap(&self, offset: u64, _len: u64) -> std::io::Result<()> {
        let mut s = self.lock();
        let slot = *s
            .by_offset
            .get(&offset)
            .ok_or_else(|| std::io::Error::other("nothing mapped there"))?;
        // A slot is deleted by setting its size to 0.
        self.set_slot(slot, self.range.gpa + offset, 0, self.view)?;
        s.by_offset.remove(&offset);
        s.free.push(slot);
        Ok(())
    }
}

impl Drop for SlotPerGrant {
    fn drop(&mut self) {
        let slots: Vec<(u64, u32)> = self.lock().by_offset.drain().collect();
        for (offset, slot) in slots {
            if let Err(e) = self.set_slot(slot, self.range.gpa + offset, 0, self.view) {
                log::warn!("removing the memory slot of a grant on shutdown: {e}");
            }
        }
        // SAFETY: the view was mapped in `new` with this address and length; every slot pointing
        // into it was removed above.
        unsafe { libc::munmap(self.view as *mut libc::c_void, self.view_len) };
    }
}
