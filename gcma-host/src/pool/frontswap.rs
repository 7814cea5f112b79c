//! Frontswap: persistent pages. A store may be rejected; once accepted, a load returns its data
//! until the key is invalidated or replaced, wherever the data moved (pool page, host memory
//! outside the pool, backing file). See the [pool documentation](super) for the three policies
//! and for clients with their own backing file.
//!
//! Kept as one unit although it is long: store, load, invalidate, eviction under the three
//! policies and the write-out of clients with their own file all move the same page between the
//! same four places under one lock protocol; split, the lost-page invariant would span files.

use std::ops::RangeInclusive;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backing::{disk_offset, slot_offset, DiskBacking};
use super::metrics::{reject_index, Counters, EvictReason};
use super::pages::{PageState, Tenant};
use super::reservation::Reservation;
use super::{Inner, Pool};
use crate::api::{ClientId, FrontswapKey, FrontswapPolicy, PoolError, RejectReason, PAGE_SIZE};

/// Where the data of an accepted frontswap page lives.
#[derive(Clone, Debug)]
pub(super) enum FsLoc {
    /// In this pool page.
    Pool(u32),
    /// In host memory outside the pool; `pending` while a write to the backing file is due
    /// (write-back, or a put-back client's own file once its put-back limit is reached).
    Host { data: Arc<[u8]>, pending: bool },
    /// Only in the backing file (the entry's slot, or the client's own file).
    Backing,
}

/// Where a durable copy of an entry's current generation is, if anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Durable {
    /// Nowhere: the pool page or host copy is the only one.
    No,
    /// In this slot of the pool's shared backing file.
    Slot(u64),
    /// In the client's own file, at the key's offset.
    File,
}

/// An accepted frontswap page.
#[derive(Clone, Debug)]
pub(super) struct FsEntry {
    /// Changes on every replacement, so that delayed write-backs can tell they are stale.
    pub(super) gen: u64,
    pub(super) loc: FsLoc,
    pub(super) durable: Durable,
}

/// A write to the backing file due after the lock is released.
#[derive(Clone, Copy, Debug)]
pub(super) struct Writeout {
    /// Slot of the owning client.
    pub(super) client: u32,
    pub(super) key: FrontswapKey,
    /// Generation the data belongs to; the write is skipped or ignored once the key moved on.
    pub(super) gen: u64,
    /// Failed attempts so far.
    pub(super) attempt: u32,
}

/// A failed write-back waiting for its next attempt.
#[derive(Clone, Copy, Debug)]
pub(super) struct Retry {
    pub(super) w: Writeout,
    pub(super) due: Instant,
}

/// Delay before retry number `attempt` (1, 2, ...) of a failed write-back: 10 ms, doubling, at
/// most 5 s.
pub fn writeback_backoff(attempt: u32) -> Duration {
    let ms = 10u64 << attempt.saturating_sub(1).min(9);
    Duration::from_millis(ms.min(5000))
}

/// How a store went in [`Pool::fs_install`].
#[derive(Debug, PartialEq, Eq)]
enum Install {
    Done,
    /// A client with its own file: no pool page for it, and no durable copy yet; nothing changed.
    NeedFile,
}

/// Most pages one write-back write carries.
const WRITEOUT_RUN_PAGES: usize = 64;

/// Pages [`Pool::flush_client`] copies out of the pool per lock hold.
const FLUSH_BATCH: usize = 256;

impl Inner {
    /// Evicts frontswap page `page` of (`client`, `key`): if a durable copy exists, the pool copy
    /// is just dropped; otherwise the data is copied to host memory, with a write to the backing
    /// file queued when the policy and limits say so.
    pub(super) fn fs_evict(
        &mut self,
        page: u32,
        client: u32,
        key: FrontswapKey,
        res: &Reservation,
        writeouts: &mut Vec<Writeout>,
        counters: &Counters,
    ) {
        let pb_total = self.fs_stored_shared + self.pb_file_host + self.pb_reserved;
        let (policy, pb_limit) = (self.policy, self.put_back_limit);
        let Some(c) = self.clients.by_slot_mut(client) else {
            return;
        };
        let file = c.file.is_some();
        let below_client_limit = c.put_back_limit.is_none_or(|l| c.fs_put_back_pages < l);
        let Some(e) = c.fs.get_mut(&key) else {
            return;
        };
        debug_assert!(matches!(e.loc, FsLoc::Pool(p) if p == page));
        c.fs_pool_pages -= 1;
        if e.durable != Durable::No {
            e.loc = FsLoc::Backing;
            self.fs_backing_only += 1;
            return;
        }
        let mut buf = vec![0u8; PAGE_SIZE];
        // SAFETY: `page` holds this entry's data and the lock is held.
        unsafe { res.read_page(page as u64, &mut buf) };
        // Shared clients under put-back keep every page in host memory (their number is bounded
        // when stored); a client with its own file does while under its limits, then writes.
        let put_back = policy == FrontswapPolicy::PutBack
            && (!file || (below_client_limit && pb_total < pb_limit));
        e.loc = FsLoc::Host {
            data: Arc::from(buf),
            pending: !put_back,
        };
        c.fs_host_pages += 1;
        self.fs_host_pages += 1;
        if put_back {
            c.counters.put_back += 1;
            if file {
                c.fs_put_back_pages += 1;
                self.pb_file_host += 1;
            }
            Counters::add(&counters.put_back_pages, 1);
        } else {
            writeouts.push(Writeout {
                client,
                key,
                gen: e.gen,
                attempt: 0,
            });
        }
    }

