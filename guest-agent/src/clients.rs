//! Cleancache and frontswap clients with tmem semantics, over a [`GcmaDriver`].
//!
//! * [`CleancacheClient`]: ephemeral. A put may be dropped, a get may miss, a hit removes the
//!   page (private pool). When the device is reset or fails, the client recovers the driver and
//!   starts a fresh pool: losing clean pages is allowed, so callers only see misses.
//! * [`FrontswapClient`]: persistent. A store may be rejected (the caller then writes the page to
//!   its real swap device), but an accepted page must load until invalidated. The client remembers
//!   which offsets the device accepted, so a miss on one of them is reported as
//!   [`Error::FrontswapLost`], and a device reset (which drops every page) as
//!   [`Error::FrontswapReset`] with the number of pages lost: never as a silent miss.
//!
//! Batch calls (`*_many`) take an output slice instead of returning a `Vec` and build their
//! requests on the stack, so steady-state traffic allocates nothing (payloads may run on a bump
//! allocator that never frees).

use alloc::vec::Vec;

use gcma_proto::gcma::{status, PageKey, Request, SwapKey};

use crate::driver::{Data, GcmaDriver, Op};
use crate::error::Error;
use crate::hal::Hal;

/// Requests a client puts on the stack per [`GcmaDriver::execute`] call.
const CHUNK: usize = 32;

/// Largest frontswap offset a [`FrontswapClient`] accepts (exclusive): 2²⁸ pages, 1 TiB of swap.
/// The client keeps one bit per offset up to the highest one used.
pub const MAX_SWAP_OFFSET: u64 = 1 << 28;

fn placeholder<'a>() -> Op<'a> {
    Op::new(Request::Stats, Data::None)
}

fn chunk_len<H: Hal>(d: &GcmaDriver<H>) -> usize {
    d.batch_len().clamp(1, CHUNK)
}

/// Counters of a [`CleancacheClient`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleancacheCounters {
    /// Puts the device kept.
    pub puts: u64,
    /// Puts the device dropped (or lost to a reset).
    pub dropped_puts: u64,
    /// Gets that hit.
    pub hits: u64,
    /// Gets that missed.
    pub misses: u64,
    /// Pools (re)created.
    pub pools_created: u64,
    /// Device failures absorbed by recovering.
    pub recoveries: u64,
}

/// A cleancache client: one private ephemeral pool on the device.
#[derive(Debug, Default)]
pub struct CleancacheClient {
    /// (pool id, driver epoch it belongs to).
    pool: Option<(u32, u32)>,
    counters: CleancacheCounters,
}

impl CleancacheClient {
    /// A client; its pool is created on first use.
    pub fn new() -> Self {
        CleancacheClient::default()
    }

    /// What the client saw.
    pub fn counters(&self) -> CleancacheCounters {
        self.counters
    }

    fn pool<H: Hal>(&mut self, d: &mut GcmaDriver<H>) -> Result<u32, Error> {
        if let Some((pool, epoch)) = self.pool {
            if epoch == d.epoch() {
                return Ok(pool);
            }
        }
        let r = d.request(Request::NewPool, Data::None)?;
        if r.status != status::OK {
            return Err(Error::Status(r));
        }
        self.counters.pools_created += 1;
        let pool = r.value0 as u32;
        self.pool = Some((pool, d.epoch()));
        Ok(pool)
    }

    /// The pool, if it still exists in the driver's current epoch.
    fn live_pool<H: Hal>(&mut self, d: &GcmaDriver<H>) -> Option<u32> {
        match self.pool {
            Some((pool, epoch)) if epoch == d.epoch() => Some(pool),
            _ => {
                self.pool = None;
                None
            }
        }
    }

    /// Turns a device failure into "nothing cached": recover the driver, forget the pool.
    fn absorb<H: Hal>(&mut self, d: &mut GcmaDriver<H>, e: Error) -> Result<(), Error> {
        if !e.needs_recovery() {
            return Err(e);
        }
        self.counters.recoveries += 1;
        self.pool = None;
        d.recover()
    }

