//! The pool's clients (one per VM or disk): a slab of slots, reused after a client goes, with a
//! generation in every [`ClientId`] so that a recycled slot never answers to an old id.
//!
//! A guest can reset its device as often as it likes, and every reset is an unregister and a
//! register: slots are therefore reused (memory stays bounded by the clients alive at once) and
//! counted (statistics cost O(1), not O(clients ever registered)).
//!
//! A client that is unregistered while some of its grants cannot be taken back (their mapping
//! into the guest could not be removed) is *retired*: its second-class pages are gone and it
//! accepts no request but [`crate::api::GcmaBackend::free_contig`]; its slot is reused only after
//! its last grant is freed.

use std::sync::Arc;

use super::backing::{BackingStore, DiskBacking};
use super::cleancache::CcObjectKey;
use super::frontswap::FsEntry;
use super::hash::FastMap;
use super::GrantRec;
use crate::api::{ClientId, FrontswapKey, PoolError};

/// Where a client's frontswap pages go when they are not in a pool page.
#[derive(Clone, Debug, Default)]
pub enum FrontswapBacking {
    /// The pool's shared backing file, in slots handed out as needed (an anonymous file that
    /// does not outlive the pool). What [`crate::api::GcmaBackend::register_client`] gives.
    #[default]
    Shared,
    /// The client's own store, at fixed offsets: page `offset` of swap area 0 at byte
    /// `offset × 4096` (area 0 is the only one such a client has). This is a disk: a key that
    /// is not in the pool reads from the store (zero where never written), so a store opened
    /// again by a new pool reads back what the old one made durable. A store the pool cannot
    /// keep in a pool page (pool full, the client's cap reached) is written to the store and
    /// accepted; invalidation punches a hole.
    File(Arc<dyn BackingStore>),
}

/// Per-client options of [`super::Pool::register_client_with`]. The default is what
/// [`crate::api::GcmaBackend::register_client`] gives: the shared backing and no limits of its
/// own.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Where frontswap pages go outside the pool.
    pub frontswap_backing: FrontswapBacking,
    /// Most pool pages the client's frontswap data may occupy; a store beyond it is kept outside
    /// the pool (the backing file under write-through, the client's own file) or refused
    /// ([`crate::api::RejectReason::ClientLimit`]).
    pub frontswap_cap_pages: Option<u64>,
    /// Most pool pages the client's cleancache data may occupy; a put of a new key beyond it is
    /// dropped.
    pub cleancache_cap_pages: Option<u64>,
    /// Put-back policy: with the shared backing, most frontswap pages the client may have
    /// accepted at once; with its own file, most evicted pages kept in host memory (the rest are
    /// written to the file). The pool-wide [`super::PoolConfig::put_back_limit_pages`] is a
    /// ceiling over all clients either way.
    pub put_back_limit_pages: Option<u64>,
}

/// Counters of one client, bumped under the pool lock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ClientCounters {
    pub(super) fs_stores: u64,
    pub(super) fs_cap_hits: u64,
    pub(super) fs_rejects: u64,
    pub(super) fs_loads_pool: u64,
    pub(super) fs_loads_host: u64,
    pub(super) fs_loads_backing: u64,
    pub(super) file_writes: u64,
    pub(super) written_back: u64,
    pub(super) put_back: u64,
    pub(super) writeback_retries: u64,
    pub(super) write_errors: u64,
    pub(super) cc_puts: u64,
    pub(super) cc_cap_drops: u64,
    pub(super) cc_hits: u64,
    pub(super) cc_misses: u64,
}

/// One client's state.
#[derive(Debug, Default)]
pub(super) struct Client {
    pub(super) name: String,
    /// The client's own backing store, if it has one.
    pub(super) file: Option<Arc<DiskBacking>>,
    pub(super) fs_cap: Option<u64>,
    pub(super) cc_cap: Option<u64>,
    pub(super) put_back_limit: Option<u64>,
    /// Frontswap entries whose data is in a pool page.
    pub(super) fs_pool_pages: u64,
    /// Frontswap entries whose data is in host memory (put back, or waiting for a write-back).
    pub(super) fs_host_pages: u64,
    /// Of those, put-back copies of a file-backed client (not waiting for a write).
    pub(super) fs_put_back_pages: u64,
    /// Cleancache pages held.
    pub(super) cc_pages: u64,
    pub(super) counters: ClientCounters,
    pub(super) grants: FastMap<u64, GrantRec>,
    /// Live cleancache pools, by id.
    pub(super) cc_pools: Vec<bool>,
    /// (cleancache pool, object) → object slot.
    pub(super) cc_objects: FastMap<CcObjectKey, u32>,
    pub(super) fs: FastMap<FrontswapKey, FsEntry>,
    /// Unregistered, but holding grants that could not be taken back.
    pub(super) retired: bool,
}

