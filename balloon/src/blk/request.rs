//! One virtio-blk request: its header, data and status byte, spread over a validated chain.
//!
//! The device-readable part of a chain is a byte stream starting with the 16-byte
//! `virtio_blk_outhdr` (type, ioprio, sector) followed by OUT data or DISCARD/WRITE_ZEROES
//! segments; the device-writable part is IN data (or the GET_ID string) followed by one status
//! byte, the last writable byte. Descriptor boundaries carry no meaning (virtio 1.2 §2.7.4, "any
//! layout"): a header split over descriptors is as good as one in a single descriptor.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend};

use super::config::{MAX_DISCARD_SECTORS, MAX_DISCARD_SEG};
use super::metrics::{ReqStatus, ReqType};
use super::{BlkBackend, BlkQueue, BLK_ID_LEN, SECTOR_SIZE};
use crate::transport::chain::Desc;
use crate::transport::GuestMemoryMmap;

const HEADER_LEN: usize = 16;
const SEGMENT_LEN: usize = 16;

/// A guest buffer that could not be reached (cannot happen for a validated chain; handled
/// anyway).
#[derive(Debug)]
struct Fault;

/// A position in a list of buffers, with a byte budget.
struct Cursor<'d> {
    descs: &'d [Desc],
    i: usize,
    off: u64,
    left: u64,
}

impl<'d> Cursor<'d> {
    fn new(descs: &'d [Desc], limit: u64) -> Self {
        Cursor {
            descs,
            i: 0,
            off: 0,
            left: limit,
        }
    }

    fn remaining(&self) -> u64 {
        self.left
    }

    /// The next piece of at most `max` bytes: its guest address and length; advances past it.
    fn next_piece(&mut self, max: u64) -> Option<(GuestAddress, usize)> {
        while self.left > 0 && max > 0 {
            let d = self.descs.get(self.i)?;
            let avail = u64::from(d.len) - self.off;
            if avail == 0 {
                self.i += 1;
                self.off = 0;
                continue;
            }
            let n = avail.min(max).min(self.left);
            let addr = d.addr.checked_add(self.off)?;
            self.off += n;
            self.left -= n;
            return Some((addr, n as usize));
        }
        None
    }

    fn skip(&mut self, mut n: u64) {
        while n > 0 {
            match self.next_piece(n) {
                Some((_, k)) => n -= k as u64,
                None => return,
            }
        }
    }

    /// Copies the next `buf.len()` bytes of guest memory into `buf`.
    fn read(&mut self, mem: &GuestMemoryMmap, buf: &mut [u8]) -> Result<(), Fault> {
        let mut done = 0;
        while done < buf.len() {
            let (addr, n) = self.next_piece((buf.len() - done) as u64).ok_or(Fault)?;
            for s in mem.get_slices(addr, n) {
                let s = s.map_err(|_| Fault)?;
                let k = s.copy_to(&mut buf[done..]);
                done += k;
            }
        }
        Ok(())
    }

    /// Copies `buf` into the next `buf.len()` bytes of guest memory.
    fn write(&mut self, mem: &GuestMemoryMmap, buf: &[u8]) -> Result<(), Fault> {
        let mut done = 0;
        while done < buf.len() {
            let (addr, n) = self.next_piece((buf.len() - done) as u64).ok_or(Fault)?;
            for s in mem.get_slices(addr, n) {
                let s = s.map_err(|_| Fault)?;
                let k = s.len();
                s.copy_from(&buf[done..done + k]);
                done += k;
            }
        }
        Ok(())
    }
}

/// How a request ended: its status, and the guest-visible reason when the guest caused it.
enum Outcome {
    Ok,
    /// The guest's fault; answered with this status.
    Guest(ReqStatus, String),
    /// The storage failed.
    Storage(String),
}

/// Handles the chain in `q.descs`; returns what to count and the used length.
pub(super) fn handle<B: BlkBackend + ?Sized>(
    q: &mut BlkQueue<B>,
    mem: &GuestMemoryMmap,
) -> (ReqType, ReqStatus, u32) {
    let descs = std::mem::take(&mut q.descs);
    let r = handle_chain(q, mem, &descs);
    q.descs = descs;
    r
}