    /// Releases everything an entry of the client in `slot` holds (pool page, host copy, backing
    /// slot). `file` says whether that client has its own file.
    pub(super) fn fs_drop_entry(&mut self, slot: u32, file: bool, e: FsEntry) {
        let c = self.clients.by_slot_mut(slot);
        match e.loc {
            FsLoc::Pool(p) => {
                if let Some(c) = c {
                    c.fs_pool_pages -= 1;
                }
                self.pages.set(p, PageState::FreeDirty, Tenant::None);
            }
            FsLoc::Host { pending, .. } => {
                let put_back = file && !pending;
                if let Some(c) = c {
                    c.fs_host_pages -= 1;
                    if put_back {
                        c.fs_put_back_pages -= 1;
                    }
                }
                if put_back {
                    self.pb_file_host -= 1;
                }
                self.fs_host_pages -= 1;
            }
            FsLoc::Backing => self.fs_backing_only -= 1,
        }
        if let Durable::Slot(s) = e.durable {
            self.slots.release(s);
        }
        self.fs_stored -= 1;
        if !file {
            self.fs_stored_shared -= 1;
        }
    }

    fn fs_remove(&mut self, client: ClientId, key: &FrontswapKey) -> bool {
        let Ok(c) = self.client_mut(client) else {
            return false;
        };
        let file = c.file.is_some();
        match c.fs.remove(key) {
            Some(e) => {
                self.fs_drop_entry(client.slot(), file, e);
                true
            }
            None => false,
        }
    }

    /// Removes every entry of `client` in `area` whose offset lies in `range`, freeing pool pages
    /// in ascending page order (pages elsewhere first), not in hash order: puts and stores take
    /// the newest-freed page first, so they then walk the pool in order, which the TLB and the
    /// memory prefetchers reward, and low pages are taken last.
    fn fs_remove_range(
        &mut self,
        client: ClientId,
        area: u32,
        range: RangeInclusive<u64>,
    ) -> Result<u64, PoolError> {
        let c = self.client_mut(client)?;
        let order = |e: &FsEntry| match e.loc {
            FsLoc::Pool(p) => p,
            _ => 0,
        };
        let span = range.end().saturating_sub(*range.start());
        let mut keys: Vec<(u32, FrontswapKey)> = if span < c.fs.len() as u64 {
            range
                .map(|offset| FrontswapKey { area, offset })
                .filter_map(|k| c.fs.get(&k).map(|e| (order(e), k)))
                .collect()
        } else {
            c.fs.iter()
                .filter(|(k, _)| k.area == area && range.contains(&k.offset))
                .map(|(k, e)| (order(e), *k))
                .collect()
        };
        keys.sort_unstable_by_key(|&(p, _)| p);
        let mut n = 0;
        for (_, k) in keys {
            n += self.fs_remove(client, &k) as u64;
        }
        Ok(n)
    }

    /// Whether a store could have a pool page (a free one, or a second-class page to evict).
    fn fs_page_available(&self) -> bool {
        self.pages.count(PageState::FreeDirty)
            + self.pages.count(PageState::FreeZero)
            + self.pages.count(PageState::Cleancache)
            + self.pages.count(PageState::Frontswap)
            > 0
    }

    fn schedule_retry(&mut self, w: Writeout) {
        let attempt = w.attempt + 1;
        self.retries.push(Retry {
            w: Writeout { attempt, ..w },
            due: Instant::now() + writeback_backoff(attempt),
        });
    }
}

impl Pool {
    fn reject(&self, r: RejectReason) -> PoolError {
        Counters::add(&self.counters.fs_rejects[reject_index(r)], 1);
        PoolError::Rejected(r)
    }

    /// The client's own backing file, if it has one (checks the client).
    fn client_file(&self, client: ClientId) -> Result<Option<Arc<DiskBacking>>, PoolError> {
        Ok(self.lock().client(client)?.file.clone())
    }