    /// Puts clean pages `(object, index, page)`; `kept[i]` says whether the device kept page
    /// `i`. Returns how many were kept.
    pub fn put_many<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        pages: &[([u64; 3], u32, &[u8])],
        kept: &mut [bool],
    ) -> Result<usize, Error> {
        let kept = kept.get_mut(..pages.len()).ok_or(Error::BadBuffer)?;
        kept.fill(false);
        let mut total = 0;
        let per = chunk_len(d);
        for (c, chunk) in pages.chunks(per).enumerate() {
            let pool = match self.pool(d) {
                Ok(p) => p,
                Err(e) => {
                    self.absorb(d, e)?;
                    self.counters.dropped_puts += chunk.len() as u64;
                    continue;
                }
            };
            let mut ops: [Op<'_>; CHUNK] = core::array::from_fn(|_| placeholder());
            for (op, &(object, index, page)) in ops.iter_mut().zip(chunk) {
                let key = PageKey {
                    pool,
                    object,
                    index,
                };
                *op = Op::new(Request::Put(key), Data::In(page));
            }
            if let Err(e) = d.execute(&mut ops[..chunk.len()]) {
                self.absorb(d, e)?;
                self.counters.dropped_puts += chunk.len() as u64;
                continue;
            }
            for (j, op) in ops[..chunk.len()].iter().enumerate() {
                match op.resp.status {
                    status::OK => {
                        kept[c * per + j] = true;
                        total += 1;
                        self.counters.puts += 1;
                    }
                    status::NOT_STORED => self.counters.dropped_puts += 1,
                    status::UNKNOWN_POOL => {
                        self.pool = None;
                        self.counters.dropped_puts += 1;
                    }
                    _ => return Err(Error::Status(op.resp)),
                }
            }
        }
        Ok(total)
    }

    /// Puts one clean page; returns whether the device kept it.
    pub fn put<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        object: [u64; 3],
        index: u32,
        page: &[u8],
    ) -> Result<bool, Error> {
        let mut kept = [false];
        self.put_many(d, &[(object, index, page)], &mut kept)?;
        Ok(kept[0])
    }

    /// Gets pages `(object, index, out)`; `hits[i]` says whether page `i` was found (a hit
    /// removes it from the device). Returns the number of hits.
    pub fn get_many<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        pages: &mut [([u64; 3], u32, &mut [u8])],
        hits: &mut [bool],
    ) -> Result<usize, Error> {
        let hits = hits.get_mut(..pages.len()).ok_or(Error::BadBuffer)?;
        hits.fill(false);
        let mut total = 0;
        let per = chunk_len(d);
        for (c, chunk) in pages.chunks_mut(per).enumerate() {
            let n = chunk.len();
            let Some(pool) = self.live_pool(d) else {
                self.counters.misses += n as u64;
                continue;
            };
            let mut ops: [Op<'_>; CHUNK] = core::array::from_fn(|_| placeholder());
            for (op, (object, index, out)) in ops.iter_mut().zip(chunk.iter_mut()) {
                let key = PageKey {
                    pool,
                    object: *object,
                    index: *index,
                };
                *op = Op::new(Request::Get(key), Data::Out(&mut out[..]));
            }
            if let Err(e) = d.execute(&mut ops[..n]) {
                self.absorb(d, e)?;
                self.counters.misses += n as u64;
                continue;
            }
            for (j, op) in ops[..n].iter().enumerate() {
                match op.resp.status {
                    status::OK => {
                        hits[c * per + j] = true;
                        total += 1;
                        self.counters.hits += 1;
                    }
                    status::MISS => self.counters.misses += 1,
                    status::UNKNOWN_POOL => {
                        self.pool = None;
                        self.counters.misses += 1;
                    }
                    _ => return Err(Error::Status(op.resp)),
                }
            }
        }
        Ok(total)
    }

    /// Gets one page; returns whether it hit.
    pub fn get<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        object: [u64; 3],
        index: u32,
        out: &mut [u8],
    ) -> Result<bool, Error> {
        let mut hit = [false];
        self.get_many(d, &mut [(object, index, out)], &mut hit)?;
        Ok(hit[0])
    }

    fn flush<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        req: impl Fn(u32) -> Request,
    ) -> Result<(), Error> {
        let Some(pool) = self.live_pool(d) else {
            return Ok(());
        };
        match d.request(req(pool), Data::None) {
            Ok(r) if matches!(r.status, status::OK | status::MISS) => Ok(()),
            Ok(r) if r.status == status::UNKNOWN_POOL => {
                self.pool = None;
                Ok(())
            }
            Ok(r) => Err(Error::Status(r)),
            Err(e) => self.absorb(d, e),
        }
    }

    /// Drops one page (the underlying data changed).
    pub fn flush_page<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        object: [u64; 3],
        index: u32,
    ) -> Result<(), Error> {
        self.flush(d, |pool| {
            Request::FlushPage(PageKey {
                pool,
                object,
                index,
            })
        })
    }

    /// Drops every page of an object.
    pub fn flush_object<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        object: [u64; 3],
    ) -> Result<(), Error> {
        self.flush(d, |pool| Request::FlushObject { pool, object })
    }

    /// Destroys the pool (the next put creates a new one).
    pub fn destroy<H: Hal>(&mut self, d: &mut GcmaDriver<H>) -> Result<(), Error> {
        self.flush(d, |pool| Request::DestroyPool { pool })?;
        self.pool = None;
        Ok(())
    }
}

