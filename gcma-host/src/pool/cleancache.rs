//! Cleancache: ephemeral, per-client private pools of clean pages (tmem semantics).
//!
//! Index: per client, `(pool, object) → object slot`; per object slot, `index → pool page`. Object
//! slots live in one arena so that a page's tenant (object slot, index) reaches its entry in
//! O(1) on eviction. A put may be dropped (it returns `false`); a get that hits removes the page;
//! a put over an existing key replaces the data in place.

use super::hash::FastMap;
use super::metrics::{Counters, EvictReason};
use super::pages::{PageState, Tenant};
use super::{Inner, Pool};
use crate::api::{CleancacheKey, ClientId, PoolError};

/// A client's name for a cleancache object: (cleancache pool, object id).
pub(super) type CcObjectKey = (u32, [u64; 3]);

/// A cleancache object: its pages by index.
#[derive(Debug, Default)]
pub(super) struct CcObject {
    /// Slot of the owning client.
    pub(super) client: u32,
    pub(super) pool: u32,
    pub(super) object: [u64; 3],
    pub(super) pages: FastMap<u32, u32>,
}

impl Inner {
    /// Removes entry `index` of object slot `obj` (the page itself is left to the caller) and
    /// drops the object when it becomes empty.
    pub(super) fn cc_remove_index(&mut self, obj: u32, index: u32) -> Option<u32> {
        let o = self.cc_objs.get_mut(obj as usize)?;
        let page = o.pages.remove(&index)?;
        let (client, pool, object, empty) = (o.client, o.pool, o.object, o.pages.is_empty());
        if let Some(c) = self.clients.by_slot_mut(client) {
            c.cc_pages -= 1;
            if empty {
                c.cc_objects.remove(&(pool, object));
            }
        }
        if empty {
            self.cc_free_objs.push(obj);
        }
        Some(page)
    }

    /// Frees every page of object slot `obj` (already unlinked from its client) and the slot.
    /// Returns the number of pages.
    pub(super) fn cc_drop_object(&mut self, obj: u32) -> u64 {
        let o = &mut self.cc_objs[obj as usize];
        let pages = std::mem::take(&mut o.pages);
        if let Some(c) = self.clients.by_slot_mut(o.client) {
            c.cc_pages -= pages.len() as u64;
        }
        for &p in pages.values() {
            self.pages.set(p, PageState::FreeDirty, Tenant::None);
        }
        self.cc_free_objs.push(obj);
        pages.len() as u64
    }

    /// The object slot of `key`'s object, if it has pages; checks client and pool.
    fn cc_object(&self, client: ClientId, key: &CleancacheKey) -> Result<Option<u32>, PoolError> {
        let c = self.client(client)?;
        if !c.has_cc_pool(key.pool) {
            return Err(PoolError::UnknownPool(key.pool));
        }
        Ok(c.cc_objects.get(&(key.pool, key.object)).copied())
    }

    /// Removes `key`'s entry and returns its page (left for the caller to free).
    fn cc_take(&mut self, client: ClientId, key: &CleancacheKey) -> Result<Option<u32>, PoolError> {
        let Some(obj) = self.cc_object(client, key)? else {
            return Ok(None);
        };
        Ok(self.cc_remove_index(obj, key.index))
    }

    /// Creates an (empty) object slot for an object that has none.
    fn cc_new_object(&mut self, client: ClientId, pool: u32, object: [u64; 3]) -> u32 {
        let o = match self.cc_free_objs.pop() {
            Some(o) => {
                // Reuse the slot's map and its capacity: objects come and go all the time.
                let s = &mut self.cc_objs[o as usize];
                s.client = client.slot();
                s.pool = pool;
                s.object = object;
                s.pages.clear();
                o
            }
            None => {
                self.cc_objs.push(CcObject {
                    client: client.slot(),
                    pool,
                    object,
                    pages: Default::default(),
                });
                (self.cc_objs.len() - 1) as u32
            }
        };
        if let Ok(c) = self.client_mut(client) {
            c.cc_objects.insert((pool, object), o);
        }
        o
    }
}

