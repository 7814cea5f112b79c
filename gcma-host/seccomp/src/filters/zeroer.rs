//! The pool's background zeroer (`gcma-host/src/pool/zeroer.rs`): zeroes free pool pages with
//! plain stores under the pool lock, pacing itself with sleeps (both in `common`).

use super::Allow;

pub(crate) const ALLOW: &[Allow] = &[];
