//! Host side of the GCMA memory service.
//!
//! * [`range`]: the range allocator (free blocks in an augmented, address-ordered balanced tree, the
//!   way Linux vmalloc tracks free space since 2019).
//! * [`pool`]: the GCMA pool (reservation, page states, contiguous grants, cleancache and
//!   frontswap as second-class tenants, eviction, metrics).
//! * [`api`]: the seam devices consume the pool through ([`api::GcmaBackend`]).

#![deny(missing_docs)]

pub mod api;
pub mod pool;
pub mod range;