impl Pool {
    pub(super) fn cc_put(
        &self,
        client: ClientId,
        key: CleancacheKey,
        data: &[u8],
    ) -> Result<bool, PoolError> {
        let mut g = self.lock();
        let g = &mut *g;
        let mut obj = g.cc_object(client, &key)?;
        Counters::add_locked(&self.counters.cc_puts, 1);
        let existing = obj.and_then(|o| g.cc_objs[o as usize].pages.get(&key.index).copied());
        let c = g.client_mut(client)?;
        c.counters.cc_puts += 1;
        if let Some(p) = existing {
            // SAFETY: `p` is a cleancache page of this key; the lock is held.
            unsafe { self.res.write_page(p as u64, data) };
            g.pages.touch(p);
            return Ok(true);
        }
        if c.cc_cap.is_some_and(|cap| c.cc_pages >= cap) {
            c.counters.cc_cap_drops += 1;
            Counters::add_locked(&self.counters.cc_cap_drops, 1);
            Counters::add_locked(&self.counters.cc_puts_dropped, 1);
            return Ok(false);
        }
        let page = match g.take_free_page() {
            Some(p) => p,
            None => match g.pages.head(PageState::Cleancache) {
                Some(p) => {
                    // Evicting a cleancache page never produces write-outs.
                    let mut none = Vec::new();
                    g.evict_page(p, &self.res, &mut none, &self.counters);
                    self.counters.evicted(EvictReason::Pressure, false, 1);
                    // Evicting may have dropped this very object.
                    obj = g.cc_object(client, &key)?;
                    p
                }
                None => {
                    Counters::add_locked(&self.counters.cc_puts_dropped, 1);
                    return Ok(false);
                }
            },
        };
        let obj = match obj {
            Some(o) => o,
            None => g.cc_new_object(client, key.pool, key.object),
        };
        g.cc_objs[obj as usize].pages.insert(key.index, page);
        if let Ok(c) = g.client_mut(client) {
            c.cc_pages += 1;
        }
        // SAFETY: `page` was free or just evicted, and the lock is held.
        unsafe { self.res.write_page(page as u64, data) };
        g.pages.set(
            page,
            PageState::Cleancache,
            Tenant::Cleancache {
                obj,
                index: key.index,
            },
        );
        Ok(true)
    }

    pub(super) fn cc_get(
        &self,
        client: ClientId,
        key: CleancacheKey,
        out: &mut [u8],
    ) -> Result<bool, PoolError> {
        let mut g = self.lock();
        let g = &mut *g;
        let Some(page) = g.cc_take(client, &key)? else {
            g.client_mut(client)?.counters.cc_misses += 1;
            Counters::add_locked(&self.counters.cc_misses, 1);
            return Ok(false);
        };
        if let Ok(c) = g.client_mut(client) {
            c.counters.cc_hits += 1;
        }
        Counters::add_locked(&self.counters.cc_hits, 1);
        g.pages.set(page, PageState::FreeDirty, Tenant::None);
        // SAFETY: `page` held this key's data and is free now, but no one can take it before the
        // lock is released.
        unsafe { self.res.read_page(page as u64, out) };
        Ok(true)
    }

    /// A get that keeps the page (the semantics of tmem's shared pools) and makes it the most
    /// recently used.
    pub(super) fn cc_get_keep(
        &self,
        client: ClientId,
        key: CleancacheKey,
        out: &mut [u8],
    ) -> Result<bool, PoolError> {
        let mut g = self.lock();
        let g = &mut *g;
        let page = g
            .cc_object(client, &key)?
            .and_then(|o| g.cc_objs[o as usize].pages.get(&key.index).copied());
        let c = g.client_mut(client)?;
        let Some(page) = page else {
            c.counters.cc_misses += 1;
            Counters::add_locked(&self.counters.cc_misses, 1);
            return Ok(false);
        };
        c.counters.cc_hits += 1;
        Counters::add_locked(&self.counters.cc_hits, 1);
        g.pages.touch(page);
        // SAFETY: `page` holds this key's data; the lock is held.
        unsafe { self.res.read_page(page as u64, out) };
        Ok(true)
    }

    pub(super) fn cc_flush_page(
        &self,
        client: ClientId,
        key: CleancacheKey,
    ) -> Result<bool, PoolError> {
        let mut g = self.lock();
        let Some(page) = g.cc_take(client, &key)? else {
            return Ok(false);
        };
        g.pages.set(page, PageState::FreeDirty, Tenant::None);
        Counters::add_locked(&self.counters.cc_flushes, 1);
        Ok(true)
    }

    pub(super) fn cc_flush_object(
        &self,
        client: ClientId,
        pool: u32,
        object: [u64; 3],
    ) -> Result<u64, PoolError> {
        let mut g = self.lock();
        let c = g.client_mut(client)?;
        if !c.has_cc_pool(pool) {
            return Err(PoolError::UnknownPool(pool));
        }
        let Some(obj) = c.cc_objects.remove(&(pool, object)) else {
            return Ok(0);
        };
        let n = g.cc_drop_object(obj);
        Counters::add_locked(&self.counters.cc_flushes, n);
        Ok(n)
    }

    pub(super) fn cc_destroy_pool(&self, client: ClientId, pool: u32) -> Result<(), PoolError> {
        let mut g = self.lock();
        let c = g.client_mut(client)?;
        if !c.has_cc_pool(pool) {
            return Err(PoolError::UnknownPool(pool));
        }
        c.cc_pools[pool as usize] = false;
        let keys: Vec<(u32, [u64; 3])> = c
            .cc_objects
            .keys()
            .filter(|(p, _)| *p == pool)
            .copied()
            .collect();
        let mut objs = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(o) = c.cc_objects.remove(&k) {
                objs.push(o);
            }
        }
        let mut n = 0;
        for o in objs {
            n += g.cc_drop_object(o);
        }
        Counters::add_locked(&self.counters.cc_flushes, n);
        Ok(())
    }
}
