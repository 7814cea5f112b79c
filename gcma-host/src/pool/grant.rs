//! Contiguous grants: choose the lowest fitting run of not-granted pages, evict the second-class
//! pages in it, zero what may hold old bytes, mark it granted. And the reverse.
//!
//! Huge pages: a run of 512 pages or more starts at a 2 MiB boundary when one is free
//! (`Inner::place_grant_huge`); a hugetlb pool sets aside whole 2 MiB pages for every grant
//! (the span: `nr_pages` rounded up to [`super::GRANT_UNIT_PAGES_HUGETLB`]), evicts and zeroes all
//! of it, and answers the size asked for. Second-class pages inside huge backing stay 4 KiB pages
//! of the pool: evicting one is bookkeeping (and zeroing before a grant), never a hole punch, so
//! the pool's memory stays resident and its huge pages whole.

use std::time::Instant;

use super::frontswap::Writeout;
use super::metrics::{Counters, EvictReason};
use super::pages::{PageState, Tenant};
use super::reservation::Reservation;
use super::{GrantRec, Inner, Pool, HUGE_ALIGN_MIN_PAGES, ZERO_UNDER_LOCK_MAX_PAGES};
use crate::api::{ClientId, ContigGrant, PoolError};
use crate::range::RangeError;

/// How many pages ahead of the one being evicted the grant loop prefetches.
const PREFETCH_AHEAD: u64 = 8;

impl Inner {
    /// Prefetches what evicting and granting `page` will touch.
    fn prefetch_eviction(&self, page: u32) {
        self.pages.prefetch_unlink(page);
        if let Tenant::Cleancache { obj, .. } = self.pages.tenant(page) {
            if let Some(o) = self.cc_objs.get(obj as usize) {
                super::pages::prefetch(o);
            }
        }
    }

    /// Evicts the second-class page `page` (cleancache: drop; frontswap: keep the data outside the
    /// pool as the policy says). The page's own state is left for the caller to set. Returns
    /// whether it held frontswap data, or `None` if it held nothing.
    pub(super) fn evict_page(
        &mut self,
        page: u32,
        res: &Reservation,
        writeouts: &mut Vec<Writeout>,
        counters: &Counters,
    ) -> Option<bool> {
        match self.pages.tenant(page) {
            Tenant::None => None,
            Tenant::Cleancache { obj, index } => {
                self.cc_remove_index(obj, index);
                Some(false)
            }
            Tenant::Frontswap { client, key } => {
                self.fs_evict(page, client, key, res, writeouts, counters);
                Some(true)
            }
        }
    }

    /// Pages of `[first, first + nr_pages)` that are not known to be zero, counting no further
    /// than `limit`.
    fn pages_to_zero(&self, first: u64, nr_pages: u64, limit: u64) -> u64 {
        let mut n = 0;
        for p in first..first + nr_pages {
            if self.pages.state(p as u32) != PageState::FreeZero {
                n += 1;
                if n >= limit {
                    break;
                }
            }
        }
        n
    }

    /// Chooses and reserves a grant's run in the range allocator: the lowest fit, unless it has
    /// pages to zero and the highest fit has fewer (known-zero runs first).
    ///
    /// Why only these two candidates: the allocator knows granted runs, not page contents, so an
    /// exhaustive search for the run with the fewest dirty pages would scan every free page. The
    /// two ends are where zero pages gather: grants take the lowest fit and their pages, once
    /// freed and zeroed by the zeroer, stay low; puts take free pages from the newest end of the
    /// lists, so tenants settle where the last puts found room. The second search is one more
    /// allocator descent and one scan of page states (an entry read per page, against 4 KiB written
    /// per page it may spare), done only when the lowest fit is not all known-zero, and it stops
    /// counting as soon as the candidate is no better.
    pub(super) fn place_grant(
        &mut self,
        nr_pages: u64,
        align_pages: u64,
    ) -> Result<u64, RangeError> {
        let low = self.alloc.alloc(nr_pages, align_pages)?;
        let low_cost = self.pages_to_zero(low, nr_pages, u64::MAX);
        if low_cost == 0 {
            return Ok(low);
        }
        let Ok(high) = self.alloc.alloc_top_down(nr_pages, align_pages) else {
            return Ok(low);
        };
        let (keep, give_back) = if self.pages_to_zero(high, nr_pages, low_cost) < low_cost {
            (high, low)
        } else {
            (low, high)
        };
        // Both runs were just allocated with exactly these bounds.
        let _ = self.alloc.free(give_back);
        Ok(keep)
    }