fn handle_chain<B: BlkBackend + ?Sized>(
    q: &mut BlkQueue<B>,
    mem: &GuestMemoryMmap,
    descs: &[Desc],
) -> (ReqType, ReqStatus, u32) {
    // Readable buffers first, then writable ones (virtio 1.2 §2.7.4.2).
    let first_w = descs.iter().position(|d| d.writable).unwrap_or(descs.len());
    let (readable, writable) = descs.split_at(first_w);
    let r_len: u64 = readable.iter().map(|d| u64::from(d.len)).sum();
    let w_len: u64 = writable.iter().map(|d| u64::from(d.len)).sum();
    if w_len == 0 || writable.iter().any(|d| !d.writable) {
        // No place for a status byte, or readable buffers after writable ones: nothing can be
        // answered in a way the driver would read.
        let n = q.metrics.unanswerable();
        guest_warn!(
            n,
            "virtio-blk {}: chain without a status byte or out of order, returned unused",
            q.name
        );
        return (ReqType::Other, ReqStatus::IoErr, 0);
    }
    let mut rd = Cursor::new(readable, r_len);
    let data_len = w_len - 1;
    let mut wr = Cursor::new(writable, data_len);
    let mut header = [0u8; HEADER_LEN];
    let (ty, outcome) = if r_len < HEADER_LEN as u64 {
        (
            ReqType::Other,
            Outcome::Guest(ReqStatus::IoErr, format!("header of {r_len} bytes")),
        )
    } else if rd.read(mem, &mut header).is_err() {
        (
            ReqType::Other,
            Outcome::Guest(ReqStatus::IoErr, "unreadable header".into()),
        )
    } else {
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        execute(q, mem, kind, sector, &mut rd, &mut wr)
    };
    let status = match &outcome {
        Outcome::Ok => ReqStatus::Ok,
        Outcome::Guest(s, why) => {
            let n = q.metrics.guest_error();
            guest_warn!(
                n,
                "virtio-blk {}: {} request refused: {why}",
                q.name,
                ty.name()
            );
            *s
        }
        Outcome::Storage(why) => {
            log::error!("virtio-blk {}: {} request failed: {why}", q.name, ty.name());
            ReqStatus::IoErr
        }
    };
    let code = match status {
        ReqStatus::Ok => VIRTIO_BLK_S_OK,
        ReqStatus::IoErr => VIRTIO_BLK_S_IOERR,
        ReqStatus::Unsupp => VIRTIO_BLK_S_UNSUPP,
    } as u8;
    // The status byte is the last writable byte, wherever the data ended.
    let written = data_len - wr.remaining();
    let mut st = Cursor::new(writable, w_len);
    st.skip(data_len);
    if st.write(mem, &[code]).is_err() {
        let n = q.metrics.unanswerable();
        guest_warn!(n, "virtio-blk {}: status byte unreachable", q.name);
        return (ty, status, 0);
    }
    let used = u32::try_from(written + 1).unwrap_or(u32::MAX);
    (ty, status, used)
}

/// Checks that `len` bytes at `sector` are whole sectors inside the disk; returns the byte
/// offset.
fn range(capacity: u64, sector: u64, len: u64) -> Result<u64, String> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(format!("length {len} is not a multiple of {SECTOR_SIZE}"));
    }
    let off = sector
        .checked_mul(SECTOR_SIZE)
        .filter(|off| off.checked_add(len).is_some_and(|end| end <= capacity))
        .ok_or_else(|| format!("sectors {sector}+{} beyond the disk", len / SECTOR_SIZE))?;
    Ok(off)
}

