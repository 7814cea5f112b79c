//! The checker our Linux test guests run (see `tests/linux-guest/README.md`).
//!
//! The binary runs inside a stock Linux guest booted from the kit's initramfs; this library is
//! what the host side shares with it, so both agree on one definition:
//! - [`cli`]: the modes and their options, parsed from argv or from `gcmatest.*` parameters of
//!   the kernel command line ([`cmdline`]), and turned back into such parameters by the host.
//! - [`report`]: the `GCMA-CHECK key=value ...` lines the checker prints on the console.
//! - [`pattern`]: the per-page pattern of the swap storm.
//! - [`procfs`]: parsers for the `/proc` and `/sys` files the checker reads.

pub mod cli;
pub mod cmdline;
pub mod pattern;
pub mod procfs;
pub mod report;
