//! Frontswap: persistent pages. A store may be rejected; once accepted, a load returns its data
//! until the key is invalidated or replaced, wherever the data moved (pool page, host memory
//! outside the pool, backing file). See the [pool documentation](super) for the three policies.

use std::cmp::Reverse;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backing::slot_offset;
use super::metrics::{reject_index, Counters, EvictReason};
use super::pages::{PageState, Tenant};
use super::reservation::Reservation;
use super::{Inner, Pool, WRITE_BACK_RETRY_BASE, WRITE_BACK_RETRY_BATCH, WRITE_BACK_RETRY_MAX};
use crate::api::{ClientId, FrontswapKey, FrontswapPolicy, PoolError, RejectReason, PAGE_SIZE};

/// Where the data of an accepted frontswap page lives.
#[derive(Clone, Debug)]
pub(super) enum FsLoc {
    /// In this pool page.
    Pool(u32),
    /// In host memory outside the pool; `pending` while a write-back to the backing file is due.
    Host { data: Arc<[u8]>, pending: bool },
    /// Only in the backing file (the entry's slot).
    Backing,
}

/// An accepted frontswap page.
#[derive(Clone, Debug)]
pub(super) struct FsEntry {
    /// Changes on every replacement, so that delayed write-backs can tell they are stale.
    pub(super) gen: u64,
    pub(super) loc: FsLoc,
    /// Backing-file slot holding a durable copy of this generation, if any.
    pub(super) slot: Option<u64>,
}

/// A write-back due after the lock is released: (client, key, generation).
pub(super) type Writeout = (u32, FrontswapKey, u64);

/// A write-back that failed, due again at `not_before`. Ordered by that time first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WbRetry {
    pub(super) not_before: Instant,
    pub(super) gen: u64,
    pub(super) client: u32,
    pub(super) key: FrontswapKey,
    /// Attempts that failed so far.
    pub(super) failures: u32,
}

/// The wait after `failures` failed attempts: [`WRITE_BACK_RETRY_BASE`] doubled for each
/// further failure, at most [`WRITE_BACK_RETRY_MAX`].
pub(super) fn write_back_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    (WRITE_BACK_RETRY_BASE * (1u32 << doublings)).min(WRITE_BACK_RETRY_MAX)
}

impl Inner {
    /// Evicts frontswap page `page` of (`client`, `key`): if a durable copy exists in the backing
    /// file, the pool copy is just dropped; otherwise the data is copied to host memory, with a
    /// write-back to the backing file queued when `write_back`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fs_evict(
        &mut self,
        page: u32,
        client: u32,
        key: FrontswapKey,
        res: &Reservation,
        writeouts: &mut Vec<Writeout>,
        counters: &Counters,
        write_back: bool,
    ) {
        let Some(c) = self.clients.by_slot_mut(client) else {
            return;
        };
        let Some(e) = c.fs.get_mut(&key) else {
            return;
        };
        debug_assert!(matches!(e.loc, FsLoc::Pool(p) if p == page));
        if e.slot.is_some() {
            e.loc = FsLoc::Backing;
            self.fs_backing_only += 1;
            return;
        }
        let mut buf = vec![0u8; PAGE_SIZE];
        // SAFETY: `page` holds this entry's data and the lock is held.
        unsafe { res.read_page(page as u64, &mut buf) };
        e.loc = FsLoc::Host {
            data: Arc::from(buf),
            pending: write_back,
        };
        self.fs_host_pages += 1;
        if write_back {
            writeouts.push((client, key, e.gen));
        } else {
            Counters::add(&counters.put_back_pages, 1);
        }
    }

    /// Releases everything an entry holds (pool page, host copy, backing slot).
    pub(super) fn fs_drop_entry(&mut self, e: FsEntry) {
        match e.loc {
            FsLoc::Pool(p) => self.pages.set(p, PageState::FreeDirty, Tenant::None),
            FsLoc::Host { .. } => self.fs_host_pages -= 1,
            FsLoc::Backing => self.fs_backing_only -= 1,
        }
        if let Some(s) = e.slot {
            self.slots.release(s);
        }
        self.fs_stored -= 1;
    }

    fn fs_remove(&mut self, client: ClientId, key: &FrontswapKey) -> bool {
        let Ok(c) = self.client_mut(client) else {
            return false;
        };
        match c.fs.remove(key) {
            Some(e) => {
                self.fs_drop_entry(e);
                true
            }
            None => false,
        }
    }
}

