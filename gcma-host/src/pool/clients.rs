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

use super::cleancache::CcObjectKey;
use super::frontswap::FsEntry;
use super::hash::FastMap;
use super::GrantRec;
use crate::api::{ClientId, FrontswapKey, PoolError};

/// One client's state.
#[derive(Debug, Default)]
pub(super) struct Client {
    pub(super) name: String,
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
    pub(super) fn register(&mut self, name: &str) -> ClientId {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        s.client = Some(Client {
            name: name.to_string(),
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

    /// Every registered client with its slot.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Client)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.client.as_ref().map(|c| (i as u32, c)))
    }
}
