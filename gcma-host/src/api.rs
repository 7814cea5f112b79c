//! The seam between the pool and its users (the virtio-gcma device, the VMM, benchmarks).
//!
//! Devices consume the pool through [`GcmaBackend`] so that they can be tested against a real
//! [`crate::pool::Pool`] or a stand-in, and so that nothing outside this crate depends on how the
//! pool is built.

use std::os::fd::BorrowedFd;

pub use gcma_proto::PAGE_SIZE;

/// One client (one VM, or one disk) of the pool. Cleancache pools, frontswap areas and grants
/// belong to a client; no client can name another's.
///
/// The low 32 bits name a slot of the pool's client table, the high 32 bits its generation: slots
/// are reused when clients go, and an old id never reaches the slot's next client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

impl ClientId {
    /// The id of generation `gen` of client slot `slot`.
    pub fn new(slot: u32, gen: u32) -> Self {
        ClientId(u64::from(gen) << 32 | u64::from(slot))
    }

    /// The client table slot.
    pub fn slot(self) -> u32 {
        self.0 as u32
    }

    /// The slot's generation this id belongs to.
    pub fn gen(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// A contiguous run of pool pages handed to one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContigGrant {
    /// Owner of the grant.
    pub client: ClientId,
    /// First pool page number of the run.
    pub first_page: u64,
    /// Length of the run in pages.
    pub nr_pages: u64,
}

impl ContigGrant {
    /// Offset of the grant's first byte in the pool's memfd ([`GcmaBackend::memfd`]).
    pub fn offset_bytes(&self) -> u64 {
        self.first_page * PAGE_SIZE as u64
    }

    /// Length of the grant in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.nr_pages * PAGE_SIZE as u64
    }

    /// Pages the pool set aside for this grant when it carves grants in units of `unit_pages`
    /// ([`GcmaBackend::grant_unit_pages`]): `nr_pages` rounded up to the unit. The whole span
    /// belongs to the grant alone and is what a window maps.
    pub fn span_pages(&self, unit_pages: u64) -> u64 {
        self.nr_pages.next_multiple_of(unit_pages.max(1))
    }
}

/// Key of a cleancache page: tmem's (pool, object, index) handle. The pool id comes from
/// [`GcmaBackend::cleancache_new_pool`]; object is tmem's 3×u64 object id (an inode-like name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CleancacheKey {
    /// Cleancache pool id, private to the client that created it.
    pub pool: u32,
    /// Object id inside the pool.
    pub object: [u64; 3],
    /// Page index inside the object.
    pub index: u32,
}

/// Key of a frontswap page: a swap area (`type` in Linux) and a page offset inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontswapKey {
    /// Swap area number.
    pub area: u32,
    /// Page offset inside the area.
    pub offset: u64,
}

/// What happens to a persistent (frontswap) page when its pool page is needed for a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrontswapPolicy {
    /// Every store is also written to a backing file; eviction just drops the pool copy.
    WriteThrough,
    /// Eviction writes the page to the backing file first.
    WriteBack,
    /// Eviction copies the page to ordinary host memory outside the pool (bounded).
    PutBack,
}

/// Why a frontswap store was refused. A refused store leaves no copy of the key behind (a duplicate
/// store that fails invalidates the old copy, so stale data is never returned).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// No pool page could be had without evicting a page that cannot be evicted.
    PoolFull,
    /// The put-back store outside the pool is at its limit.
    PutBackLimit,
    /// Writing to the backing file failed.
    BackingIo,
    /// The client reached its per-client page limit.
    ClientLimit,
}

/// Errors of pool operations. Every error leaves the pool unchanged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// The client id is not registered.
    #[error("unknown client {0:?}")]
    UnknownClient(ClientId),
    /// The cleancache pool id does not exist for this client.
    #[error("unknown cleancache pool {0}")]
    UnknownPool(u32),
    /// No grant of this client starts at this pool page.
    #[error("no grant of this client starts at pool page {0}")]
    UnknownGrant(u64),
    /// A request for zero pages, a misaligned or non-power-of-two alignment, or a buffer that is not
    /// one page.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// Fewer non-granted pages exist in the whole pool than were asked for.
    #[error("pool exhausted: {requested} pages asked, {available} not granted")]
    Exhausted {
        /// Pages asked for.
        requested: u64,
        /// Pages not granted to anyone (free or second-class).
        available: u64,
    },
    /// Enough non-granted pages exist, but grants split them so that no run is long enough.
    #[error("pool fragmented by grants: {requested} pages asked, longest run {largest_run}")]
    Fragmented {
        /// Pages asked for.
        requested: u64,
        /// Longest run of non-granted pages (respecting alignment is not accounted here).
        largest_run: u64,
    },
    /// A frontswap store was refused.
    #[error("frontswap store rejected: {0:?}")]
    Rejected(RejectReason),
    /// Host I/O failed (backing file, memfd, mapping).
    #[error("host I/O error: {context}")]
    Io {
        /// What the pool was doing, with the numbers an operator needs (paths, sizes, knobs).
        context: String,
        /// The operating system's error.
        #[source]
        source: HostIoError,
    },
}

impl PoolError {
    /// A [`PoolError::Io`] for `source`, which happened while doing `context`.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> PoolError {
        PoolError::Io {
            context: context.into(),
            source: HostIoError(std::sync::Arc::new(source)),
        }
    }
}

/// An `std::io::Error` that [`PoolError`] can carry while staying comparable (`PartialEq`: two
/// are equal when their kind and OS error number are): tests and callers match pool errors by
/// value.
#[derive(Debug, Clone)]
pub struct HostIoError(pub std::sync::Arc<std::io::Error>);