impl Pool {
    fn reject(&self, r: RejectReason) -> PoolError {
        Counters::add(&self.counters.fs_rejects[reject_index(r)], 1);
        PoolError::Rejected(r)
    }

    /// Put-back policy: the most frontswap pages one client may hold while `clients` clients are
    /// registered (see [`super::PoolConfig::client_put_back_limit_pages`]).
    pub(super) fn client_put_back_limit(&self, clients: u64) -> u64 {
        let pool = self.cfg.put_back_limit_pages;
        match self.cfg.client_put_back_limit_pages {
            Some(n) => n.min(pool),
            None => pool.div_ceil(clients.max(1)),
        }
    }

    pub(super) fn fs_store(
        &self,
        client: ClientId,
        key: FrontswapKey,
        data: &[u8],
    ) -> Result<(), PoolError> {
        let policy = self.cfg.frontswap_policy;
        // Write-through: write the data to a fresh slot first, with the lock released. Nobody
        // else names the slot until the entry is installed below.
        let mut slot = None;
        if policy == FrontswapPolicy::WriteThrough {
            let s = {
                let mut g = self.lock();
                g.client(client)?;
                g.slots.alloc()
            };
            let file = self.backing.as_ref();
            let written = match file {
                Some(f) => f.write_all_at(data, slot_offset(s)),
                None => Err(std::io::Error::other("no backing file")),
            };
            if let Err(e) = written {
                crate::guest_warn!(
                    self.logs,
                    super::LOG_BACKING_WRITE,
                    "gcma pool: backing write failed: {e}"
                );
                Counters::add(&self.counters.backing_write_errors, 1);
                let mut g = self.lock();
                g.slots.release(s);
                g.fs_remove(client, &key);
                return Err(self.reject(RejectReason::BackingIo));
            }
            Counters::add(&self.counters.backing_writes, 1);
            slot = Some(s);
        }
        let mut writeouts = Vec::new();
        let result = {
            let mut g = self.lock();
            self.fs_install(&mut g, client, key, data, slot, &mut writeouts)
        };
        self.process_writeouts(writeouts);
        result
    }

