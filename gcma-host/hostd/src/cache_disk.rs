//! The cache disk: a virtio-blk disk over a disk image file whose read data is kept in the pool
//! as cleancache pages of one client. Cleancache for guests that have no cleancache driver.
//!
//! A read looks in the pool first, page by page, and reads the image for what is not there,
//! then puts those pages in the pool. The pool may drop them at any time (a grant, pressure, the
//! disk's cap). A hit keeps the page ([`Pool::cleancache_get_keep`]): the guest's page cache
//! drops its copy without telling anyone, so the pool's copy must stay for the next read.
//!
//! Never stale: a write goes to the image and then drops the cached copy of every page it
//! touched, before it is acknowledged, under the page's lock; a read that missed fills the cache
//! under the same lock, so it cannot put back data older than a write that finished meanwhile.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use balloon::blk::{BlkBackend, BlkIoError, BLK_ID_LEN};
use gcma_host::api::{CleancacheKey, ClientId, GcmaBackend, PoolError, PAGE_SIZE};
use gcma_host::pool::Pool;

use crate::disk::{device_id, PageLocks};

/// Pages per cleancache object (an object is 256 MiB of the image).
const PAGES_PER_OBJECT: u64 = 1 << 16;

/// A cache disk over one image file and one pool client.
#[derive(Debug)]
pub struct CacheDisk {
    pool: Arc<Pool>,
    client: ClientId,
    cc_pool: u32,
    image: File,
    capacity: u64,
    locks: PageLocks,
    id: [u8; BLK_ID_LEN],
}

fn pool_err(e: PoolError) -> BlkIoError {
    BlkIoError::Refused(gcma_host::api::ErrorChain(&e).to_string())
}

impl CacheDisk {
    /// A disk over `image` (opened read-write) whose size, rounded down to whole sectors, is the
    /// disk's; `client` gets a cleancache pool for it.
    pub fn new(
        pool: Arc<Pool>,
        client: ClientId,
        image: File,
        name: &str,
    ) -> Result<Self, std::io::Error> {
        let capacity = image.metadata()?.len() / 512 * 512;
        let cc_pool = pool
            .cleancache_new_pool(client)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(CacheDisk {
            pool,
            client,
            cc_pool,
            image,
            capacity,
            locks: PageLocks::new(),
            id: device_id("gcma-cache-", name),
        })
    }

    fn key(&self, page: u64) -> CleancacheKey {
        CleancacheKey {
            pool: self.cc_pool,
            object: [page / PAGES_PER_OBJECT, 0, 0],
            index: (page % PAGES_PER_OBJECT) as u32,
        }
    }

