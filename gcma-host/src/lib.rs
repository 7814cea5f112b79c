//! Host side of the GCMA memory service.
//!
//! * [`range`]: the range allocator (free blocks in an augmented, address-ordered balanced tree, the
//!   way Linux vmalloc tracks free space since 2019).
//! * [`pool`]: the GCMA pool (reservation, page states, contiguous grants, cleancache and
//!   frontswap as second-class tenants, eviction, metrics).
//! * [`huge`]: huge-page backing (hugetlb or shmem THP) for the pool and for guest RAM.
//! * [`api`]: the seam devices consume the pool through ([`api::GcmaBackend`]).
//! * [`log_limit`]: the limiter every log line a guest can trigger goes through (one per VM), used
//!   by the devices, the VMM and the pool.

#![deny(missing_docs)]

pub mod api;
pub mod huge;
pub mod log_limit;
pub mod pool;
pub mod range;