    /// Installs an accepted store under the lock. On rejection, the key's old copy is invalidated
    /// and `slot` released.
    fn fs_install(
        &self,
        g: &mut Inner,
        client: ClientId,
        key: FrontswapKey,
        data: &[u8],
        slot: Option<u64>,
        writeouts: &mut Vec<Writeout>,
    ) -> Result<(), PoolError> {
        let policy = self.cfg.frontswap_policy;
        let gen = g.gen();
        let c = match g.client_mut(client) {
            Ok(c) => c,
            Err(e) => {
                if let Some(s) = slot {
                    g.slots.release(s);
                }
                return Err(e);
            }
        };
        // Replacing a page that is in the pool: overwrite it in place.
        if let Some(e) = c.fs.get_mut(&key) {
            if let FsLoc::Pool(p) = e.loc {
                let old_slot = std::mem::replace(&mut e.slot, slot);
                e.gen = gen;
                g.pages.touch(p);
                if let Some(s) = old_slot {
                    g.slots.release(s);
                }
                Counters::add(&self.counters.fs_stores, 1);
                // SAFETY: `p` holds this entry's data; the lock is held.
                unsafe { self.res.write_page(p as u64, data) };
                return Ok(());
            }
        }
        // The old copy (outside the pool) goes in any case: replaced, or invalidated by a refusal.
        let old = c.fs.remove(&key);
        let client_count = c.fs.len() as u64;
        let is_new = old.is_none();
        if let Some(old) = old {
            g.fs_drop_entry(old);
        }
        let refuse = |g: &mut Inner, r: RejectReason| {
            if let Some(s) = slot {
                g.slots.release(s);
            }
            Err(self.reject(r))
        };
        if is_new {
            if self
                .cfg
                .client_frontswap_limit_pages
                .is_some_and(|l| client_count >= l)
            {
                return refuse(g, RejectReason::ClientLimit);
            }
            if policy == FrontswapPolicy::PutBack
                && (g.fs_stored >= self.cfg.put_back_limit_pages
                    || client_count >= self.client_put_back_limit(g.clients.live()))
            {
                return refuse(g, RejectReason::PutBackLimit);
            }
        }
        let page = match g.take_free_page() {
            Some(p) => Some(p),
            None => {
                let victim = g
                    .pages
                    .head(PageState::Cleancache)
                    .or_else(|| g.pages.head(PageState::Frontswap));
                if let Some(v) = victim {
                    let wb = policy == FrontswapPolicy::WriteBack;
                    if let Some(fs) = g.evict_page(v, &self.res, writeouts, &self.counters, wb) {
                        self.counters.evicted(EvictReason::Pressure, fs, 1);
                    }
                }
                victim
            }
        };
        let loc = match page {
            Some(p) => {
                Counters::add(&self.counters.fs_stores, 1);
                // SAFETY: `p` is free or was just evicted; the lock is held.
                unsafe { self.res.write_page(p as u64, data) };
                g.pages.set(
                    p,
                    PageState::Frontswap,
                    Tenant::Frontswap {
                        client: client.slot(),
                        key,
                    },
                );
                FsLoc::Pool(p)
            }
            // Every page is granted; a write-through store is durable in the backing file anyway.
            None if slot.is_some() => {
                Counters::add(&self.counters.fs_stores, 1);
                g.fs_backing_only += 1;
                FsLoc::Backing
            }
            None => return refuse(g, RejectReason::PoolFull),
        };
        g.fs_stored += 1;
        if let Ok(c) = g.client_mut(client) {
            c.fs.insert(key, FsEntry { gen, loc, slot });
        }
        Ok(())
    }

    pub(super) fn fs_load(
        &self,
        client: ClientId,
        key: FrontswapKey,
        out: &mut [u8],
    ) -> Result<bool, PoolError> {
        let slot = {
            let mut g = self.lock();
            let g = &mut *g;
            let Some(e) = g.client(client)?.fs.get(&key) else {
                Counters::add(&self.counters.fs_load_misses, 1);
                return Ok(false);
            };
            match &e.loc {
                FsLoc::Pool(p) => {
                    let p = *p;
                    g.pages.touch(p);
                    // Counted before the copy: an atomic right after it would wait for the
                    // copy's stores to drain.
                    Counters::add(&self.counters.fs_loads_pool, 1);
                    // SAFETY: `p` holds this entry's data; the lock is held.
                    unsafe { self.res.read_page(p as u64, out) };
                    return Ok(true);
                }
                FsLoc::Host { data, .. } => {
                    out.copy_from_slice(data);
                    Counters::add(&self.counters.fs_loads_host, 1);
                    return Ok(true);
                }
                FsLoc::Backing => {
                    let Some(s) = e.slot else {
                        return Err(PoolError::Io("frontswap page lost its backing slot".into()));
                    };
                    // Pinned: the slot cannot be reused while we read it without the lock.
                    g.slots.pin(s);
                    s
                }
            }
        };
        let read = match self.backing.as_ref() {
            Some(f) => f.read_exact_at(out, slot_offset(slot)),
            None => Err(std::io::Error::other("no backing file")),
        };
        self.lock().slots.unpin(slot);
        match read {
            Ok(()) => {
                Counters::add(&self.counters.fs_loads_backing, 1);
                Ok(true)
            }
            Err(e) => Err(PoolError::Io(format!("backing file read: {e}"))),
        }
    }