    /// [`Self::place_grant`] for a run of `span` pages at a multiple of `align_pages`, at a
    /// 2 MiB boundary if the run is at least [`HUGE_ALIGN_MIN_PAGES`] long and such a place is
    /// free (so that it can be mapped with 2 MiB entries), else where `align_pages` allows.
    pub(super) fn place_grant_huge(
        &mut self,
        span: u64,
        align_pages: u64,
    ) -> Result<u64, RangeError> {
        if span < HUGE_ALIGN_MIN_PAGES || align_pages >= HUGE_ALIGN_MIN_PAGES {
            return self.place_grant(span, align_pages);
        }
        match self.place_grant(span, HUGE_ALIGN_MIN_PAGES) {
            Err(RangeError::NoSpace { .. }) => self.place_grant(span, align_pages),
            r => r,
        }
    }

    /// Returns a granted run to the free pages.
    pub(super) fn release_grant_pages(&mut self, first: u64, nr_pages: u64) {
        // The allocator recorded exactly this run when it was granted.
        let _ = self.alloc.free(first);
        // To the far end of the free list, highest page first: puts take these last, and the
        // top of the run first, so that second-class data settles away from where the next
        // lowest-fit grant will look (and the grant's pages stay out of the tenants' caches).
        for p in (first..first + nr_pages).rev() {
            self.pages.set_free_head(p as u32, PageState::FreeDirty);
        }
        self.live_grants -= 1;
    }
}