    pub(super) fn fs_store(
        &self,
        client: ClientId,
        key: FrontswapKey,
        data: &[u8],
    ) -> Result<(), PoolError> {
        if let Some(f) = self.client_file(client)? {
            return self.fs_store_file(client, key, data, &f);
        }
        let policy = self.cfg.frontswap_policy;
        // Write-through: write the data to a fresh slot first, with the lock released. Nobody
        // else names the slot until the entry is installed below.
        let mut durable = Durable::No;
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
                log::warn!("gcma pool: backing write failed: {e}");
                Counters::add(&self.counters.backing_write_errors, 1);
                let mut g = self.lock();
                g.slots.release(s);
                g.fs_remove(client, &key);
                return Err(self.reject(RejectReason::BackingIo));
            }
            Counters::add(&self.counters.backing_writes, 1);
            durable = Durable::Slot(s);
        }
        let mut writeouts = Vec::new();
        let result = {
            let mut g = self.lock();
            self.fs_install(&mut g, client, key, data, durable, &mut writeouts)
        };
        self.process_writeouts(writeouts);
        result.map(|_| ())
    }

    /// A store of a client with its own file. Write-through writes the file first; the other
    /// policies keep the page in the pool when they can and write the file when they cannot.
    fn fs_store_file(
        &self,
        client: ClientId,
        key: FrontswapKey,
        data: &[u8],
        f: &DiskBacking,
    ) -> Result<(), PoolError> {
        let off = file_offset(key)?;
        let mut writeouts = Vec::new();
        let mut result = Ok(Install::NeedFile);
        if self.cfg.frontswap_policy != FrontswapPolicy::WriteThrough {
            let mut g = self.lock();
            result = self.fs_install(&mut g, client, key, data, Durable::No, &mut writeouts);
        }
        if result == Ok(Install::NeedFile) {
            let _w = f.lock();
            if let Err(e) = f.store.write_at(data, off) {
                return Err(self.file_write_failed(client, key, &e));
            }
            Counters::add(&self.counters.file_writes, 1);
            let mut g = self.lock();
            if let Ok(c) = g.client_mut(client) {
                c.counters.file_writes += 1;
            }
            result = self.fs_install(&mut g, client, key, data, Durable::File, &mut writeouts);
        }
        self.process_writeouts(writeouts);
        result.map(|_| ())
    }

    /// A write of a new generation to a client's file failed (the caller holds the file's write
    /// lock): the key's old copy is invalidated, since the file's bytes at the key are unknown now.
    fn file_write_failed(
        &self,
        client: ClientId,
        key: FrontswapKey,
        e: &std::io::Error,
    ) -> PoolError {
        log::warn!("gcma pool: write to a client's backing file failed: {e}");
        Counters::add(&self.counters.backing_write_errors, 1);
        let mut g = self.lock();
        g.fs_remove(client, &key);
        if let Ok(c) = g.client_mut(client) {
            c.counters.write_errors += 1;
            c.counters.fs_rejects += 1;
        }
        self.reject(RejectReason::BackingIo)
    }

    /// Installs a store under the lock, with the durable copy `durable` already written. On
    /// rejection the key's old copy is invalidated and a `Slot` released. A client with its own
    /// file gets [`Install::NeedFile`] (and nothing changes) when the page can neither go to the
    /// pool nor is durable yet.
    fn fs_install(
        &self,
        g: &mut Inner,
        client: ClientId,
        key: FrontswapKey,
        data: &[u8],
        durable: Durable,
        writeouts: &mut Vec<Writeout>,
    ) -> Result<Install, PoolError> {
        let policy = self.cfg.frontswap_policy;
        let gen = g.gen();
        let pb_total = g.fs_stored_shared + g.pb_file_host;
        let page_available = g.fs_page_available();
        let release = |g: &mut Inner| {
            if let Durable::Slot(s) = durable {
                g.slots.release(s);
            }
        };
        let c = match g.client_mut(client) {
            Ok(c) => c,
            Err(e) => {
                release(g);
                return Err(e);
            }
        };
        let file = c.file.is_some();
        // Replacing a page that is in the pool: overwrite it in place.
        if let Some(e) = c.fs.get_mut(&key) {
            if let FsLoc::Pool(p) = e.loc {
                let old = std::mem::replace(&mut e.durable, durable);
                e.gen = gen;
                c.counters.fs_stores += 1;
                g.pages.touch(p);
                if let Durable::Slot(s) = old {
                    g.slots.release(s);
                }
                Counters::add(&self.counters.fs_stores, 1);
                // SAFETY: `p` holds this entry's data; the lock is held.
                unsafe { self.res.write_page(p as u64, data) };
                return Ok(Install::Done);
            }
        }
        let exists = c.fs.contains_key(&key);
        let at_cap = c.fs_cap.is_some_and(|cap| c.fs_pool_pages >= cap);
        // Limits that refuse new keys bound what the shared backing and host memory must hold;
        // a client with its own file is bounded by its file.
        let mut refuse = None;
        if !file && !exists {
            let n = c.fs.len() as u64;
            if self
                .cfg
                .client_frontswap_limit_pages
                .is_some_and(|l| n >= l)
            {
                refuse = Some(RejectReason::ClientLimit);
            } else if policy == FrontswapPolicy::PutBack
                && (pb_total >= self.cfg.put_back_limit_pages
                    || c.put_back_limit.is_some_and(|l| n >= l))
            {
                refuse = Some(RejectReason::PutBackLimit);
            }
        }
        let take_page = refuse.is_none() && !at_cap && page_available;
        if refuse.is_none() && !take_page && durable == Durable::No && file {
            // Counted (a cap hit) when it comes back with the page written.
            return Ok(Install::NeedFile);
        }
        if at_cap && refuse.is_none() {
            c.counters.fs_cap_hits += 1;
            Counters::add(&self.counters.fs_cap_hits, 1);
        }
        if refuse.is_none() && !take_page && durable == Durable::No {
            refuse = Some(if at_cap {
                RejectReason::ClientLimit
            } else {
                RejectReason::PoolFull
            });
        }
        // The old copy (outside the pool) goes in any case: replaced, or invalidated by a refusal.
        if let Some(old) = c.fs.remove(&key) {
            g.fs_drop_entry(client.slot(), file, old);
        }
        if let Some(r) = refuse {
            release(g);
            if let Ok(c) = g.client_mut(client) {
                c.counters.fs_rejects += 1;
            }
            return Err(self.reject(r));
        }
        let page = if take_page {
            match g.take_free_page() {
                Some(p) => Some(p),
                None => {
                    let victim = g
                        .pages
                        .head(PageState::Cleancache)
                        .or_else(|| g.pages.head(PageState::Frontswap));
                    if let Some(v) = victim {
                        // The new shared entry counts against the put-back ceiling already, so
                        // that the eviction cannot put back a page into the last place.
                        g.pb_reserved = u64::from(!file);
                        if let Some(fs) = g.evict_page(v, &self.res, writeouts, &self.counters) {
                            self.counters.evicted(EvictReason::Pressure, fs, 1);
                        }
                        g.pb_reserved = 0;
                    }
                    victim
                }
            }
        } else {
            None
        };
        let loc = match page {
            Some(p) => {
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
            // No pool page (or none allowed), but the data is durable: keep it there.
            None => {
                g.fs_backing_only += 1;
                FsLoc::Backing
            }
        };
        Counters::add(&self.counters.fs_stores, 1);
        g.fs_stored += 1;
        if !file {
            g.fs_stored_shared += 1;
        }
        if let Ok(c) = g.client_mut(client) {
            if matches!(loc, FsLoc::Pool(_)) {
                c.fs_pool_pages += 1;
            }
            c.counters.fs_stores += 1;
            c.fs.insert(key, FsEntry { gen, loc, durable });
        }
        Ok(Install::Done)
    }

    pub(super) fn fs_load(
        &self,
        client: ClientId,
        key: FrontswapKey,
        out: &mut [u8],
    ) -> Result<bool, PoolError> {
        enum From {
            Slot(u64),
            File(Arc<DiskBacking>, u64),
        }
        let from = {
            let mut guard = self.lock();
            let g = &mut *guard;
            let c = g.clients.get_mut(client)?;
            let e = match c.fs.get(&key) {
                Some(e) => e,
                None => {
                    let Some(f) = &c.file else {
                        Counters::add(&self.counters.fs_load_misses, 1);
                        return Ok(false);
                    };
                    // Not in the pool: the client's file holds the latest data.
                    let off = file_offset(key)?;
                    c.counters.fs_loads_backing += 1;
                    Counters::add(&self.counters.fs_loads_backing, 1);
                    let f = Arc::clone(f);
                    drop(guard);
                    return self.read_file(&f, out, off);
                }
            };
            match &e.loc {
                FsLoc::Pool(p) => {
                    let p = *p;
                    c.counters.fs_loads_pool += 1;
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
                    c.counters.fs_loads_host += 1;
                    Counters::add(&self.counters.fs_loads_host, 1);
                    return Ok(true);
                }
                FsLoc::Backing => {
                    c.counters.fs_loads_backing += 1;
                    Counters::add(&self.counters.fs_loads_backing, 1);
                    match (e.durable, &c.file) {
                        (Durable::File, Some(f)) => From::File(Arc::clone(f), file_offset(key)?),
                        (Durable::Slot(s), _) => {
                            // Pinned: the slot cannot be reused while we read it unlocked.
                            g.slots.pin(s);
                            From::Slot(s)
                        }
                        _ => {
                            return Err(PoolError::io(
                                "frontswap page lost its backing copy",
                                std::io::Error::from(std::io::ErrorKind::NotFound),
                            ))
                        }
                    }
                }
            }
        };
        match from {
            From::File(f, off) => self.read_file(&f, out, off),
            From::Slot(slot) => {
                let read = match self.backing.as_ref() {
                    Some(f) => f.read_exact_at(out, slot_offset(slot)),
                    None => Err(std::io::Error::other("no backing file")),
                };
                self.lock().slots.unpin(slot);
                read.map(|()| true)
                    .map_err(|e| PoolError::io("backing file read", e))
            }
        }
    }

    /// Checks a multi-page request of a client with its own file: the file, the page count and
    /// the byte offset of the first page.
    fn run_of(
        &self,
        client: ClientId,
        first: u64,
        len: usize,
    ) -> Result<(Arc<DiskBacking>, u64, u64), PoolError> {
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(PoolError::Invalid("buffer is not a whole number of pages"));
        }
        let n = (len / PAGE_SIZE) as u64;
        let off = first
            .checked_add(n)
            .and_then(disk_offset)
            .and_then(|_| disk_offset(first))
            .ok_or(PoolError::Invalid("page offset beyond the largest file"))?;
        let f = self.client_file(client)?.ok_or(PoolError::Invalid(
            "multi-page operations are for clients with their own backing file",
        ))?;
        Ok((f, n, off))
    }

    /// Stores `data` (whole pages) as the pages `first`, `first + 1`, ... of swap area 0 of a
    /// client with its own backing file: what [`GcmaBackend::frontswap_store`] of each page does,
    /// with one lock hold for the pool's part and one file write per run of pages that go to
    /// the file (write-through writes all of them at once). A disk's multi-page write.
    ///
    /// On a failed file write the pages of the call may be partly stored; those whose write
    /// failed are invalidated, as a failed single store invalidates its key.
    ///
    /// [`GcmaBackend::frontswap_store`]: crate::api::GcmaBackend::frontswap_store
    pub fn frontswap_store_pages(
        &self,
        client: ClientId,
        first: u64,
        data: &[u8],
    ) -> Result<(), PoolError> {
        let (f, n, off) = self.run_of(client, first, data.len())?;
        let key = |i: u64| FrontswapKey {
            area: 0,
            offset: first + i,
        };
        let page = |i: u64| &data[i as usize * PAGE_SIZE..(i as usize + 1) * PAGE_SIZE];
        let mut writeouts = Vec::new();
        // Pages that must be written to the file: all under write-through; otherwise those the
        // pool cannot keep.
        let mut to_file: Vec<u64> = Vec::new();
        if self.cfg.frontswap_policy == FrontswapPolicy::WriteThrough {
            to_file.extend(0..n);
        } else {
            let mut g = self.lock();
            for i in 0..n {
                match self.fs_install(&mut g, client, key(i), page(i), Durable::No, &mut writeouts)
                {
                    Ok(Install::Done) => {}
                    Ok(Install::NeedFile) => to_file.push(i),
                    Err(e) => {
                        // The client is gone; what evictions queued must still be written.
                        drop(g);
                        self.process_writeouts(writeouts);
                        return Err(e);
                    }
                }
            }
        }
        let mut result = Ok(());
        if !to_file.is_empty() {
            let _w = f.lock();
            // Contiguous runs, one write each.
            let mut written = 0u64;
            let mut start = 0;
            while start < to_file.len() {
                let mut end = start + 1;
                while end < to_file.len() && to_file[end] == to_file[end - 1] + 1 {
                    end += 1;
                }
                let (a, b) = (to_file[start], to_file[end - 1] + 1);
                let bytes = &data[a as usize * PAGE_SIZE..b as usize * PAGE_SIZE];
                if let Err(e) = f.store.write_at(bytes, off + a * PAGE_SIZE as u64) {
                    // This run and the ones after it are not stored.
                    let mut g = self.lock();
                    for &i in &to_file[start..] {
                        g.fs_remove(client, &key(i));
                    }
                    drop(g);
                    let err = self.file_write_failed(client, key(a), &e);
                    result = Err(err);
                    to_file.truncate(start);
                    break;
                }
                written += b - a;
                start = end;
            }
            Counters::add(&self.counters.file_writes, written);
            let mut g = self.lock();
            if let Ok(c) = g.client_mut(client) {
                c.counters.file_writes += written;
            }
            for &i in &to_file {
                if let Err(e) = self.fs_install(
                    &mut g,
                    client,
                    key(i),
                    page(i),
                    Durable::File,
                    &mut writeouts,
                ) {
                    result = Err(e);
                    break;
                }
            }
        }
        self.process_writeouts(writeouts);
        result
    }

    /// Loads the pages `first`, `first + 1`, ... of swap area 0 of a client with its own backing
    /// file into `out` (whole pages): from the pool and host memory under one lock hold, and
    /// what the pool does not hold from the file, one read per run. A disk's multi-page read.
    pub fn frontswap_load_pages(
        &self,
        client: ClientId,
        first: u64,
        out: &mut [u8],
    ) -> Result<(), PoolError> {
        let (f, n, off) = self.run_of(client, first, out.len())?;
        let mut from_file: Vec<u64> = Vec::new();
        {
            let mut guard = self.lock();
            let g = &mut *guard;
            let c = g.clients.get_mut(client)?;
            let (mut pool, mut host) = (0, 0);
            for i in 0..n {
                let key = FrontswapKey {
                    area: 0,
                    offset: first + i,
                };
                let dst = &mut out[i as usize * PAGE_SIZE..(i as usize + 1) * PAGE_SIZE];
                match c.fs.get(&key).map(|e| &e.loc) {
                    Some(FsLoc::Pool(p)) => {
                        let p = *p;
                        g.pages.touch(p);
                        pool += 1;
                        // SAFETY: `p` holds this entry's data; the lock is held.
                        unsafe { self.res.read_page(p as u64, dst) };
                    }
                    Some(FsLoc::Host { data, .. }) => {
                        dst.copy_from_slice(data);
                        host += 1;
                    }
                    // In the file only, or not held by the pool: the file has the latest data.
                    Some(FsLoc::Backing) | None => from_file.push(i),
                }
            }
            let file = from_file.len() as u64;
            c.counters.fs_loads_pool += pool;
            c.counters.fs_loads_host += host;
            c.counters.fs_loads_backing += file;
            Counters::add(&self.counters.fs_loads_pool, pool);
            Counters::add(&self.counters.fs_loads_host, host);
            Counters::add(&self.counters.fs_loads_backing, file);
        }
        let mut start = 0;
        while start < from_file.len() {
            let mut end = start + 1;
            while end < from_file.len() && from_file[end] == from_file[end - 1] + 1 {
                end += 1;
            }
            let (a, b) = (from_file[start], from_file[end - 1] + 1);
            f.store
                .read_at(
                    &mut out[a as usize * PAGE_SIZE..b as usize * PAGE_SIZE],
                    off + a * PAGE_SIZE as u64,
                )
                .map_err(|e| PoolError::io("client backing file read", e))?;
            start = end;
        }
        Ok(())
    }

    fn read_file(&self, f: &DiskBacking, out: &mut [u8], off: u64) -> Result<bool, PoolError> {
        f.store
            .read_at(out, off)
            .map(|()| true)
            .map_err(|e| PoolError::io("client backing file read", e))
    }

    pub(super) fn fs_invalidate_page(
        &self,
        client: ClientId,
        key: FrontswapKey,
    ) -> Result<bool, PoolError> {
        Ok(self.fs_invalidate_range(client, key.area, key.offset..=key.offset)? > 0)
    }

    pub(super) fn fs_invalidate_area(&self, client: ClientId, area: u32) -> Result<u64, PoolError> {
        self.fs_invalidate_range(client, area, 0..=u64::MAX)
    }

    /// Invalidates the pages of `area` whose offsets lie in `offsets`; for a client with its own
    /// file also punches the range out of the file, so it reads as zero. Returns how many
    /// entries the pool held.
    pub(super) fn fs_invalidate_range(
        &self,
        client: ClientId,
        area: u32,
        offsets: RangeInclusive<u64>,
    ) -> Result<u64, PoolError> {
        let Some(f) = self.client_file(client)? else {
            let n = self.lock().fs_remove_range(client, area, offsets)?;
            Counters::add(&self.counters.fs_invalidates, n);
            return Ok(n);
        };
        if area != 0 {
            return Err(PoolError::Invalid(AREA_ZERO_ONLY));
        }
        // Byte range in the file, clipped to the largest offset a file can have.
        let max_byte = i64::MAX as u64;
        let start = offsets.start().saturating_mul(PAGE_SIZE as u64);
        let end = offsets
            .end()
            .saturating_add(1)
            .saturating_mul(PAGE_SIZE as u64)
            .min(max_byte);
        // The write lock keeps a write-back of an older generation from landing after the hole.
        let _w = f.lock();
        let n = self.lock().fs_remove_range(client, area, offsets)?;
        Counters::add(&self.counters.fs_invalidates, n);
        if start < end {
            f.store
                .punch_hole(start, end - start)
                .map_err(|e| PoolError::io("client backing file hole punch", e))?;
        }
        Ok(n)
    }

    /// Writes evicted pages to the backing file (the pool's shared one or a client's own), with
    /// the lock released, then points their entries at the file unless they changed meanwhile.
    /// A failed write keeps the host copy and is retried later ([`Pool::retry_writebacks`]).
    pub(super) fn process_writeouts(&self, writeouts: Vec<Writeout>) {
        if writeouts.is_empty() {
            return;
        }
        let mut shared = Vec::new();
        let mut files: Vec<(Arc<DiskBacking>, Vec<Writeout>)> = Vec::new();
        {
            let g = self.lock();
            for w in writeouts {
                let Some(c) = g.clients.by_slot(w.client) else {
                    continue;
                };
                match &c.file {
                    None => shared.push(w),
                    Some(f) => match files.iter_mut().find(|(other, _)| Arc::ptr_eq(other, f)) {
                        Some((_, ws)) => ws.push(w),
                        None => files.push((Arc::clone(f), vec![w])),
                    },
                }
            }
        }
        if !shared.is_empty() {
            self.writeout_shared(shared);
        }
        for (f, ws) in files {
            self.writeout_file(&f, ws);
        }
    }

    /// The data of `w` if its entry is still that generation and waiting for its write.
    fn pending_data(g: &Inner, w: &Writeout) -> Option<Arc<[u8]>> {
        match g.clients.by_slot(w.client)?.fs.get(&w.key)? {
            FsEntry {
                gen,
                loc:
                    FsLoc::Host {
                        data,
                        pending: true,
                    },
                ..
            } if *gen == w.gen => Some(Arc::clone(data)),
            _ => None,
        }
    }

    /// A write-back of `w` succeeded (to `durable`): the entry now lives in the file.
    fn writeout_done(&self, g: &mut Inner, w: &Writeout, durable: Durable) -> bool {
        let Some(c) = g.clients.by_slot_mut(w.client) else {
            return false;
        };
        let Some(e) = c.fs.get_mut(&w.key).filter(|e| e.gen == w.gen) else {
            return false;
        };
        if !matches!(e.loc, FsLoc::Host { pending: true, .. }) || e.durable != Durable::No {
            return false;
        }
        e.loc = FsLoc::Backing;
        e.durable = durable;
        c.fs_host_pages -= 1;
        c.counters.written_back += 1;
        g.fs_host_pages -= 1;
        g.fs_backing_only += 1;
        Counters::add(&self.counters.written_back_pages, 1);
        true
    }

    fn writeout_failed(&self, g: &mut Inner, w: Writeout, e: &std::io::Error) {
        let n = self
            .counters
            .backing_write_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if n <= 16 || n.is_power_of_two() {
            log::warn!(
                "gcma pool: write-back failed ({n} so far), page kept in host memory and retried: {e}"
            );
        }
        if let Some(c) = g.clients.by_slot_mut(w.client) {
            c.counters.write_errors += 1;
        }
        g.schedule_retry(w);
    }

    fn writeout_shared(&self, writeouts: Vec<Writeout>) {
        let Some(file) = self.backing.as_ref() else {
            return;
        };
        let mut jobs = Vec::with_capacity(writeouts.len());
        {
            let mut g = self.lock();
            for w in writeouts {
                if let Some(data) = Self::pending_data(&g, &w) {
                    let s = g.slots.alloc();
                    jobs.push((w, s, data));
                }
            }
        }
        let results: Vec<std::io::Result<()>> = jobs
            .iter()
            .map(|(_, s, data)| file.write_all_at(data, slot_offset(*s)))
            .collect();
        let mut g = self.lock();
        for ((w, s, _), r) in jobs.into_iter().zip(results) {
            match r {
                Ok(()) => {
                    if !self.writeout_done(&mut g, &w, Durable::Slot(s)) {
                        g.slots.release(s);
                    }
                }
                Err(e) => {
                    g.slots.release(s);
                    if Self::pending_data(&g, &w).is_some() {
                        self.writeout_failed(&mut g, w, &e);
                    }
                }
            }
        }
    }

    fn writeout_file(&self, f: &DiskBacking, writeouts: Vec<Writeout>) {
        // Held from the generation check to the entry update: see `DiskBacking`.
        let _w = f.lock();
        let jobs: Vec<(Writeout, Arc<[u8]>)> = {
            let g = self.lock();
            writeouts
                .into_iter()
                .filter_map(|w| Self::pending_data(&g, &w).map(|d| (w, d)))
                .collect()
        };
        let mut jobs = jobs;
        // Pages of consecutive keys go out in one write (a grant evicts runs of them).
        jobs.sort_unstable_by_key(|(w, _)| w.key.offset);
        let mut results: Vec<std::io::Result<()>> = Vec::with_capacity(jobs.len());
        let mut start = 0;
        while start < jobs.len() {
            let mut end = start + 1;
            while end < jobs.len()
                && end - start < WRITEOUT_RUN_PAGES
                && jobs[end].0.key.offset == jobs[end - 1].0.key.offset + 1
            {
                end += 1;
            }
            let r = match disk_offset(jobs[start].0.key.offset) {
                Some(off) if end - start == 1 => f.store.write_at(&jobs[start].1, off),
                Some(off) => {
                    let run: Vec<u8> = jobs[start..end]
                        .iter()
                        .flat_map(|(_, d)| d.iter().copied())
                        .collect();
                    f.store.write_at(&run, off)
                }
                None => Err(std::io::Error::other("page offset beyond the file")),
            };
            for _ in start..end {
                results.push(match &r {
                    Ok(()) => Ok(()),
                    Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                });
            }
            start = end;
        }
        let mut g = self.lock();
        for ((w, _), r) in jobs.into_iter().zip(results) {
            match r {
                Ok(()) => {
                    Counters::add(&self.counters.file_writes, 1);
                    if let Some(c) = g.clients.by_slot_mut(w.client) {
                        c.counters.file_writes += 1;
                    }
                    self.writeout_done(&mut g, &w, Durable::File);
                }
                Err(e) => {
                    if Self::pending_data(&g, &w).is_some() {
                        self.writeout_failed(&mut g, w, &e);
                    }
                }
            }
        }
    }

    /// Retries the failed write-backs whose backoff has passed ([`writeback_backoff`]). A
    /// daemon calls this on a timer; without it, pages whose write failed stay in host memory.
    /// Returns how many were retried.
    pub fn retry_writebacks(&self) -> u64 {
        let now = Instant::now();
        let due: Vec<Writeout> = {
            let mut g = self.lock();
            let g = &mut *g;
            let mut due = Vec::new();
            g.retries.retain(|r| {
                if r.due <= now {
                    due.push(r.w);
                    false
                } else {
                    true
                }
            });
            // Only those still waiting for their write count as retried.
            due.retain(|w| Self::pending_data(g, w).is_some());
            for w in &due {
                if let Some(c) = g.clients.by_slot_mut(w.client) {
                    c.counters.writeback_retries += 1;
                }
            }
            due
        };
        let n = due.len() as u64;
        Counters::add(&self.counters.writeback_retries, n);
        self.process_writeouts(due);
        n
    }

    /// Makes every accepted frontswap page of `client` durable in its own file and syncs the
    /// file (`fdatasync`): pages only in the pool or in host memory are written (those in the
    /// pool stay there, now with a durable copy; host copies are dropped). For a client without
    /// its own file this does nothing (the shared backing file does not outlive the pool).
    /// Returns how many pages were written.
    ///
    /// A daemon calls this on shutdown, and for a disk's FLUSH: afterwards a new pool over the
    /// same file reads back every page accepted before the call.
    pub fn flush_client(&self, client: ClientId) -> Result<u64, PoolError> {
        let Some(f) = self.client_file(client)? else {
            return Ok(0);
        };
        let _w = f.lock();
        let owed: Vec<FrontswapKey> = {
            let g = self.lock();
            let c = g.client(client)?;
            c.fs.iter()
                .filter(|(_, e)| e.durable == Durable::No)
                .map(|(k, _)| *k)
                .collect()
        };
        let mut written = 0;
        let mut failure = None;
        for keys in owed.chunks(FLUSH_BATCH) {
            let jobs: Vec<(FrontswapKey, u64, Arc<[u8]>)> = {
                let g = self.lock();
                let c = g.client(client)?;
                keys.iter()
                    .filter_map(|k| {
                        let e = c.fs.get(k).filter(|e| e.durable == Durable::No)?;
                        let data: Arc<[u8]> = match &e.loc {
                            FsLoc::Pool(p) => {
                                let mut buf = vec![0u8; PAGE_SIZE];
                                // SAFETY: `p` holds this entry's data; the lock is held.
                                unsafe { self.res.read_page(*p as u64, &mut buf) };
                                Arc::from(buf)
                            }
                            FsLoc::Host { data, .. } => Arc::clone(data),
                            FsLoc::Backing => return None,
                        };
                        Some((*k, e.gen, data))
                    })
                    .collect()
            };
            let mut done = Vec::with_capacity(jobs.len());
            for (k, gen, data) in &jobs {
                let r = disk_offset(k.offset)
                    .ok_or_else(|| std::io::Error::other("page offset beyond the file"))
                    .and_then(|off| f.store.write_at(data, off));
                match r {
                    Ok(()) => done.push((*k, *gen)),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let mut g = self.lock();
            let g = &mut *g;
            for (k, gen) in done {
                let Ok(c) = g.clients.get_mut(client) else {
                    break;
                };
                let Some(e) = c.fs.get_mut(&k).filter(|e| e.gen == gen) else {
                    continue;
                };
                written += 1;
                c.counters.file_writes += 1;
                Counters::add(&self.counters.file_writes, 1);
                e.durable = Durable::File;
                if let FsLoc::Host { pending, .. } = e.loc {
                    e.loc = FsLoc::Backing;
                    c.fs_host_pages -= 1;
                    g.fs_host_pages -= 1;
                    g.fs_backing_only += 1;
                    if !pending {
                        c.fs_put_back_pages -= 1;
                        g.pb_file_host -= 1;
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        if let Some(e) = failure {
            Counters::add(&self.counters.backing_write_errors, 1);
            return Err(PoolError::io("flush to the client's backing file", e));
        }
        f.store
            .sync_data()
            .map_err(|e| PoolError::io("sync of the client's backing file", e))?;
        Ok(written)
    }
}

const AREA_ZERO_ONLY: &str = "a client with its own backing file has only swap area 0";

/// Byte offset of `key` in a client's own file.
fn file_offset(key: FrontswapKey) -> Result<u64, PoolError> {
    if key.area != 0 {
        return Err(PoolError::Invalid(AREA_ZERO_ONLY));
    }
    disk_offset(key.offset).ok_or(PoolError::Invalid("page offset beyond the largest file"))
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