    pub(super) fn fs_invalidate_page(
        &self,
        client: ClientId,
        key: FrontswapKey,
    ) -> Result<bool, PoolError> {
        let mut g = self.lock();
        g.client(client)?;
        let hit = g.fs_remove(client, &key);
        if hit {
            Counters::add(&self.counters.fs_invalidates, 1);
        }
        Ok(hit)
    }

    pub(super) fn fs_invalidate_area(&self, client: ClientId, area: u32) -> Result<u64, PoolError> {
        let mut g = self.lock();
        let g = &mut *g;
        let c = g.client_mut(client)?;
        // Freed in ascending pool-page order (pages elsewhere first), not in hash order: puts
        // and stores take the newest-freed page first, so they then walk the pool in order,
        // which the TLB and the memory prefetchers reward, and low pages are taken last.
        let mut keys: Vec<(u32, FrontswapKey)> =
            c.fs.iter()
                .filter(|(k, _)| k.area == area)
                .map(|(k, e)| match e.loc {
                    FsLoc::Pool(p) => (p, *k),
                    _ => (0, *k),
                })
                .collect();
        keys.sort_unstable_by_key(|&(p, _)| p);
        let mut n = 0;
        for (_, k) in keys {
            n += g.fs_remove(client, &k) as u64;
        }
        Counters::add(&self.counters.fs_invalidates, n);
        Ok(n)
    }

