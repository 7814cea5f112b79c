//! `gcma-hostd`: the host daemon that owns one GCMA pool and serves it over vhost-user to the
//! VMs of a host, as swap and cache disks that unmodified Linux guests use.
//!
//! * [`cli`]: the command line.
//! * [`daemon`]: building the pool and the disks, serving them, the orderly shutdown.
//! * [`disk`]: what the daemon keeps per disk.
//! * [`swap_disk`], [`cache_disk`]: the pool-backed storage behind the disks
//!   ([`balloon::blk::BlkBackend`]s; the request handling itself is `balloon::blk`).
//! * [`vhost_blk`]: a disk as a `vhost-user-backend` device.
//! * [`gcma_dev`]: virtio-gcma for `vmm` processes over vhost-user, one connection per VMM;
//!   [`shmem_mapper`] maps its grants through the VMM (`SHMEM_MAP`); [`peer`] tells when a VMM
//!   process is gone.
//! * [`serve`]: sockets and the accept loop, generic over the device type.
//! * [`control`]: the control endpoint (grants, `/metrics`) as request → reply functions;
//!   [`http`] carries them.
//! * [`metrics`]: per-disk and per-guest metric families.

#![deny(missing_docs)]

pub mod cache_disk;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod disk;
pub mod gcma_dev;
pub mod http;
pub mod metrics;
pub mod peer;
pub mod serve;
pub mod shmem_mapper;
pub mod swap_disk;
pub mod vhost_blk;
