//! A split virtqueue, driver side, with fixed request slots.
//!
//! Every virtio-gcma request is at most three buffers (header, data page, response), so the queue
//! is cut into `size / 3` *slots*: slot `s` owns descriptors `3s..3s+3`, a 128-byte area for its
//! header and response, and one data page. A used element's head index names its slot, so no
//! descriptor free list is needed and a batch is "fill slots, publish, one notify, collect".

use core::ptr::NonNull;
use core::sync::atomic::{fence, Ordering};

use gcma_proto::gcma::{PAGE_SIZE, REQUEST_HEADER_LEN, RESPONSE_LEN};

use crate::hal::DmaRegion;
use crate::mmio::{VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

/// Most request slots per queue (a queue of 256 entries has 85).
pub(crate) const MAX_SLOTS: usize = 128;

/// Slots of a queue of `size` entries.
fn nr_slots(size: u16) -> usize {
    usize::from(size / 3).clamp(1, MAX_SLOTS)
}

/// Bytes of a slot's small area: header at 0, response at [`RESP_OFFSET`].
const SMALL_LEN: usize = 128;
const RESP_OFFSET: usize = 64;

/// A byte range of DMA memory with its guest-physical address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dma {
    ptr: NonNull<u8>,
    gpa: u64,
    len: usize,
}

impl Dma {
    pub(crate) fn from_region(r: DmaRegion) -> Self {
        Dma {
            ptr: r.vaddr,
            gpa: r.gpa,
            len: r.pages * PAGE_SIZE,
        }
    }

    pub(crate) fn sub(&self, offset: usize, len: usize) -> Dma {
        assert!(offset + len <= self.len, "DMA sub-range out of bounds");
        Dma {
            // SAFETY: offset + len is within the region (asserted above).
            ptr: unsafe { self.ptr.add(offset) },
            gpa: self.gpa + offset as u64,
            len,
        }
    }

    pub(crate) fn gpa(&self) -> u64 {
        self.gpa
    }

    pub(crate) fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= self.len, "DMA write out of bounds");
        // SAFETY: in bounds (asserted); the region is valid DMA memory owned by the driver (Hal
        // contract); the device does not touch it while the driver fills it.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len())
        }
    }

    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= self.len, "DMA read out of bounds");
        // SAFETY: in bounds (asserted); read after the device returned the buffer (acquire fence
        // taken by the caller).
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            )
        }
    }

    pub(crate) fn zero(&self) {
        // SAFETY: the whole region is valid for writes (Hal contract).
        unsafe { core::ptr::write_bytes(self.ptr.as_ptr(), 0, self.len) }
    }

    fn write_u16(&self, offset: usize, v: u16) {
        assert!(
            offset + 2 <= self.len && offset.is_multiple_of(2),
            "bad u16 offset"
        );
        // SAFETY: in bounds and aligned (region is page-aligned; offset checked).
        unsafe { core::ptr::write_volatile(self.ptr.as_ptr().add(offset).cast::<u16>(), v.to_le()) }
    }

    fn read_u16(&self, offset: usize) -> u16 {
        assert!(
            offset + 2 <= self.len && offset.is_multiple_of(2),
            "bad u16 offset"
        );
        // SAFETY: in bounds and aligned; volatile because the device writes it concurrently.
        u16::from_le(unsafe {
            core::ptr::read_volatile(self.ptr.as_ptr().add(offset).cast::<u16>())
        })
    }

    fn read_u32(&self, offset: usize) -> u32 {
        assert!(
            offset + 4 <= self.len && offset.is_multiple_of(4),
            "bad u32 offset"
        );
        // SAFETY: in bounds and aligned; volatile because the device writes it.
        u32::from_le(unsafe {
            core::ptr::read_volatile(self.ptr.as_ptr().add(offset).cast::<u32>())
        })
    }
}

/// One request slot: its descriptors, header/response area and data page.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    small: Dma,
    page: Dma,
}

impl Slot {
    pub(crate) fn page(&self) -> &Dma {
        &self.page
    }

    pub(crate) fn response(&self) -> [u8; RESPONSE_LEN] {
        let mut r = [0u8; RESPONSE_LEN];
        self.small.read(RESP_OFFSET, &mut r);
        r
    }
}

/// The data part of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotData {
    /// Header and response only.
    None,
    /// `len` device-readable bytes of the slot page.
    ToDevice(u32),
    /// `len` device-writable bytes of the slot page.
    FromDevice(u32),
}

/// Layout sizes of a split ring of `size` entries: (descriptor table, avail offset, used offset,
/// total bytes).
fn ring_layout(size: u16) -> (usize, usize, usize) {
    let n = usize::from(size);
    let avail = 16 * n;
    let used = (avail + 6 + 2 * n).next_multiple_of(4);
    (avail, used, used + 6 + 8 * n)
}

/// Pages of DMA memory a queue of `size` entries needs (rings, slot areas, slot pages).
pub(crate) fn dma_pages(size: u16) -> usize {
    let slots = nr_slots(size);
    let (_, _, ring) = ring_layout(size);
    ring.div_ceil(PAGE_SIZE) + (slots * SMALL_LEN).div_ceil(PAGE_SIZE) + slots
}

/// The driver side of one split virtqueue.
#[derive(Debug)]
pub(crate) struct SplitQueue {
    size: u16,
    ring: Dma,
    avail_off: usize,
    used_off: usize,
    slots: alloc::vec::Vec<Slot>,
    avail_idx: u16,
    last_used: u16,
}