/// Counters of a [`FrontswapClient`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontswapCounters {
    /// Stores accepted.
    pub succ_stores: u64,
    /// Stores rejected.
    pub failed_stores: u64,
    /// Loads that hit.
    pub loads: u64,
    /// Pages invalidated.
    pub invalidates: u64,
}

/// Offsets the device holds: one bit per offset, grown to the highest one used and never
/// shrunk (clearing keeps the memory, so churn does not allocate).
#[derive(Debug, Default)]
struct OffsetSet {
    words: Vec<u64>,
    len: usize,
}

impl OffsetSet {
    fn contains(&self, off: u64) -> bool {
        self.words
            .get((off / 64) as usize)
            .is_some_and(|w| w & (1 << (off % 64)) != 0)
    }

    fn insert(&mut self, off: u64) {
        let i = (off / 64) as usize;
        if i >= self.words.len() {
            self.words.resize(i + 1, 0);
        }
        let bit = 1 << (off % 64);
        if self.words[i] & bit == 0 {
            self.words[i] |= bit;
            self.len += 1;
        }
    }

    fn remove(&mut self, off: u64) {
        if let Some(w) = self.words.get_mut((off / 64) as usize) {
            let bit = 1 << (off % 64);
            if *w & bit != 0 {
                *w &= !bit;
                self.len -= 1;
            }
        }
    }

    fn clear(&mut self) {
        self.words.fill(0);
        self.len = 0;
    }
}

/// A frontswap client for one swap area.
#[derive(Debug)]
pub struct FrontswapClient {
    area: u32,
    epoch: u32,
    stored: OffsetSet,
    counters: FrontswapCounters,
}

impl FrontswapClient {
    /// A client for swap area `area` of the device behind `d`.
    pub fn new<H: Hal>(d: &GcmaDriver<H>, area: u32) -> Self {
        FrontswapClient {
            area,
            epoch: d.epoch(),
            stored: OffsetSet::default(),
            counters: FrontswapCounters::default(),
        }
    }

    /// What the client saw.
    pub fn counters(&self) -> FrontswapCounters {
        self.counters
    }

    /// Offsets the device currently holds for this client.
    pub fn stored_pages(&self) -> usize {
        self.stored.len
    }

    /// Whether the device holds `offset`.
    pub fn holds(&self, offset: u64) -> bool {
        self.stored.contains(offset)
    }

    /// Reports pages lost to a reset (once), then continues in the new epoch.
    fn check_epoch<H: Hal>(&mut self, d: &GcmaDriver<H>) -> Result<(), Error> {
        if self.epoch == d.epoch() {
            return Ok(());
        }
        self.epoch = d.epoch();
        let lost = self.stored.len as u64;
        self.stored.clear();
        if lost > 0 {
            return Err(Error::FrontswapReset { lost_pages: lost });
        }
        Ok(())
    }

    /// A device failure: recover the driver; every stored page is gone.
    fn fail<H: Hal>(&mut self, d: &mut GcmaDriver<H>, e: Error) -> Error {
        if !e.needs_recovery() {
            return e;
        }
        if let Err(r) = d.recover() {
            return r;
        }
        self.check_epoch(d).err().unwrap_or(e)
    }

    fn check_offset(offset: u64) -> Result<(), Error> {
        if offset >= MAX_SWAP_OFFSET {
            return Err(Error::OffsetTooLarge(offset));
        }
        Ok(())
    }

