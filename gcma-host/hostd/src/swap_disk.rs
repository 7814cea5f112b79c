//! The swap disk: a virtio-blk disk whose 4 KiB pages are frontswap pages of the pool, in a pool
//! client with its own backing file (page `k` at byte `k × 4096`, so sector `s` at byte
//! `s × 512`). The pool's policy decides when the file is written (see the `gcma_host::pool`
//! documentation, "Per-client options"): an acknowledged write is never lost and a read returns
//! the latest acknowledged data, even when a grant evicts the page or the pool refuses it.
//!
//! Page-aligned whole pages go straight to the pool; a piece of a page is read-modify-written
//! under the page's lock, so that writes to different sectors of one page from different queues
//! do not lose each other.

use std::sync::Arc;

use balloon::blk::{BlkBackend, BlkIoError, BLK_ID_LEN};
use gcma_host::api::{ClientId, FrontswapKey, GcmaBackend, PoolError, PAGE_SIZE};
use gcma_host::pool::Pool;

use crate::disk::{device_id, PageLocks};

/// A swap disk over one pool client with its own file.
#[derive(Debug)]
pub struct SwapDisk {
    pool: Arc<Pool>,
    client: ClientId,
    capacity: u64,
    locks: PageLocks,
    id: [u8; BLK_ID_LEN],
}

fn key(page: u64) -> FrontswapKey {
    FrontswapKey {
        area: 0,
        offset: page,
    }
}

fn pool_err(e: PoolError) -> BlkIoError {
    BlkIoError::Refused(gcma_host::api::ErrorChain(&e).to_string())
}

impl SwapDisk {
    /// A disk of `capacity` bytes (whole pages) over `client`, which must have its own backing
    /// file.
    pub fn new(pool: Arc<Pool>, client: ClientId, capacity: u64, name: &str) -> Self {
        SwapDisk {
            pool,
            client,
            capacity,
            locks: PageLocks::new(),
            id: device_id("gcma-swap-", name),
        }
    }

    /// The pool client holding the disk's pages.
    pub fn client(&self) -> ClientId {
        self.client
    }

    fn load(&self, page: u64, out: &mut [u8]) -> Result<(), BlkIoError> {
        match self.pool.frontswap_load(self.client, key(page), out) {
            Ok(true) => Ok(()),
            // A client with its own file always hits (the file holds what the pool does not).
            Ok(false) => Err(BlkIoError::Refused(format!("page {page} missing"))),
            Err(e) => Err(pool_err(e)),
        }
    }

    /// Applies `f` to `[offset, offset + len)` page by page: `f(page, offset in page, range in
    /// the request)`.
    fn pages(
        offset: u64,
        len: usize,
        mut f: impl FnMut(u64, usize, std::ops::Range<usize>) -> Result<(), BlkIoError>,
    ) -> Result<(), BlkIoError> {
        let ps = PAGE_SIZE as u64;
        let mut done = 0usize;
        while done < len {
            let at = offset + done as u64;
            let (page, in_page) = (at / ps, (at % ps) as usize);
            let n = (PAGE_SIZE - in_page).min(len - done);
            f(page, in_page, done..done + n)?;
            done += n;
        }
        Ok(())
    }

    /// Writes zeroes over a piece of one page (read-modify-write under the page's lock).
    fn zero_piece(&self, page: u64, in_page: usize, len: usize) -> Result<(), BlkIoError> {
        let _l = self.locks.lock(page);
        let mut tmp = [0u8; PAGE_SIZE];
        self.load(page, &mut tmp)?;
        tmp[in_page..in_page + len].fill(0);
        self.pool
            .frontswap_store(self.client, key(page), &tmp)
            .map_err(pool_err)
    }
}

/// `[offset, offset + len)` split into a piece of a page before the first page boundary, whole
/// pages, and a piece after the last boundary: (head bytes, first whole page, whole pages,
/// tail bytes).
fn split(offset: u64, len: usize) -> (usize, u64, u64, usize) {
    let ps = PAGE_SIZE as u64;
    let end = offset + len as u64;
    let first = offset.div_ceil(ps);
    let last = end / ps;
    if first >= last {
        // No whole page: all of it is head (one page) or head + tail (across one boundary).
        let head = (first * ps).min(end) - offset;
        return (head as usize, first, 0, len - head as usize);
    }
    (
        (first * ps - offset) as usize,
        first,
        last - first,
        (end - last * ps) as usize,
    )
}