impl Pool {
    pub(super) fn grant(
        &self,
        client: ClientId,
        nr_pages: u64,
        align_pages: u64,
    ) -> Result<ContigGrant, PoolError> {
        let t0 = Instant::now();
        if nr_pages == 0 {
            return Err(PoolError::Invalid("grant of zero pages"));
        }
        if align_pages == 0 || !align_pages.is_power_of_two() {
            return Err(PoolError::Invalid("alignment is not a power of two"));
        }
        // What the pool sets aside: whole units (2 MiB on hugetlb), at a unit boundary; large
        // grants preferably at a 2 MiB boundary (see `Inner::place_grant_huge`).
        let unit = self.grant_unit_pages();
        let span = nr_pages
            .checked_next_multiple_of(unit)
            .ok_or(PoolError::Invalid("grant size out of range"))?;
        let align_pages = align_pages.max(unit);
        let mut writeouts = Vec::new();
        // Runs of pages that may hold old bytes, coalesced.
        let mut dirty: Vec<(u64, u64)> = Vec::new();
        let mut nr_dirty = 0u64;
        let first;
        let t_locked;
        {
            let mut g = self.lock_for_grant();
            t_locked = Instant::now();
            Counters::add(
                &self.counters.grant_lock_wait_ns,
                (t_locked - t0).as_nanos() as u64,
            );
            let g = &mut *g;
            g.client(client)?;
            let granted = g.pages.count(PageState::Granted);
            let available = self.cfg.nr_pages - granted;
            if span > available {
                Counters::add(&self.counters.grant_fail_exhausted, 1);
                return Err(PoolError::Exhausted {
                    requested: span,
                    available,
                });
            }
            first = match g.place_grant_huge(span, align_pages) {
                Ok(f) => f,
                Err(e @ (RangeError::NoSpace { .. } | RangeError::SearchLimit { .. })) => {
                    // Both are "fragmented" to the client; operators see which.
                    Counters::add(
                        if matches!(e, RangeError::SearchLimit { .. }) {
                            &self.counters.grant_fail_search_limit
                        } else {
                            &self.counters.grant_fail_fragmented
                        },
                        1,
                    );
                    // The search is the lock time a refused request costs: count it too.
                    Counters::add(
                        &self.counters.grant_locked_ns,
                        t_locked.elapsed().as_nanos() as u64,
                    );
                    return Err(PoolError::Fragmented {
                        requested: span,
                        largest_run: g.alloc.largest_free(),
                    });
                }
                Err(_) => return Err(PoolError::Invalid("grant size or alignment out of range")),
            };
            let mut evicted = [0u64; 2];
            let end = first + span;
            for p in first..end {
                let page = p as u32;
                // Evicting is dominated by cache misses on list neighbours and store indexes
                // scattered in memory: start fetching them a few pages ahead.
                if p + PREFETCH_AHEAD < end {
                    g.prefetch_eviction((p + PREFETCH_AHEAD) as u32);
                }
                let st = g.pages.state(page);
                debug_assert!(
                    st != PageState::Granted,
                    "allocator handed out a granted page"
                );
                if st != PageState::FreeZero {
                    if let Some(fs) = g.evict_page(page, &self.res, &mut writeouts, &self.counters)
                    {
                        evicted[fs as usize] += 1;
                    }
                    match dirty.last_mut() {
                        Some((s, n)) if *s + *n == p => *n += 1,
                        _ => dirty.push((p, 1)),
                    }
                    nr_dirty += 1;
                }
                g.pages.set(page, PageState::Granted, Tenant::None);
            }
            self.counters.evicted(EvictReason::Grant, false, evicted[0]);
            self.counters.evicted(EvictReason::Grant, true, evicted[1]);
            let zero_now = nr_dirty <= ZERO_UNDER_LOCK_MAX_PAGES;
            if zero_now {
                self.zero_runs(&dirty);
            }
            g.live_grants += 1;
            // The client was checked above and the lock is held.
            if let Ok(c) = g.client_mut(client) {
                c.grants.insert(
                    first,
                    GrantRec {
                        nr_pages: span,
                        ready: zero_now,
                    },
                );
            }
            if zero_now {
                dirty.clear();
            }
            Counters::add(
                &self.counters.grant_locked_ns,
                t_locked.elapsed().as_nanos() as u64,
            );
        }
        if !dirty.is_empty() {
            // The run is granted and not ready: nobody else touches these pages.
            let t_zero = Instant::now();
            self.zero_runs(&dirty);
            let t_relock = Instant::now();
            Counters::add(
                &self.counters.grant_zero_ns,
                (t_relock - t_zero).as_nanos() as u64,
            );
            let mut g = self.lock_for_grant();
            Counters::add(
                &self.counters.grant_lock_wait_ns,
                t_relock.elapsed().as_nanos() as u64,
            );
            let ready = match g.client_mut(client) {
                Ok(c) => c.grants.get_mut(&first).map(|r| r.ready = true).is_some(),
                Err(_) => false,
            };
            if !ready {
                // The client was unregistered meanwhile: its grant is ours to release.
                g.release_grant_pages(first, span);
                drop(g);
                self.process_writeouts(writeouts);
                return Err(PoolError::UnknownClient(client));
            }
        }
        Counters::add(&self.counters.zeroed_pages, nr_dirty);
        Counters::add(&self.counters.grants, 1);
        Counters::add(&self.counters.grant_pages, span);
        // Write-back of evicted frontswap pages (write-back policy only), with the lock released;
        // the caller waits for it, so it counts in the grant's latency.
        self.process_writeouts(writeouts);
        self.counters.observe_grant(t0.elapsed());
        Ok(ContigGrant {
            client,
            first_page: first,
            nr_pages,
        })
    }

    fn zero_runs(&self, runs: &[(u64, u64)]) {
        for &(s, n) in runs {
            // SAFETY: the runs lie inside a range this thread just marked granted and has not
            // handed out (and the grant is not ready, or the lock is held), so no one else reads
            // or writes these pages.
            unsafe { self.res.zero_pages(s, n) };
        }
    }

    pub(super) fn release(&self, client: ClientId, first_page: u64) -> Result<u64, PoolError> {
        let mut g = self.lock_for_grant();
        // A retired client may still free the grants it kept.
        let c = g
            .clients
            .get_any_mut(client)
            .ok_or(PoolError::UnknownClient(client))?;
        match c.grants.get(&first_page) {
            Some(r) if r.ready => {}
            _ => return Err(PoolError::UnknownGrant(first_page)),
        }
        let rec = c
            .grants
            .remove(&first_page)
            .ok_or(PoolError::UnknownGrant(first_page))?;
        if c.retired && c.grants.is_empty() {
            g.clients.remove(client);
            log::debug!("gcma pool: retired client {client:?} freed its last grant");
        }
        g.release_grant_pages(first_page, rec.nr_pages);
        Counters::add(&self.counters.frees, 1);
        Ok(rec.nr_pages)
    }
}