impl Client {
    pub(super) fn has_cc_pool(&self, pool: u32) -> bool {
        self.cc_pools.get(pool as usize).copied().unwrap_or(false)
    }
}

#[derive(Debug, Default)]
struct Slot {
    /// Generation of the slot's current (or next) client.
    gen: u32,
    client: Option<Client>,
}

/// Every client slot, live or free.
#[derive(Debug, Default)]
pub(super) struct Clients {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: u64,
}

impl Clients {
    /// Registers a client in a free slot (the lowest freed one first) or a new slot.
    pub(super) fn register(&mut self, name: &str, opts: ClientOptions) -> ClientId {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        let file = match opts.frontswap_backing {
            FrontswapBacking::Shared => None,
            FrontswapBacking::File(store) => Some(Arc::new(DiskBacking::new(store))),
        };
        s.client = Some(Client {
            name: name.to_string(),
            file,
            fs_cap: opts.frontswap_cap_pages,
            cc_cap: opts.cleancache_cap_pages,
            put_back_limit: opts.put_back_limit_pages,
            ..Client::default()
        });
        self.live += 1;
        ClientId::new(slot, s.gen)
    }

    /// A registered, not retired client.
    pub(super) fn get(&self, id: ClientId) -> Result<&Client, PoolError> {
        match self.slots.get(id.slot() as usize) {
            Some(Slot {
                gen,
                client: Some(c),
            }) if *gen == id.gen() && !c.retired => Ok(c),
            _ => Err(PoolError::UnknownClient(id)),
        }
    }

    /// A registered, not retired client.
    pub(super) fn get_mut(&mut self, id: ClientId) -> Result<&mut Client, PoolError> {
        self.get_any_mut(id)
            .filter(|c| !c.retired)
            .ok_or(PoolError::UnknownClient(id))
    }

    /// A registered client, retired or not.
    pub(super) fn get_any_mut(&mut self, id: ClientId) -> Option<&mut Client> {
        match self.slots.get_mut(id.slot() as usize) {
            Some(Slot {
                gen,
                client: Some(c),
            }) if *gen == id.gen() => Some(c),
            _ => None,
        }
    }

    /// The client in `slot`, whoever it is (second-class pages name their owner by slot; a
    /// client's pages are all gone before its slot is reused).
    pub(super) fn by_slot(&self, slot: u32) -> Option<&Client> {
        self.slots.get(slot as usize)?.client.as_ref()
    }

    /// As [`Self::by_slot`].
    pub(super) fn by_slot_mut(&mut self, slot: u32) -> Option<&mut Client> {
        self.slots.get_mut(slot as usize)?.client.as_mut()
    }

    /// Takes a client out of its slot (which is then free for a new generation).
    pub(super) fn remove(&mut self, id: ClientId) -> Option<Client> {
        let s = self.slots.get_mut(id.slot() as usize)?;
        if s.gen != id.gen() {
            return None;
        }
        let c = s.client.take()?;
        s.gen = s.gen.wrapping_add(1);
        self.free.push(id.slot());
        self.live -= 1;
        Some(c)
    }

    /// Registered clients (retired ones included): O(1).
    pub(super) fn live(&self) -> u64 {
        self.live
    }

    /// Every registered, not retired client with its id.
    pub(super) fn iter_ids(&self) -> impl Iterator<Item = (ClientId, &Client)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let c = s.client.as_ref().filter(|c| !c.retired)?;
            Some((ClientId::new(i as u32, s.gen), c))
        })
    }

    /// Every registered client with its slot.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Client)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.client.as_ref().map(|c| (i as u32, c)))
    }
}
