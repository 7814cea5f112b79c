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

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use balloon::gcma::proto::{status, PageKey, Request, SwapKey};

use crate::driver::{Data, GcmaDriver, Op};
use crate::error::Error;
use crate::hal::Hal;

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

    /// Turns a device failure into "nothing cached": recover the driver, forget the pool.
    fn absorb<H: Hal>(&mut self, d: &mut GcmaDriver<H>, e: Error) -> Result<(), Error> {
        if !e.needs_recovery() {
            return Err(e);
        }
        self.counters.recoveries += 1;
        self.pool = None;
        d.recover()
    }

    /// Puts clean pages `(object, index, page)`; returns for each whether the device kept it.
    pub fn put_many<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        pages: &[([u64; 3], u32, &[u8])],
    ) -> Result<Vec<bool>, Error> {
        let pool = match self.pool(d) {
            Ok(p) => p,
            Err(e) => {
                self.absorb(d, e)?;
                self.counters.dropped_puts += pages.len() as u64;
                return Ok(alloc::vec![false; pages.len()]);
            }
        };
        let mut ops: Vec<Op<'_>> = pages
            .iter()
            .map(|&(object, index, page)| {
                Op::new(
                    Request::Put(PageKey {
                        pool,
                        object,
                        index,
                    }),
                    Data::In(page),
                )
            })
            .collect();
        if let Err(e) = d.execute(&mut ops) {
            self.absorb(d, e)?;
            self.counters.dropped_puts += pages.len() as u64;
            return Ok(alloc::vec![false; pages.len()]);
        }
        let mut kept = Vec::with_capacity(ops.len());
        for op in &ops {
            match op.resp.status {
                status::OK => kept.push(true),
                status::NOT_STORED => kept.push(false),
                status::UNKNOWN_POOL => {
                    self.pool = None;
                    kept.push(false);
                }
                _ => return Err(Error::Status(op.resp)),
            }
        }
        let n_kept = kept.iter().filter(|k| **k).count() as u64;
        self.counters.puts += n_kept;
        self.counters.dropped_puts += kept.len() as u64 - n_kept;
        Ok(kept)
    }

    /// Puts one clean page; returns whether the device kept it.
    pub fn put<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        object: [u64; 3],
        index: u32,
        page: &[u8],
    ) -> Result<bool, Error> {
        Ok(self.put_many(d, &[(object, index, page)])?[0])
    }

    /// Gets pages `(object, index, out)`; returns for each whether it hit (a hit removes the page
    /// from the device).
    pub fn get_many<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        pages: &mut [([u64; 3], u32, &mut [u8])],
    ) -> Result<Vec<bool>, Error> {
        let Some((pool, epoch)) = self.pool else {
            self.counters.misses += pages.len() as u64;
            return Ok(alloc::vec![false; pages.len()]);
        };
        if epoch != d.epoch() {
            self.pool = None;
            self.counters.misses += pages.len() as u64;
            return Ok(alloc::vec![false; pages.len()]);
        }
        let mut ops: Vec<Op<'_>> = pages
            .iter_mut()
            .map(|(object, index, out)| {
                let key = PageKey {
                    pool,
                    object: *object,
                    index: *index,
                };
                Op::new(Request::Get(key), Data::Out(&mut out[..]))
            })
            .collect();
        if let Err(e) = d.execute(&mut ops) {
            drop(ops);
            self.absorb(d, e)?;
            self.counters.misses += pages.len() as u64;
            return Ok(alloc::vec![false; pages.len()]);
        }
        let mut hits = Vec::with_capacity(ops.len());
        for op in &ops {
            match op.resp.status {
                status::OK => hits.push(true),
                status::MISS => hits.push(false),
                status::UNKNOWN_POOL => {
                    self.pool = None;
                    hits.push(false);
                }
                _ => return Err(Error::Status(op.resp)),
            }
        }
        let n_hit = hits.iter().filter(|h| **h).count() as u64;
        self.counters.hits += n_hit;
        self.counters.misses += hits.len() as u64 - n_hit;
        Ok(hits)
    }

    /// Gets one page; returns whether it hit.
    pub fn get<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        object: [u64; 3],
        index: u32,
        out: &mut [u8],
    ) -> Result<bool, Error> {
        Ok(self.get_many(d, &mut [(object, index, out)])?[0])
    }

    fn flush<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        req: impl Fn(u32) -> Request,
    ) -> Result<(), Error> {
        let Some((pool, epoch)) = self.pool else {
            return Ok(());
        };
        if epoch != d.epoch() {
            self.pool = None;
            return Ok(());
        }
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

/// A frontswap client for one swap area.
#[derive(Debug)]
pub struct FrontswapClient {
    area: u32,
    epoch: u32,
    stored: BTreeSet<u64>,
    counters: FrontswapCounters,
}

impl FrontswapClient {
    /// A client for swap area `area` of the device behind `d`.
    pub fn new<H: Hal>(d: &GcmaDriver<H>, area: u32) -> Self {
        FrontswapClient {
            area,
            epoch: d.epoch(),
            stored: BTreeSet::new(),
            counters: FrontswapCounters::default(),
        }
    }

    /// What the client saw.
    pub fn counters(&self) -> FrontswapCounters {
        self.counters
    }

    /// Offsets the device currently holds for this client.
    pub fn stored_pages(&self) -> usize {
        self.stored.len()
    }

    /// Whether the device holds `offset`.
    pub fn holds(&self, offset: u64) -> bool {
        self.stored.contains(&offset)
    }

    /// Reports pages lost to a reset (once), then continues in the new epoch.
    fn check_epoch<H: Hal>(&mut self, d: &GcmaDriver<H>) -> Result<(), Error> {
        if self.epoch == d.epoch() {
            return Ok(());
        }
        self.epoch = d.epoch();
        let lost = self.stored.len() as u64;
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

    /// Stores pages `(offset, page)`; returns for each whether the device accepted it. A rejected
    /// store also drops any older copy of that offset.
    pub fn store_many<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        pages: &[(u64, &[u8])],
    ) -> Result<Vec<bool>, Error> {
        self.check_epoch(d)?;
        let area = self.area;
        let mut ops: Vec<Op<'_>> = pages
            .iter()
            .map(|&(offset, page)| {
                Op::new(Request::Store(SwapKey { area, offset }), Data::In(page))
            })
            .collect();
        if let Err(e) = d.execute(&mut ops) {
            return Err(self.fail(d, e));
        }
        let mut accepted = Vec::with_capacity(ops.len());
        for (op, &(offset, _)) in ops.iter().zip(pages) {
            match op.resp.status {
                status::OK => {
                    self.stored.insert(offset);
                    self.counters.succ_stores += 1;
                    accepted.push(true);
                }
                status::REJECTED => {
                    self.stored.remove(&offset);
                    self.counters.failed_stores += 1;
                    accepted.push(false);
                }
                _ => {
                    // The old copy's fate is unknown: treat it as gone.
                    self.stored.remove(&offset);
                    return Err(Error::Status(op.resp));
                }
            }
        }
        Ok(accepted)
    }

    /// Stores one page; returns whether the device accepted it.
    pub fn store<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        offset: u64,
        page: &[u8],
    ) -> Result<bool, Error> {
        Ok(self.store_many(d, &[(offset, page)])?[0])
    }

    /// Loads pages `(offset, out)`; returns for each whether the device had it. A miss on an
    /// offset the device accepted is [`Error::FrontswapLost`].
    pub fn load_many<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        pages: &mut [(u64, &mut [u8])],
    ) -> Result<Vec<bool>, Error> {
        self.check_epoch(d)?;
        let area = self.area;
        let mut ops: Vec<Op<'_>> = pages
            .iter_mut()
            .map(|(offset, out)| {
                Op::new(
                    Request::Load(SwapKey {
                        area,
                        offset: *offset,
                    }),
                    Data::Out(&mut out[..]),
                )
            })
            .collect();
        if let Err(e) = d.execute(&mut ops) {
            drop(ops);
            return Err(self.fail(d, e));
        }
        let mut hits = Vec::with_capacity(ops.len());
        for op in &ops {
            let offset = match op.req {
                Request::Load(k) => k.offset,
                _ => 0,
            };
            match op.resp.status {
                status::OK => {
                    self.counters.loads += 1;
                    hits.push(true);
                }
                status::MISS if self.stored.contains(&offset) => {
                    self.stored.remove(&offset);
                    return Err(Error::FrontswapLost { area, offset });
                }
                status::MISS => hits.push(false),
                _ => return Err(Error::Status(op.resp)),
            }
        }
        Ok(hits)
    }

    /// Loads one page; returns whether the device had it.
    pub fn load<H: Hal>(
        &mut self,
        d: &mut GcmaDriver<H>,
        offset: u64,
        out: &mut [u8],
    ) -> Result<bool, Error> {
        Ok(self.load_many(d, &mut [(offset, out)])?[0])
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
                self.stored.remove(&offset);
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