impl BlkBackend for SwapDisk {
    fn capacity_bytes(&self) -> u64 {
        self.capacity
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlkIoError> {
        let (head, first, n, tail) = split(offset, buf.len());
        let len = buf.len();
        let mut piece = |at: u64, r: std::ops::Range<usize>| -> Result<(), BlkIoError> {
            let mut tmp = [0u8; PAGE_SIZE];
            let page = at / PAGE_SIZE as u64;
            self.load(page, &mut tmp)?;
            let in_page = (at % PAGE_SIZE as u64) as usize;
            buf[r.clone()].copy_from_slice(&tmp[in_page..in_page + r.len()]);
            Ok(())
        };
        if head > 0 {
            piece(offset, 0..head)?;
        }
        if tail > 0 {
            piece(offset + (len - tail) as u64, len - tail..len)?;
        }
        if n > 0 {
            let whole = &mut buf[head..head + n as usize * PAGE_SIZE];
            self.pool
                .frontswap_load_pages(self.client, first, whole)
                .map_err(pool_err)?;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlkIoError> {
        let (head, first, n, tail) = split(offset, buf.len());
        let len = buf.len();
        let piece = |at: u64, data: &[u8]| -> Result<(), BlkIoError> {
            let page = at / PAGE_SIZE as u64;
            let in_page = (at % PAGE_SIZE as u64) as usize;
            let _l = self.locks.lock(page);
            let mut tmp = [0u8; PAGE_SIZE];
            self.load(page, &mut tmp)?;
            tmp[in_page..in_page + data.len()].copy_from_slice(data);
            self.pool
                .frontswap_store(self.client, key(page), &tmp)
                .map_err(pool_err)
        };
        if head > 0 {
            piece(offset, &buf[..head])?;
        }
        if n > 0 {
            let _l = self.locks.lock_shared(first, n);
            self.pool
                .frontswap_store_pages(
                    self.client,
                    first,
                    &buf[head..head + n as usize * PAGE_SIZE],
                )
                .map_err(pool_err)?;
        }
        if tail > 0 {
            piece(offset + (len - tail) as u64, &buf[len - tail..])?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), BlkIoError> {
        self.pool.flush_client(self.client).map_err(pool_err)?;
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BlkIoError> {
        // Whole pages only: a discard is advisory, and the pieces at either end stay.
        let ps = PAGE_SIZE as u64;
        let first = offset.div_ceil(ps);
        let end = (offset + len) / ps;
        if first < end {
            self.pool
                .frontswap_invalidate_range(self.client, 0, first..end)
                .map_err(pool_err)?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> Result<(), BlkIoError> {
        // Whole pages are invalidated (the file gets a hole, which reads as zero); the pieces at
        // either end are zeroed in place.
        let ps = PAGE_SIZE as u64;
        let end = offset + len;
        let first = offset.div_ceil(ps);
        let last = end / ps;
        if first >= last {
            // Within one page, or across one page boundary without a whole page.
            return Self::pages(offset, len as usize, |page, in_page, r| {
                self.zero_piece(page, in_page, r.len())
            });
        }
        if !offset.is_multiple_of(ps) {
            self.zero_piece(
                offset / ps,
                (offset % ps) as usize,
                (first * ps - offset) as usize,
            )?;
        }
        self.pool
            .frontswap_invalidate_range(self.client, 0, first..last)
            .map_err(pool_err)?;
        if !end.is_multiple_of(ps) {
            self.zero_piece(last, 0, (end - last * ps) as usize)?;
        }
        Ok(())
    }

    fn device_id(&self) -> [u8; BLK_ID_LEN] {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gcma_host::api::FrontswapPolicy;
    use gcma_host::pool::{ClientOptions, FrontswapBacking, PoolConfig};

    fn tmpfile() -> std::fs::File {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(std::env::temp_dir())
            .unwrap()
    }

    fn disk(policy: FrontswapPolicy, pool_pages: u64, cap: u64) -> SwapDisk {
        let mut cfg = PoolConfig::new(pool_pages);
        cfg.frontswap_policy = policy;
        let pool = Pool::new(cfg).unwrap();
        let client = pool.register_client_with(
            "t",
            ClientOptions {
                frontswap_backing: FrontswapBacking::File(Arc::new(tmpfile())),
                frontswap_cap_pages: Some(cap),
                ..ClientOptions::default()
            },
        );
        SwapDisk::new(pool, client, 1 << 20, "t")
    }

    fn bytes(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13) ^ seed)
            .collect()
    }

    /// A reference disk in memory, checked against the swap disk after every operation.
    #[test]
    fn sector_io_matches_a_plain_disk() {
        for policy in [
            FrontswapPolicy::WriteThrough,
            FrontswapPolicy::WriteBack,
            FrontswapPolicy::PutBack,
        ] {
            let d = disk(policy, 8, 4);
            let mut model = vec![0u8; 1 << 20];
            let ops: [(u64, usize); 7] = [
                (0, 4096),
                (512, 512),
                (3 * 512, 4096 * 3),
                (4096 * 10 - 512, 1024),
                (4096 * 20, 4096 * 16),
                (7 * 512, 512),
                (4096 * 30 + 1536, 8192),
            ];
            for (n, &(off, len)) in ops.iter().enumerate() {
                let data = bytes(n as u8, len);
                d.write_at(off, &data).unwrap();
                model[off as usize..off as usize + len].copy_from_slice(&data);
            }
            d.write_zeroes(4096 * 20 + 512, 4096 * 3, true).unwrap();
            model[4096 * 20 + 512..4096 * 23 + 512].fill(0);
            d.write_zeroes(1024, 1024, false).unwrap();
            model[1024..2048].fill(0);
            // A discard of whole pages reads back as zero here; its partial ends are kept.
            d.discard(4096 * 29 + 512, 4096 * 3).unwrap();
            model[4096 * 30..4096 * 32].fill(0);
            let mut got = vec![0u8; 1 << 20];
            d.read_at(0, &mut got).unwrap();
            assert!(got == model, "{policy:?}");
            // Unaligned reads too.
            let mut piece = vec![0u8; 1536];
            d.read_at(4096 * 10 - 1024, &mut piece).unwrap();
            assert_eq!(piece, model[4096 * 10 - 1024..4096 * 10 + 512]);
            d.pool.check_consistency().unwrap();
        }
    }

    /// Writes to different sectors of one page from several threads: none is lost to another's
    /// read-modify-write.
    #[test]
    fn concurrent_sector_writes_to_one_page() {
        let d = Arc::new(disk(FrontswapPolicy::WriteBack, 4, 4));
        let threads: Vec<_> = (0..8u64)
            .map(|s| {
                let d = Arc::clone(&d);
                std::thread::spawn(move || {
                    for round in 0..200u8 {
                        d.write_at(s * 512, &[round ^ s as u8; 512]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut got = [0u8; 4096];
        d.read_at(0, &mut got).unwrap();
        for s in 0..8usize {
            assert!(got[s * 512..(s + 1) * 512]
                .iter()
                .all(|&b| b == 199 ^ s as u8));
        }
    }

    /// Whole-page writes racing with read-modify-writes of one sector of the same page: right
    /// after a whole-page write, the sectors the pieces do not cover read as that write's bytes
    /// (a piece's write-back never puts older bytes over them).
    #[test]
    fn whole_page_writes_and_pieces_of_the_same_page() {
        let d = Arc::new(disk(FrontswapPolicy::WriteBack, 8, 8));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pieces = {
            let (d, stop) = (Arc::clone(&d), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut v = 0u8;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    v = v.wrapping_add(1);
                    d.write_at(3 * 512, &[v | 0x80; 512]).unwrap();
                }
            })
        };
        let mut got = [0u8; PAGE_SIZE];
        for v in 1..=3000u32 {
            let b = (v % 100) as u8;
            d.write_at(0, &[b; PAGE_SIZE]).unwrap();
            d.read_at(0, &mut got).unwrap();
            for (i, &x) in got.iter().enumerate() {
                if !(3 * 512..4 * 512).contains(&i) {
                    assert_eq!(x, b, "round {v}: byte {i} has older bytes");
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        pieces.join().unwrap();
    }
}
