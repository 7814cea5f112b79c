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
    BlkIoError::Refused(e.to_string())
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
