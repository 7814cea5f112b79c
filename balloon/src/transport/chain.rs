//! Strict descriptor-chain handling on top of `virtio-queue`.
//!
//! `virtio-queue`'s own chain iterator silently stops at loops and unreadable descriptors; a device
//! that must count and report hostile guests needs to know *why* a chain ended. [`pop_chain_into`]
//! takes the next head from the available ring through [`Queue`], then walks the descriptor table
//! itself and returns either a fully validated chain or a [`ChainError`]. Devices drain queues
//! with [`super::drain::drain_queue`], which is built on it.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::{GuestMemoryMmap, InterruptHandle};
use crate::error::ChainError;

pub use gcma_proto::virtq::{
    DESC_SIZE, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
};

/// One validated buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical start of the buffer.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device may write it (`VIRTQ_DESC_F_WRITE`).
    pub writable: bool,
}

/// One chain as a device handles it: its head index and its validated buffers, in chain order
/// (borrowed from the vector [`pop_chain_into`] filled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainRef<'a> {
    /// Index of the head descriptor (what goes into the used ring).
    pub head: u16,
    /// The buffers in chain order.
    pub descs: &'a [Desc],
}

impl<'a> ChainRef<'a> {
    /// The device-readable buffers, in order.
    pub fn readable(&self) -> impl Iterator<Item = &'a Desc> {
        self.descs.iter().filter(|d| !d.writable)
    }

    /// The device-writable buffers, in order.
    pub fn writable(&self) -> impl Iterator<Item = &'a Desc> {
        self.descs.iter().filter(|d| d.writable)
    }

    /// Whether every readable buffer precedes every writable one, as the spec requires.
    pub fn is_ordered(&self) -> bool {
        let first_writable = self
            .descs
            .iter()
            .position(|d| d.writable)
            .unwrap_or(self.descs.len());
        self.descs[first_writable..].iter().all(|d| d.writable)
    }
}

/// What [`pop_chain_into`] took off the available ring; the buffers are in the caller's vector.
#[derive(Debug)]
pub enum PoppedHead {
    /// A chain with valid structure and all buffers inside guest memory, headed by this index.
    Chain(u16),
    /// The head was valid but the chain is not usable (a buffer outside guest memory): the device
    /// answers it with an error where it can, and counts it. Only non-structural errors land here.
    Rejected {
        /// Head index to return.
        head: u16,
        /// What was wrong.
        error: ChainError,
    },
}

/// Takes the next chain off `queue`'s available ring, if any. The chain's buffers replace the
/// contents of `descs`, which a device keeps and reuses for every chain (no allocation per
/// chain); after `Ok(None)` or `Err` its contents are unspecified.
///
/// `Err` means the ring itself is broken (available index too far ahead, descriptor loop, index
/// out of range, indirect descriptors we never offered): the device should enter
/// `DEVICE_NEEDS_RESET`. A chain whose structure is sound but whose buffers leave guest memory
/// comes back as [`PoppedHead::Rejected`], with its buffers in `descs` as the guest described them.
pub fn pop_chain_into(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    descs: &mut Vec<Desc>,
) -> Result<Option<PoppedHead>, ChainError> {
    // Snapshot the available index first: the driver may publish more buffers while we look
    // (the device runs on an event loop thread while the vCPU runs), so "empty" must be decided
    // on one read, never by comparing two reads.
    if queue.avail_idx(mem, Ordering::Acquire)? == Wrapping(queue.next_avail()) {
        return Ok(None);
    }
    let head = {
        let mut iter = queue.iter(mem)?;
        match iter.next() {
            Some(c) => c.head_index(),
            None => {
                // At least one entry was published, yet `AvailIter` ended: an unreadable entry.
                return Err(ChainError::RingAccess(GuestAddress(queue.avail_ring())));
            }
        }
    };
    walk_chain(queue, mem, head, descs).map(Some)
}

