//! A chain's buffers as two byte streams: the device-readable bytes in chain order, and the
//! device-writable bytes in chain order. Requests and responses that straddle descriptors are
//! read and written piece by piece with `vm-memory`'s volatile copies, never through references
//! to guest memory (the guest may write it at any time).

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::chain::Desc;
use super::GuestMemoryMmap;

/// Total length of the readable (`writable = false`) or writable buffers of a chain.
pub fn stream_len(descs: &[Desc], writable: bool) -> u64 {
    descs
        .iter()
        .filter(|d| d.writable == writable)
        .map(|d| u64::from(d.len))
        .sum()
}

/// Walks the `len` bytes that start `offset` bytes into the readable (or writable) stream of
/// `descs`, handing each piece that lies in one descriptor to `copy` as (guest address, range of
/// the caller's buffer). False if the stream is too short, an address overflows, or `copy` fails.
fn for_each_piece(
    descs: &[Desc],
    writable: bool,
    offset: u64,
    len: usize,
    mut copy: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
) -> bool {
    let mut skip = offset;
    let mut done = 0usize;
    for d in descs.iter().filter(|d| d.writable == writable) {
        if done == len {
            break;
        }
        let d_len = u64::from(d.len);
        if skip >= d_len {
            skip -= d_len;
            continue;
        }
        let n = ((d_len - skip) as usize).min(len - done);
        let Some(addr) = d.addr.checked_add(skip) else {
            return false;
        };
        if !copy(addr, done..done + n) {
            return false;
        }
        done += n;
        skip = 0;
    }
    done == len
}

/// Reads `out.len()` bytes starting `offset` bytes into the readable stream.
pub fn read_stream(mem: &GuestMemoryMmap, descs: &[Desc], offset: u64, out: &mut [u8]) -> bool {
    for_each_piece(descs, false, offset, out.len(), |addr, range| {
        let dst = &mut out[range];
        // One translation for a piece inside one region; the general path (pieces spanning
        // regions, or outside memory) decides the rest.
        let copied = match mem.get_slice(addr, dst.len()) {
            Ok(s) => s.copy_to(dst) == dst.len(),
            Err(_) => false,
        };
        copied || mem.read_slice(dst, addr).is_ok()
    })
}

/// Writes `data` starting `offset` bytes into the writable stream.
pub fn write_stream(mem: &GuestMemoryMmap, descs: &[Desc], offset: u64, data: &[u8]) -> bool {
    for_each_piece(descs, true, offset, data.len(), |addr, range| {
        let src = &data[range];
        // As in `read_stream`: one translation when the piece lies inside one region.
        let copied = match mem.get_slice(addr, src.len()) {
            Ok(s) => {
                s.copy_from(src);
                true
            }
            Err(_) => false,
        };
        copied || mem.write_slice(src, addr).is_ok()
    })
}