    /// Stores pages `(offset, page)`; `accepted[i]` says whether the device took page `i`. A
    /// rejected store also drops any older copy of that offset. Returns how many were accepted.
    pub fn store_many<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        pages: &[(u64, &[u8])],
        accepted: &mut [bool],
    ) -> Result<usize, Error> {
        let accepted = accepted.get_mut(..pages.len()).ok_or(Error::BadBuffer)?;
        accepted.fill(false);
        for &(offset, _) in pages {
            Self::check_offset(offset)?;
        }
        self.check_epoch(d)?;
        let area = self.area;
        let mut total = 0;
        let per = chunk_len(d);
        for (c, chunk) in pages.chunks(per).enumerate() {
            let mut ops: [Op<'_>; CHUNK] = core::array::from_fn(|_| placeholder());
            for (op, &(offset, page)) in ops.iter_mut().zip(chunk) {
                *op = Op::new(Request::Store(SwapKey { area, offset }), Data::In(page));
            }
            if let Err(e) = d.execute(&mut ops[..chunk.len()]) {
                return Err(self.fail(d, e));
            }
            for (j, (op, &(offset, _))) in ops.iter().zip(chunk).enumerate() {
                match op.resp.status {
                    status::OK => {
                        self.stored.insert(offset);
                        self.counters.succ_stores += 1;
                        accepted[c * per + j] = true;
                        total += 1;
                    }
                    status::REJECTED => {
                        self.stored.remove(offset);
                        self.counters.failed_stores += 1;
                    }
                    _ => {
                        // The old copy's fate is unknown: treat it as gone.
                        self.stored.remove(offset);
                        return Err(Error::Status(op.resp));
                    }
                }
            }
        }
        Ok(total)
    }

    /// Stores one page; returns whether the device accepted it.
    pub fn store<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        offset: u64,
        page: &[u8],
    ) -> Result<bool, Error> {
        let mut accepted = [false];
        self.store_many(d, &[(offset, page)], &mut accepted)?;
        Ok(accepted[0])
    }

    /// Loads pages `(offset, out)`; `hits[i]` says whether the device had page `i`. A miss on an
    /// offset the device accepted is [`Error::FrontswapLost`]. Returns the number of hits.
    pub fn load_many<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        pages: &mut [(u64, &mut [u8])],
        hits: &mut [bool],
    ) -> Result<usize, Error> {
        let hits = hits.get_mut(..pages.len()).ok_or(Error::BadBuffer)?;
        hits.fill(false);
        self.check_epoch(d)?;
        let area = self.area;
        let mut total = 0;
        let per = chunk_len(d);
        for (c, chunk) in pages.chunks_mut(per).enumerate() {
            let n = chunk.len();
            let mut ops: [Op<'_>; CHUNK] = core::array::from_fn(|_| placeholder());
            for (op, (offset, out)) in ops.iter_mut().zip(chunk.iter_mut()) {
                let key = SwapKey {
                    area,
                    offset: *offset,
                };
                *op = Op::new(Request::Load(key), Data::Out(&mut out[..]));
            }
            if let Err(e) = d.execute(&mut ops[..n]) {
                return Err(self.fail(d, e));
            }
            for (j, op) in ops[..n].iter().enumerate() {
                let Request::Load(SwapKey { offset, .. }) = op.req else {
                    return Err(Error::Protocol);
                };
                match op.resp.status {
                    status::OK => {
                        self.counters.loads += 1;
                        hits[c * per + j] = true;
                        total += 1;
                    }
                    status::MISS if self.stored.contains(offset) => {
                        self.stored.remove(offset);
                        return Err(Error::FrontswapLost { area, offset });
                    }
                    status::MISS => {}
                    _ => return Err(Error::Status(op.resp)),
                }
            }
        }
        Ok(total)
    }

    /// Loads one page; returns whether the device had it.
    pub fn load<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        offset: u64,
        out: &mut [u8],
    ) -> Result<bool, Error> {
        let mut hit = [false];
        self.load_many(d, &mut [(offset, out)], &mut hit)?;
        Ok(hit[0])
    }

    /// Invalidates one page (the swap slot was freed).
    pub fn invalidate_page<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        offset: u64,
    ) -> Result<(), Error> {
        self.check_epoch(d)?;
        let area = self.area;
        match d.request(
            Request::InvalidatePage(SwapKey { area, offset }),
            Data::None,
        ) {
            Ok(r) if matches!(r.status, status::OK | status::MISS) => {
                self.stored.remove(offset);
                self.counters.invalidates += 1;
                Ok(())
            }
            Ok(r) => Err(Error::Status(r)),
            Err(e) => Err(self.fail(d, e)),
        }
    }

    /// Invalidates the whole area (swapoff); returns how many pages the device dropped.
    pub fn invalidate_area<H: Hal>(&mut self, d: &mut GcmaDriver<H>) -> Result<u64, Error> {
        self.check_epoch(d)?;
        match d.request(Request::InvalidateArea { area: self.area }, Data::None) {
            Ok(r) if r.status == status::OK => {
                self.stored.clear();
                self.counters.invalidates += r.value0;
                Ok(r.value0)
            }
            Ok(r) => Err(Error::Status(r)),
            Err(e) => Err(self.fail(d, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OffsetSet;

    #[test]
    fn offset_set_tracks_membership_and_count() {
        let mut s = OffsetSet::default();
        for off in [0, 63, 64, 1000, 5] {
            s.insert(off);
        }
        s.insert(63);
        assert_eq!(s.len, 5);
        assert!(s.contains(64) && s.contains(1000) && !s.contains(65) && !s.contains(1 << 40));
        s.remove(64);
        s.remove(64);
        s.remove(1 << 40);
        assert_eq!(s.len, 4);
        assert!(!s.contains(64));
        let words = s.words.len();
        s.clear();
        assert_eq!((s.len, s.words.len()), (0, words));
        assert!(!s.contains(0));
    }
}
