//! The grant window on the KVM side: where a VM's contiguous pool grants appear.
//!
//! [`KvmWindow`] reserves one host range for the whole window ([`HostWindow`]) and registers it
//! once as one KVM memory slot. Grants are then mapped into the range with
//! `mmap(MAP_FIXED | MAP_SHARED)` of the pool's memfd and replaced by an inaccessible mapping when
//! freed ([`balloon::gcma::PoolMapping`] does both); KVM follows through its MMU notifier, so no
//! memory slot changes per grant. `balloon`'s [`GrantWindow`] owns which grant is where; this
//! module only provides the memory.
//!
//! A guest access to a part of the window where nothing is mapped reaches no host memory. KVM
//! reports it as an MMIO exit at that address (nested KVM on these hosts), as a
//! `KVM_EXIT_MEMORY_FAULT`, or as `EFAULT` from `KVM_RUN` (hardware KVM); the run loop reports all
//! three as [`crate::VmOutcome::MemoryFault`].
//!
//! [`slots`] keeps the previous design, one KVM memory slot per grant, for the side-by-side
//! measurement in `vmm/examples/grant_bench.rs`.

pub mod slots;

use std::sync::Arc;

use balloon::gcma::{GrantWindow, HostWindow, PoolMapping, WindowRange};
use gcma_host::api::GcmaBackend;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

use crate::abi::PAGE_SIZE;
use crate::error::{Error, Result};

/// A VM's grant window: one reserved host range, registered as one KVM memory slot.
#[derive(Debug)]
pub struct KvmWindow {
    vm: Arc<VmFd>,
    range: WindowRange,
    slot: u32,
    host: Arc<HostWindow>,
}

impl KvmWindow {
    /// Reserves host space for `range` (page-aligned, non-empty) and registers it with `vm` as
    /// memory slot `slot`.
    pub fn new(vm: Arc<VmFd>, range: WindowRange, slot: u32) -> Result<Self> {
        if !range.gpa.is_multiple_of(PAGE_SIZE)
            || !range.len_bytes.is_multiple_of(PAGE_SIZE)
            || range.len_bytes == 0
        {
            return Err(Error::Config(format!(
                "grant window {:#x}+{:#x} is not page-aligned and non-empty",
                range.gpa, range.len_bytes
            )));
        }
        let host = Arc::new(
            HostWindow::reserve(range.len_bytes).map_err(|source| Error::Io {
                op: "reserving host space for the grant window",
                source,
            })?,
        );
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: range.gpa,
            memory_size: range.len_bytes,
            userspace_addr: host.host_addr() as u64,
        };
        // SAFETY: the slot points at `host`'s reserved range of exactly `len_bytes`, which this
        // window keeps alive (an `Arc`) until `drop` has removed the slot again.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION (grant window)"))?;
        Ok(KvmWindow {
            vm,
            range,
            slot,
            host,
        })
    }

    /// Where the window lies in guest-physical space.
    pub fn range(&self) -> WindowRange {
        self.range
    }

    /// The window's host range (over vhost-user, the frontend maps the daemon's pool into it).
    pub fn host(&self) -> &Arc<HostWindow> {
        &self.host
    }

    /// Binds the window to `pool`: the grant window a virtio-gcma device of this VM uses.
    pub fn bind(&self, pool: Arc<dyn GcmaBackend>) -> Result<Arc<GrantWindow>> {
        let mapping =
            PoolMapping::new(self.host.clone(), pool.memfd()).map_err(|source| Error::Io {
                op: "duplicating the pool's memfd",
                source,
            })?;
        let window = GrantWindow::new(self.range, pool, Arc::new(mapping))
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Arc::new(window))
    }
}

impl Drop for KvmWindow {
    fn drop(&mut self) {
        let region = kvm_userspace_memory_region {
            slot: self.slot,
            flags: 0,
            guest_phys_addr: self.range.gpa,
            memory_size: 0,
            userspace_addr: self.host.host_addr() as u64,
        };
        // SAFETY: a memory size of 0 deletes the slot; the host range stays alive until after.
        if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
            log::warn!("removing the grant window's memory slot: {e}");
        }
    }
}