    /// Writes evicted write-back pages to the backing file, with the lock released, then points
    /// their entries at the file unless they changed meanwhile. Failed write-backs whose backoff
    /// has passed are tried again here too (at most [`WRITE_BACK_RETRY_BATCH`] per call); one that
    /// fails again waits twice as long (up to [`WRITE_BACK_RETRY_MAX`]), its page kept in host
    /// memory meanwhile, so that a backing file that fails for a while loses nothing and is not
    /// hammered.
    pub(super) fn process_writeouts(&self, writeouts: Vec<Writeout>) {
        let retries_queued = self.wb_retry_queued.load(Ordering::Relaxed) > 0;
        if writeouts.is_empty() && !retries_queued {
            return;
        }
        let Some(file) = self.backing.as_ref() else {
            return;
        };
        // (client, key, generation, failures so far, slot, data)
        let mut jobs = Vec::with_capacity(writeouts.len());
        {
            let mut g = self.lock();
            let g = &mut *g;
            let mut due: Vec<(u32, FrontswapKey, u64, u32)> = writeouts
                .into_iter()
                .map(|(c, k, gen)| (c, k, gen, 0))
                .collect();
            if retries_queued {
                let now = Instant::now();
                let mut taken = 0;
                while taken < WRITE_BACK_RETRY_BATCH {
                    match g.wb_retry.peek() {
                        Some(Reverse(r)) if r.not_before <= now => {}
                        _ => break,
                    }
                    if let Some(Reverse(r)) = g.wb_retry.pop() {
                        due.push((r.client, r.key, r.gen, r.failures));
                        taken += 1;
                    }
                }
                self.wb_retry_queued
                    .store(g.wb_retry.len() as u64, Ordering::Relaxed);
            }
            for (client, key, gen, failures) in due {
                let Some(c) = g.clients.by_slot(client) else {
                    continue;
                };
                if let Some(FsEntry {
                    gen: eg,
                    loc:
                        FsLoc::Host {
                            data,
                            pending: true,
                        },
                    ..
                }) = c.fs.get(&key)
                {
                    if *eg == gen {
                        let data = Arc::clone(data);
                        jobs.push((client, key, gen, failures, g.slots.alloc(), data));
                    }
                }
            }
        }
        if jobs.is_empty() {
            return;
        }
        let retried = jobs.iter().filter(|j| j.3 > 0).count() as u64;
        Counters::add(&self.counters.write_back_retries, retried);
        let results: Vec<bool> = jobs
            .iter()
            .map(
                |(_, _, _, _, s, data)| match file.write_all_at(data, slot_offset(*s)) {
                    Ok(()) => true,
                    Err(e) => {
                        crate::guest_warn!(
                            self.logs,
                            super::LOG_WRITE_BACK,
                            "gcma pool: write-back failed, page kept in host memory and retried \
                             later: {e}"
                        );
                        false
                    }
                },
            )
            .collect();
        let now = Instant::now();
        let mut g = self.lock();
        let g = &mut *g;
        for ((client, key, gen, failures, s, _), ok) in jobs.into_iter().zip(results) {
            let entry = g
                .clients
                .by_slot_mut(client)
                .and_then(|c| c.fs.get_mut(&key))
                .filter(|e| e.gen == gen);
            match entry {
                Some(e) if ok && e.slot.is_none() => {
                    e.loc = FsLoc::Backing;
                    e.slot = Some(s);
                    g.fs_host_pages -= 1;
                    g.fs_backing_only += 1;
                    Counters::add(&self.counters.written_back_pages, 1);
                }
                Some(e) => {
                    if !ok {
                        Counters::add(&self.counters.backing_write_errors, 1);
                        // Still pending: tried again after the backoff.
                        let failures = failures.saturating_add(1);
                        g.wb_retry.push(Reverse(WbRetry {
                            not_before: now + write_back_backoff(failures),
                            gen,
                            client,
                            key,
                            failures,
                        }));
                    } else if let FsLoc::Host { pending, .. } = &mut e.loc {
                        *pending = false;
                    }
                    g.slots.release(s);
                }
                None => g.slots.release(s),
            }
        }
        self.wb_retry_queued
            .store(g.wb_retry.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GcmaBackend;
    use crate::pool::PoolConfig;

    /// Where `key`'s data lives, if in the pool.
    fn pool_page(pool: &Pool, client: ClientId, key: FrontswapKey) -> Option<u32> {
        let g = pool.lock();
        match g.client(client).ok()?.fs.get(&key)?.loc {
            FsLoc::Pool(p) => Some(p),
            _ => None,
        }
    }

    #[test]
    fn area_invalidation_frees_in_page_order() {
        const N: u64 = 64;
        let mut cfg = PoolConfig::new(N);
        cfg.frontswap_policy = FrontswapPolicy::WriteBack;
        let pool = Pool::new(cfg).unwrap();
        let c = pool.register_client("t");
        let page = [3u8; PAGE_SIZE];
        // Scatter the pages over the keys: store, then free every other key and store again.
        for offset in 0..N {
            pool.frontswap_store(c, FrontswapKey { area: 0, offset }, &page)
                .unwrap();
        }
        for offset in (0..N).step_by(2) {
            pool.frontswap_invalidate_page(c, FrontswapKey { area: 0, offset })
                .unwrap();
        }
        for offset in (0..N).step_by(2) {
            pool.frontswap_store(
                c,
                FrontswapKey {
                    area: 0,
                    offset: N + offset,
                },
                &page,
            )
            .unwrap();
        }
        assert_eq!(pool.frontswap_invalidate_area(c, 0).unwrap(), N);
        // Freed lowest first, so the newest-freed (taken first) is the highest page.
        let mut got = Vec::new();
        for offset in 0..N {
            let key = FrontswapKey { area: 1, offset };
            pool.frontswap_store(c, key, &page).unwrap();
            got.push(pool_page(&pool, c, key).expect("in the pool"));
        }
        let want: Vec<u32> = (0..N as u32).rev().collect();
        assert_eq!(got, want);
        pool.check_consistency().unwrap();
    }
}