impl SplitQueue {
    /// Lays a queue of `size` entries (a power of two ≥ 4) over `mem` (at least
    /// [`dma_pages`]`(size)` pages).
    pub(crate) fn new(size: u16, mem: Dma) -> Self {
        let (avail_off, used_off, ring_len) = ring_layout(size);
        let ring_pages = ring_len.div_ceil(PAGE_SIZE);
        let nslots = nr_slots(size);
        let small_pages = (nslots * SMALL_LEN).div_ceil(PAGE_SIZE);
        let ring = mem.sub(0, ring_pages * PAGE_SIZE);
        let small = mem.sub(ring_pages * PAGE_SIZE, small_pages * PAGE_SIZE);
        let pages_at = (ring_pages + small_pages) * PAGE_SIZE;
        let slots = (0..nslots)
            .map(|s| Slot {
                small: small.sub(s * SMALL_LEN, SMALL_LEN),
                page: mem.sub(pages_at + s * PAGE_SIZE, PAGE_SIZE),
            })
            .collect();
        let mut q = SplitQueue {
            size,
            ring,
            avail_off,
            used_off,
            slots,
            avail_idx: 0,
            last_used: 0,
        };
        q.clear();
        q
    }

    /// Forgets everything in flight and zeroes the rings (after a device reset).
    pub(crate) fn clear(&mut self) {
        self.ring.zero();
        self.ring
            .write_u16(self.avail_off, VIRTQ_AVAIL_F_NO_INTERRUPT);
        self.avail_idx = 0;
        self.last_used = 0;
    }

    /// Turns the device's used-buffer interrupts on or off (`VIRTQ_AVAIL_F_NO_INTERRUPT`),
    /// ordered before the used-ring reads that follow (virtio 1.2 §2.7.7: the driver must look
    /// at the ring again after turning them on, or miss a buffer used just before).
    pub(crate) fn set_interrupts(&mut self, on: bool) {
        let flags = if on { 0 } else { VIRTQ_AVAIL_F_NO_INTERRUPT };
        self.ring.write_u16(self.avail_off, flags);
        fence(Ordering::SeqCst);
    }

    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn slot(&self, s: usize) -> &Slot {
        &self.slots[s]
    }

    pub(crate) fn desc_gpa(&self) -> u64 {
        self.ring.gpa()
    }

    pub(crate) fn avail_gpa(&self) -> u64 {
        self.ring.gpa() + self.avail_off as u64
    }

    pub(crate) fn used_gpa(&self) -> u64 {
        self.ring.gpa() + self.used_off as u64
    }

    fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.ring.write(16 * usize::from(index), &d);
    }

    /// Writes slot `s`'s header and descriptors and puts it on the available ring (without
    /// publishing the new index: see [`publish`](Self::publish)).
    pub(crate) fn fill(&mut self, s: usize, header: &[u8; REQUEST_HEADER_LEN], data: SlotData) {
        let slot = self.slots[s];
        slot.small.write(0, header);
        slot.small.write(RESP_OFFSET, &[0xffu8; RESPONSE_LEN]);
        let base = (3 * s) as u16;
        let resp_gpa = slot.small.gpa() + RESP_OFFSET as u64;
        let hdr_gpa = slot.small.gpa();
        match data {
            SlotData::None => {
                self.write_desc(
                    base,
                    hdr_gpa,
                    REQUEST_HEADER_LEN as u32,
                    VIRTQ_DESC_F_NEXT,
                    base + 2,
                );
            }
            SlotData::ToDevice(len) | SlotData::FromDevice(len) => {
                let w = if matches!(data, SlotData::FromDevice(_)) {
                    VIRTQ_DESC_F_WRITE
                } else {
                    0
                };
                self.write_desc(
                    base,
                    hdr_gpa,
                    REQUEST_HEADER_LEN as u32,
                    VIRTQ_DESC_F_NEXT,
                    base + 1,
                );
                self.write_desc(
                    base + 1,
                    slot.page.gpa(),
                    len,
                    w | VIRTQ_DESC_F_NEXT,
                    base + 2,
                );
            }
        }
        self.write_desc(
            base + 2,
            resp_gpa,
            RESPONSE_LEN as u32,
            VIRTQ_DESC_F_WRITE,
            0,
        );
        let entry = self.avail_off + 4 + 2 * usize::from(self.avail_idx % self.size);
        self.ring.write_u16(entry, base);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Makes every filled slot visible to the device.
    pub(crate) fn publish(&mut self) {
        fence(Ordering::SeqCst);
        self.ring.write_u16(self.avail_off + 2, self.avail_idx);
        fence(Ordering::SeqCst);
    }

    /// The next used element: `(slot, used length)`. A head that names no slot start is returned
    /// as `Err(head)`.
    pub(crate) fn pop_used(&mut self) -> Option<Result<(usize, u32), u16>> {
        let idx = self.ring.read_u16(self.used_off + 2);
        if idx == self.last_used {
            return None;
        }
        fence(Ordering::Acquire);
        let elem = self.used_off + 4 + 8 * usize::from(self.last_used % self.size);
        let id = self.ring.read_u32(elem);
        let len = self.ring.read_u32(elem + 4);
        self.last_used = self.last_used.wrapping_add(1);
        let s = (id / 3) as usize;
        if !id.is_multiple_of(3) || s >= self.slots.len() {
            return Some(Err(id as u16));
        }
        Some(Ok((s, len)))
    }
}