fn walk_chain(
    queue: &Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    descs: &mut Vec<Desc>,
) -> Result<PoppedHead, ChainError> {
    descs.clear();
    let size = queue.size();
    let table = GuestAddress(queue.desc_table());
    // Translate the descriptor table once when it lies inside one region (it always does for a
    // queue that passed activation); otherwise every descriptor is looked up on its own.
    let table_slice = mem
        .get_slice(table, usize::from(size) * DESC_SIZE as usize)
        .ok();
    // The region of the last buffer checked: a chain's buffers usually share one.
    let mut region: Option<(u64, u64)> = None;
    let mut index = head;
    let mut out_of_range = None;
    loop {
        if index >= size {
            return Err(ChainError::IndexOutOfRange { index, size });
        }
        if descs.len() >= usize::from(size) {
            return Err(ChainError::TooLong { size });
        }
        let offset = u64::from(index) * DESC_SIZE;
        let at = table
            .checked_add(offset)
            .ok_or(ChainError::RingAccess(table))?;
        let mut raw = [0u8; DESC_SIZE as usize];
        let read = match &table_slice {
            Some(t) => t.read_slice(&mut raw, offset as usize).is_ok(),
            None => mem.read_slice(&mut raw, at).is_ok(),
        };
        if !read {
            return Err(ChainError::RingAccess(at));
        }
        let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        if flags & VIRTQ_DESC_F_INDIRECT != 0 {
            return Err(ChainError::IndirectNotNegotiated);
        }
        if out_of_range.is_none() && len > 0 && !buffer_in_memory(mem, &mut region, addr, len) {
            out_of_range = Some(ChainError::BufferOutOfRange { addr, len });
        }
        descs.push(Desc {
            addr: GuestAddress(addr),
            len,
            writable: flags & VIRTQ_DESC_F_WRITE != 0,
        });
        if flags & VIRTQ_DESC_F_NEXT == 0 {
            break;
        }
        index = next;
    }
    Ok(match out_of_range {
        Some(error) => PoppedHead::Rejected { head, error },
        None => PoppedHead::Chain(head),
    })
}

/// Whether `[addr, addr + len)` is guest memory. `region` caches the `[start, end)` of the last
/// region a buffer fell in, so a chain whose buffers share a region costs one lookup.
fn buffer_in_memory(
    mem: &GuestMemoryMmap,
    region: &mut Option<(u64, u64)>,
    addr: u64,
    len: u32,
) -> bool {
    let Some(end) = addr.checked_add(u64::from(len)) else {
        return false;
    };
    if let Some((start, stop)) = *region {
        if addr >= start && end <= stop {
            return true;
        }
    }
    if let Some(r) = mem.find_region(GuestAddress(addr)) {
        let start = r.start_addr().raw_value();
        let stop = start.saturating_add(r.len());
        *region = Some((start, stop));
        if end <= stop {
            return true;
        }
    }
    // Spanning adjacent regions (or outside memory): the general check decides.
    GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize)
}

/// Put `head` on the used ring with `len` bytes written.
pub fn add_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
) -> Result<(), ChainError> {
    queue.add_used(mem, head, len)?;
    Ok(())
}

/// Signal used buffers if the driver wants to hear about them: with `EVENT_IDX`, as its
/// `used_event` says; without, unless the available ring's flags hold
/// `VIRTQ_AVAIL_F_NO_INTERRUPT` (virtio 1.2 §2.7.7.2: the device SHOULD NOT notify then;
/// `virtio-queue` leaves that flag to the device). A driver that polls with interrupts off
/// (the guest agent) thus costs no interrupt per request, which for a vhost-user backend is a
/// wake-up of the VMM's thread that forwards it. Call it only after adding at least one used
/// element: interrupts with nothing to report make Linux disable a shared line as spurious.
pub fn notify_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &InterruptHandle,
) -> Result<bool, ChainError> {
    if !queue.event_idx_enabled() {
        // Order the used-ring writes before reading the flags, as the driver orders its flag
        // write before re-reading the used index (the pairing `needs_notification` uses).
        std::sync::atomic::fence(Ordering::SeqCst);
        let flags = mem.load::<u16>(GuestAddress(queue.avail_ring()), Ordering::Acquire);
        // An unreadable ring is reported by the next pop; signalling is the safe answer now.
        if flags.is_ok_and(|f| f & VIRTQ_AVAIL_F_NO_INTERRUPT != 0) {
            return Ok(false);
        }
    }
    if queue.needs_notification(mem)? {
        interrupt.signal_used().map_err(ChainError::Interrupt)?;
        return Ok(true);
    }
    Ok(false)
}

/// Read a little-endian value of `N` bytes from guest memory, or `None` outside it.
pub fn read_bytes<const N: usize>(mem: &GuestMemoryMmap, addr: GuestAddress) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    mem.read_slice(&mut buf, addr).ok().map(|_| buf)
}