fn execute<B: BlkBackend + ?Sized>(
    q: &mut BlkQueue<B>,
    mem: &GuestMemoryMmap,
    kind: u32,
    sector: u64,
    rd: &mut Cursor<'_>,
    wr: &mut Cursor<'_>,
) -> (ReqType, Outcome) {
    let capacity = q.backend.capacity_bytes();
    let guest = |why: String| Outcome::Guest(ReqStatus::IoErr, why);
    match kind {
        VIRTIO_BLK_T_IN => {
            let len = wr.remaining();
            let mut off = match range(capacity, sector, len) {
                Ok(o) => o,
                Err(why) => return (ReqType::In, guest(why)),
            };
            let mut left = len;
            while left > 0 {
                let n = left.min(q.bounce.len() as u64) as usize;
                let buf = &mut q.bounce[..n];
                if let Err(e) = q.backend.read_at(off, buf) {
                    return (ReqType::In, Outcome::Storage(e.to_string()));
                }
                if wr.write(mem, buf).is_err() {
                    return (ReqType::In, guest("data buffer unreachable".into()));
                }
                off += n as u64;
                left -= n as u64;
            }
            q.metrics.moved(ReqType::In, len);
            (ReqType::In, Outcome::Ok)
        }
        VIRTIO_BLK_T_OUT => {
            let len = rd.remaining();
            let mut off = match range(capacity, sector, len) {
                Ok(o) => o,
                Err(why) => return (ReqType::Out, guest(why)),
            };
            let mut left = len;
            while left > 0 {
                let n = left.min(q.bounce.len() as u64) as usize;
                let buf = &mut q.bounce[..n];
                if rd.read(mem, buf).is_err() {
                    return (ReqType::Out, guest("data buffer unreachable".into()));
                }
                if let Err(e) = q.backend.write_at(off, buf) {
                    return (ReqType::Out, Outcome::Storage(e.to_string()));
                }
                off += n as u64;
                left -= n as u64;
            }
            q.metrics.moved(ReqType::Out, len);
            (ReqType::Out, Outcome::Ok)
        }
        VIRTIO_BLK_T_FLUSH => match q.backend.flush() {
            Ok(()) => (ReqType::Flush, Outcome::Ok),
            Err(e) => (ReqType::Flush, Outcome::Storage(e.to_string())),
        },
        VIRTIO_BLK_T_GET_ID => {
            let id = q.backend.device_id();
            let n = wr.remaining().min(BLK_ID_LEN as u64) as usize;
            if wr.write(mem, &id[..n]).is_err() {
                return (ReqType::GetId, guest("id buffer unreachable".into()));
            }
            (ReqType::GetId, Outcome::Ok)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let (ty, bit) = if kind == VIRTIO_BLK_T_DISCARD {
                (ReqType::Discard, VIRTIO_BLK_F_DISCARD)
            } else {
                (ReqType::WriteZeroes, VIRTIO_BLK_F_WRITE_ZEROES)
            };
            if q.features & (1 << bit) == 0 {
                let why = format!("{} not negotiated", ty.name());
                return (ty, Outcome::Guest(ReqStatus::Unsupp, why));
            }
            (ty, segments(q, mem, ty, rd))
        }
        other => (
            ReqType::Other,
            Outcome::Guest(ReqStatus::Unsupp, format!("request type {other}")),
        ),
    }
}

/// The segments of a DISCARD or WRITE_ZEROES request: all are checked before any is executed.
fn segments<B: BlkBackend + ?Sized>(
    q: &mut BlkQueue<B>,
    mem: &GuestMemoryMmap,
    ty: ReqType,
    rd: &mut Cursor<'_>,
) -> Outcome {
    let len = rd.remaining();
    if len == 0 || !len.is_multiple_of(SEGMENT_LEN as u64) {
        return Outcome::Guest(ReqStatus::IoErr, format!("segment bytes {len}"));
    }
    let nseg = len / SEGMENT_LEN as u64;
    if nseg > u64::from(MAX_DISCARD_SEG) {
        return Outcome::Guest(ReqStatus::IoErr, format!("{nseg} segments"));
    }
    let capacity = q.backend.capacity_bytes();
    let mut segs = [(0u64, 0u64, false); MAX_DISCARD_SEG as usize];
    for seg in segs.iter_mut().take(nseg as usize) {
        let mut raw = [0u8; SEGMENT_LEN];
        if rd.read(mem, &mut raw).is_err() {
            return Outcome::Guest(ReqStatus::IoErr, "segment unreachable".into());
        }
        let sector = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
        let nr = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
        let flags = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
        let allowed = if ty == ReqType::WriteZeroes {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        } else {
            0
        };
        if flags & !allowed != 0 {
            return Outcome::Guest(ReqStatus::Unsupp, format!("segment flags {flags:#x}"));
        }
        if nr > MAX_DISCARD_SECTORS {
            return Outcome::Guest(ReqStatus::IoErr, format!("segment of {nr} sectors"));
        }
        let bytes = u64::from(nr) * SECTOR_SIZE;
        match range(capacity, sector, bytes) {
            Ok(off) => *seg = (off, bytes, flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0),
            Err(why) => return Outcome::Guest(ReqStatus::IoErr, why),
        }
    }
    for &(off, bytes, unmap) in segs.iter().take(nseg as usize) {
        if bytes == 0 {
            continue;
        }
        let r = if ty == ReqType::Discard {
            q.backend.discard(off, bytes)
        } else {
            q.backend.write_zeroes(off, bytes, unmap)
        };
        if let Err(e) = r {
            return Outcome::Storage(e.to_string());
        }
        q.metrics.moved(ty, bytes);
    }
    Outcome::Ok
}
