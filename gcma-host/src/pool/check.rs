//! [`Pool::check_consistency`]: every invariant of the pool's bookkeeping, checked the slow way.
//! A debugging and testing aid (the model tests call it after every step).

use std::collections::HashSet;

use super::frontswap::{Durable, FsLoc};
use super::pages::{PageState, Tenant};
use super::Pool;
use crate::api::FrontswapPolicy;

impl Pool {
    /// Checks every internal invariant (page lists, allocator against page states, store indexes
    /// against pages, counters). A debugging and testing aid; O(pool size).
    pub fn check_consistency(&self) -> Result<(), String> {
        let g = self.lock();
        g.pages.check()?;
        let nr = self.cfg.nr_pages;
        let granted = g.pages.count(PageState::Granted);
        if g.alloc.free_bytes() != nr - granted {
            return Err(format!(
                "allocator has {} free, page table {} not granted",
                g.alloc.free_bytes(),
                nr - granted
            ));
        }
        // Every page's grant status agrees with the allocator's free ranges.
        let mut expect_free = vec![false; nr as usize];
        for r in g.alloc.iter_free() {
            for p in r {
                expect_free[p as usize] = true;
            }
        }
        for (p, &free) in expect_free.iter().enumerate() {
            if free == (g.pages.state(p as u32) == PageState::Granted) {
                return Err(format!("page {p}: allocator and page state disagree"));
            }
        }
        let mut grant_pages = 0;
        let mut grants = 0;
        let mut stored = 0;
        let mut host = 0;
        let mut backing_only = 0;
        let mut slots = HashSet::new();
        let mut stored_shared = 0;
        let mut pb_file_host = 0;
        for (ci, c) in g.clients.iter() {
            // The client's own counts against its entries.
            let (mut pool_pages, mut host_pages, mut put_back) = (0, 0, 0);
            for e in c.fs.values() {
                match e.loc {
                    FsLoc::Pool(_) => pool_pages += 1,
                    FsLoc::Host { pending, .. } => {
                        host_pages += 1;
                        if c.file.is_some() && !pending {
                            put_back += 1;
                        }
                    }
                    FsLoc::Backing => {}
                }
            }
            let cc_pages: u64 = c
                .cc_objects
                .values()
                .map(|&o| g.cc_objs[o as usize].pages.len() as u64)
                .sum();
            if (pool_pages, host_pages, put_back, cc_pages)
                != (
                    c.fs_pool_pages,
                    c.fs_host_pages,
                    c.fs_put_back_pages,
                    c.cc_pages,
                )
            {
                return Err(format!(
                    "client {ci} counts pool/host/put-back/cleancache {}/{}/{}/{}, entries say \
                     {pool_pages}/{host_pages}/{put_back}/{cc_pages}",
                    c.fs_pool_pages, c.fs_host_pages, c.fs_put_back_pages, c.cc_pages
                ));
            }
            if c.fs_cap.is_some_and(|cap| pool_pages > cap) {
                return Err(format!("client {ci} over its frontswap cap"));
            }
            if c.cc_cap.is_some_and(|cap| cc_pages > cap) {
                return Err(format!("client {ci} over its cleancache cap"));
            }
            if c.file.is_none() {
                stored_shared += c.fs.len() as u64;
                if self.cfg.frontswap_policy == FrontswapPolicy::PutBack
                    && c.put_back_limit.is_some_and(|l| c.fs.len() as u64 > l)
                {
                    return Err(format!("client {ci} over its put-back limit"));
                }
            } else {
                pb_file_host += put_back;
                if c.put_back_limit.is_some_and(|l| put_back > l) {
                    return Err(format!("client {ci} over its put-back limit"));
                }
            }
            for (&first, rec) in &c.grants {
                grants += 1;
                grant_pages += rec.nr_pages;
                if g.alloc.allocated_len(first) != Some(rec.nr_pages) {
                    return Err(format!("grant at {first} not allocated as recorded"));
                }
            }
            for (&(pool, object), &obj) in &c.cc_objects {
                let o = g
                    .cc_objs
                    .get(obj as usize)
                    .ok_or_else(|| format!("object slot {obj} out of range"))?;
                if o.client != ci || o.pool != pool || o.object != object {
                    return Err(format!("object slot {obj} names another object"));
                }
                if !c.has_cc_pool(pool) {
                    return Err(format!("object in destroyed pool {pool}"));
                }
                if o.pages.is_empty() {
                    return Err(format!("empty object slot {obj} kept"));
                }
                for (&index, &page) in &o.pages {
                    if g.pages.tenant(page) != (Tenant::Cleancache { obj, index }) {
                        return Err(format!("cleancache page {page} has the wrong tenant"));
                    }
                }
            }
            for (key, e) in &c.fs {
                stored += 1;
                match &e.loc {
                    FsLoc::Pool(p) => {
                        let t = Tenant::Frontswap {
                            client: ci,
                            key: *key,
                        };
                        if g.pages.tenant(*p) != t {
                            return Err(format!("frontswap page {p} has the wrong tenant"));
                        }
                    }
                    FsLoc::Host { .. } => host += 1,
                    FsLoc::Backing => {
                        backing_only += 1;
                        if e.durable == Durable::No {
                            return Err(format!("{key:?} only in backing but has no durable copy"));
                        }
                    }
                }
                match e.durable {
                    Durable::Slot(s) => {
                        if c.file.is_some() {
                            return Err(format!("{key:?} of a file client in a shared slot"));
                        }
                        if !slots.insert(s) {
                            return Err(format!("backing slot {s} used twice"));
                        }
                    }
                    Durable::File if c.file.is_none() => {
                        return Err(format!("{key:?} durable in a file its client lacks"));
                    }
                    _ => {}
                }
                if c.file.is_some() && key.area != 0 {
                    return Err(format!("{key:?} of a file client outside area 0"));
                }
            }
        }
        if grant_pages != granted || grants != g.live_grants {
            return Err(format!(
                "grants cover {grant_pages} pages in {grants} grants; page table {granted}, counter {}",
                g.live_grants
            ));
        }
        let cc_pages: usize = g
            .clients
            .iter()
            .flat_map(|(_, c)| c.cc_objects.values())
            .map(|&o| g.cc_objs[o as usize].pages.len())
            .sum();
        if cc_pages as u64 != g.pages.count(PageState::Cleancache) {
            return Err(format!(
                "{cc_pages} cleancache entries, {} cleancache pages",
                g.pages.count(PageState::Cleancache)
            ));
        }
        let fs_in_pool = stored - host - backing_only;
        if stored != g.fs_stored
            || host != g.fs_host_pages
            || backing_only != g.fs_backing_only
            || fs_in_pool != g.pages.count(PageState::Frontswap)
        {
            return Err(format!(
                "frontswap counts: {stored} stored ({}), {host} host ({}), {backing_only} \
                 backing ({}), {fs_in_pool} in pool ({})",
                g.fs_stored,
                g.fs_host_pages,
                g.fs_backing_only,
                g.pages.count(PageState::Frontswap)
            ));
        }
        if slots.len() as u64 > g.slots.in_use() {
            return Err("more slots named than allocated".into());
        }
        if (stored_shared, pb_file_host) != (g.fs_stored_shared, g.pb_file_host) {
            return Err(format!(
                "shared stored {stored_shared} ({}), file put-back {pb_file_host} ({})",
                g.fs_stored_shared, g.pb_file_host
            ));
        }
        if self.cfg.frontswap_policy == FrontswapPolicy::PutBack
            && g.fs_stored_shared + g.pb_file_host > self.cfg.put_back_limit_pages
        {
            return Err("put-back limit exceeded".into());
        }
        Ok(())
    }
}