impl HostIoError {
    /// The underlying error.
    pub fn io_error(&self) -> &std::io::Error {
        &self.0
    }
}

impl std::fmt::Display for HostIoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for HostIoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for HostIoError {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.raw_os_error() == other.0.raw_os_error()
    }
}

impl Eq for HostIoError {}

/// The pool as devices see it. All methods are safe to call from many threads at once.
///
/// Page buffers are exactly [`PAGE_SIZE`] bytes; anything else is [`PoolError::Invalid`].
pub trait GcmaBackend: Send + Sync {
    /// Registers a client (one VM). Its name only labels metrics and logs.
    fn register_client(&self, name: &str) -> ClientId;
    /// Drops everything a client holds: its grants are freed, its cleancache pools destroyed, its
    /// frontswap pages invalidated. Its id is then unknown; the slot may go to a new client.
    fn unregister_client(&self, client: ClientId) -> Result<(), PoolError>;
    /// Like [`Self::unregister_client`], but keeps the grants the client still holds: for a client
    /// whose grants may still be mapped into its guest (a mapping that could not be removed). The
    /// retired client accepts only [`Self::free_contig`]; its pages are never handed to anyone
    /// else before that, and its slot is reused only after its last grant is freed.
    fn retire_client(&self, client: ClientId) -> Result<(), PoolError>;

    /// Grants `nr_pages` contiguous pool pages whose first page number is a multiple of
    /// `align_pages` (a power of two ≥ 1). Second-class pages in the chosen run are evicted; every
    /// page of the grant reads as zero.
    fn alloc_contig(
        &self,
        client: ClientId,
        nr_pages: u64,
        align_pages: u64,
    ) -> Result<ContigGrant, PoolError>;
    /// Returns a grant (named by its first page) to the pool; gives the pages it set aside
    /// (its length rounded up to [`Self::grant_unit_pages`]).
    fn free_contig(&self, client: ClientId, first_page: u64) -> Result<u64, PoolError>;
    /// The unit grants are carved in, in pages: a grant of `n` pages sets aside `n` rounded up
    /// to it, starting at a multiple of it, and all of that run must be mapped (hugetlb memory
    /// is mapped in whole 2 MiB pages only). 1 for 4 KiB or THP pools, 512 for hugetlb pools;
    /// see [`ContigGrant::span_pages`].
    fn grant_unit_pages(&self) -> u64 {
        1
    }
    /// The memfd that backs the pool; a grant lives at [`ContigGrant::offset_bytes`] in it.
    fn memfd(&self) -> BorrowedFd<'_>;
    /// Number of pages in the pool.
    fn nr_pages(&self) -> u64;

    /// Creates a private ephemeral pool for `client`; returns its id.
    fn cleancache_new_pool(&self, client: ClientId) -> Result<u32, PoolError>;
    /// Puts a clean page. Returns `Ok(false)` when the page was not kept (ephemeral puts may be
    /// dropped); a put over an existing key replaces it.
    fn cleancache_put(
        &self,
        client: ClientId,
        key: CleancacheKey,
        page: &[u8],
    ) -> Result<bool, PoolError>;
    /// Gets a page into `out`; `Ok(false)` on a miss. A hit removes the page (private pools).
    fn cleancache_get(
        &self,
        client: ClientId,
        key: CleancacheKey,
        out: &mut [u8],
    ) -> Result<bool, PoolError>;
    /// Drops one page; `Ok(false)` if it was not there.
    fn cleancache_flush_page(
        &self,
        client: ClientId,
        key: CleancacheKey,
    ) -> Result<bool, PoolError>;
    /// Drops every page of one object; returns how many.
    fn cleancache_flush_object(
        &self,
        client: ClientId,
        pool: u32,
        object: [u64; 3],
    ) -> Result<u64, PoolError>;
    /// Drops a pool and all its pages.
    fn cleancache_destroy_pool(&self, client: ClientId, pool: u32) -> Result<(), PoolError>;

    /// Stores a swapped-out page. Once this returns `Ok`, [`Self::frontswap_load`] of the key
    /// returns this data until it is invalidated or replaced.
    fn frontswap_store(
        &self,
        client: ClientId,
        key: FrontswapKey,
        page: &[u8],
    ) -> Result<(), PoolError>;
    /// Loads a page into `out`; `Ok(false)` if the key was never accepted or was invalidated.
    fn frontswap_load(
        &self,
        client: ClientId,
        key: FrontswapKey,
        out: &mut [u8],
    ) -> Result<bool, PoolError>;
    /// Invalidates one page; `Ok(false)` if it was not there.
    fn frontswap_invalidate_page(
        &self,
        client: ClientId,
        key: FrontswapKey,
    ) -> Result<bool, PoolError>;
    /// Invalidates every page of a swap area; returns how many.
    fn frontswap_invalidate_area(&self, client: ClientId, area: u32) -> Result<u64, PoolError>;
}

/// Displays an error with its whole chain of sources, `outer: inner: root`, for log lines and
/// messages to operators (a [`PoolError::Io`] shows its context, then the OS error).
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_source_and_compare_by_kind_and_errno() {
        let e = PoolError::io("backing file read", std::io::Error::from_raw_os_error(28));
        let source = std::error::Error::source(&e).expect("the OS error is the source");
        assert!(source.to_string().contains("os error 28"), "{source}");
        assert_eq!(e.to_string(), "host I/O error: backing file read");
        assert_eq!(
            ErrorChain(&e).to_string(),
            format!("host I/O error: backing file read: {source}")
        );
        assert_eq!(
            e,
            PoolError::io("backing file read", std::io::Error::from_raw_os_error(28))
        );
        assert_ne!(
            e,
            PoolError::io("backing file read", std::io::Error::from_raw_os_error(5))
        );
    }
}