    /// Reads image page `page` (zero past the end of the image).
    fn read_image(&self, page: u64, out: &mut [u8; PAGE_SIZE]) -> Result<(), BlkIoError> {
        let mut done = 0;
        let at = page * PAGE_SIZE as u64;
        while done < PAGE_SIZE {
            match self.image.read_at(&mut out[done..], at + done as u64) {
                Ok(0) => {
                    out[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Page `page`'s bytes, from the pool or else from the image (which then fills the pool).
    fn page(&self, page: u64, out: &mut [u8; PAGE_SIZE]) -> Result<(), BlkIoError> {
        let key = self.key(page);
        if self
            .pool
            .cleancache_get_keep(self.client, key, out)
            .map_err(pool_err)?
        {
            return Ok(());
        }
        let _l = self.locks.lock(page);
        self.read_image(page, out)?;
        // Not kept is fine: the pool may drop cleancache pages at will.
        self.pool
            .cleancache_put(self.client, key, out)
            .map_err(pool_err)?;
        Ok(())
    }

    /// Writes `data` at `offset` (inside one page) to the image and drops the cached page.
    fn write_piece(&self, offset: u64, data: &[u8]) -> Result<(), BlkIoError> {
        let page = offset / PAGE_SIZE as u64;
        let _l = self.locks.lock(page);
        self.image.write_all_at(data, offset)?;
        self.pool
            .cleancache_flush_page(self.client, self.key(page))
            .map_err(pool_err)?;
        Ok(())
    }

    fn for_pages(
        offset: u64,
        len: usize,
        mut f: impl FnMut(u64, usize, std::ops::Range<usize>) -> Result<(), BlkIoError>,
    ) -> Result<(), BlkIoError> {
        let ps = PAGE_SIZE as u64;
        let mut done = 0usize;
        while done < len {
            let at = offset + done as u64;
            let n = (PAGE_SIZE - (at % ps) as usize).min(len - done);
            f(at / ps, (at % ps) as usize, done..done + n)?;
            done += n;
        }
        Ok(())
    }
}

impl BlkBackend for CacheDisk {
    fn capacity_bytes(&self) -> u64 {
        self.capacity
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlkIoError> {
        let mut tmp = [0u8; PAGE_SIZE];
        Self::for_pages(offset, buf.len(), |page, in_page, r| {
            self.page(page, &mut tmp)?;
            buf[r.clone()].copy_from_slice(&tmp[in_page..in_page + r.len()]);
            Ok(())
        })
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlkIoError> {
        Self::for_pages(offset, buf.len(), |_, _, r| {
            self.write_piece(offset + r.start as u64, &buf[r])
        })
    }

    fn flush(&self) -> Result<(), BlkIoError> {
        self.image.sync_data()?;
        Ok(())
    }

    fn discard(&self, _offset: u64, _len: u64) -> Result<(), BlkIoError> {
        // Advisory; the image keeps its bytes (a read may return them).
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> Result<(), BlkIoError> {
        let zeros = [0u8; PAGE_SIZE];
        Self::for_pages(offset, len as usize, |_, _, r| {
            self.write_piece(offset + r.start as u64, &zeros[..r.len()])
        })
    }

    fn device_id(&self) -> [u8; BLK_ID_LEN] {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gcma_host::pool::{ClientOptions, PoolConfig};
    use std::io::Write;

    fn image(len: usize) -> (File, Vec<u8>) {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(std::env::temp_dir())
            .unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        f.write_all(&data).unwrap();
        (f, data)
    }

    fn cache(len: usize, cap: u64) -> (CacheDisk, Vec<u8>) {
        let pool = Pool::new(PoolConfig::new(64)).unwrap();
        let client = pool.register_client_with(
            "c",
            ClientOptions {
                cleancache_cap_pages: Some(cap),
                ..ClientOptions::default()
            },
        );
        let (f, data) = image(len);
        (CacheDisk::new(pool, client, f, "c").unwrap(), data)
    }

    #[test]
    fn rereads_hit_and_writes_never_leave_stale_pages() {
        // Not a whole number of pages: the last page is partial.
        let (d, mut model) = cache(10 * 4096 + 1024, 64);
        assert_eq!(d.capacity_bytes(), 10 * 4096 + 1024);
        let mut got = vec![0u8; model.len()];
        d.read_at(0, &mut got).unwrap();
        assert_eq!(got, model);
        let s1 = d.pool.client_stats(d.client).unwrap();
        assert_eq!((s1.cleancache_hits, s1.cleancache_pages), (0, 11));
        d.read_at(0, &mut got).unwrap();
        assert_eq!(got, model);
        assert_eq!(d.pool.client_stats(d.client).unwrap().cleancache_hits, 11);
        // An unaligned write reaches the image and the next read (no stale cached page).
        let new = vec![0xeeu8; 1536];
        d.write_at(4096 * 3 + 512, &new).unwrap();
        model[4096 * 3 + 512..4096 * 3 + 2048].copy_from_slice(&new);
        d.write_zeroes(4096 * 9, 4096 + 1024, true).unwrap();
        model[4096 * 9..].fill(0);
        d.read_at(0, &mut got).unwrap();
        assert_eq!(got, model);
        let mut img = vec![0u8; model.len()];
        d.image.read_exact_at(&mut img, 0).unwrap();
        assert_eq!(img, model);
        d.pool.check_consistency().unwrap();
    }

    #[test]
    fn a_small_cap_still_reads_right() {
        let (d, model) = cache(32 * 4096, 4);
        let mut got = vec![0u8; model.len()];
        for _ in 0..3 {
            d.read_at(0, &mut got).unwrap();
            assert_eq!(got, model);
        }
        let s = d.pool.client_stats(d.client).unwrap();
        assert!(s.cleancache_pages <= 4);
        assert!(s.cleancache_cap_drops > 0);
    }

    /// Readers filling the cache while a writer rewrites the same pages: a read after a write
    /// returns that write, never an older cached copy.
    #[test]
    fn concurrent_fills_and_writes() {
        let (d, _) = cache(8 * 4096, 64);
        let d = Arc::new(d);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (d, stop) = (Arc::clone(&d), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 8 * 4096];
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        d.read_at(0, &mut buf).unwrap();
                    }
                })
            })
            .collect();
        for round in 0..300u32 {
            let page = u64::from(round % 8);
            let data = [(round % 251) as u8; 4096];
            d.write_at(page * 4096, &data).unwrap();
            let mut got = [0u8; 4096];
            d.read_at(page * 4096, &mut got).unwrap();
            assert_eq!(got, data, "round {round}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
    }
}
