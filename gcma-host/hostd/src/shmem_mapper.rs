//! The grant window of a guest whose VMM is another process: a [`WindowMapper`] that asks the
//! VMM, over the vhost-user backend request channel, to map pool memory into shared-memory
//! region 0 (`SHMEM_MAP`) and to take it away again (`SHMEM_UNMAP`), and counts a request done
//! only once the VMM acknowledged it (`REPLY_ACK`, reply 0). `balloon/PROTOCOL.md` ("virtio-gcma
//! over vhost-user") lists the messages and what each failure means.
//!
//! A grant's pages go back to the pool only after the VMM acknowledged the unmap, or after its
//! process is gone ([`ShmemMapper::peer_gone`], decided from a pidfd, never from a closed socket
//! alone: a VMM that closed its sockets may still have the pool mapped). Until then a failed
//! unmap leaves the grant *stuck* in its [`balloon::gcma::GrantWindow`], granted to nobody else.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use balloon::gcma::proto::SHM_GRANT_WINDOW;
use balloon::gcma::WindowMapper;
use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};

/// Counters of one mapper (one connection).
#[derive(Debug, Default)]
pub struct ShmemCounters {
    /// `SHMEM_MAP`s acknowledged.
    pub maps: AtomicU64,
    /// `SHMEM_UNMAP`s acknowledged (or made moot by the VMM's exit).
    pub unmaps: AtomicU64,
    /// Requests that failed: no channel, not negotiated, a non-zero reply, a broken channel.
    pub failures: AtomicU64,
}

/// Sends grant mappings to one VMM. See the [module documentation](self).
pub struct ShmemMapper {
    pool_fd: OwnedFd,
    channel: Mutex<Option<Backend>>,
    /// The frontend acknowledged `REPLY_ACK` and `SHMEM`: without both a map could not be known
    /// to have happened, so none is sent.
    negotiated: AtomicBool,
    /// The VMM process has exited: nothing of it maps the pool any more.
    gone: AtomicBool,
    counters: ShmemCounters,
    /// The service-wide failure count, bumped with ours.
    service_failures: Arc<AtomicU64>,
}

impl std::fmt::Debug for ShmemMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmemMapper")
            .field("pool_fd", &self.pool_fd.as_raw_fd())
            .field("negotiated", &self.negotiated.load(Ordering::Relaxed))
            .field("gone", &self.gone.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn refused(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, what.to_string())
}

impl ShmemMapper {
    /// A mapper that attaches `pool_fd` (the pool's memfd, which the VMM maps) to every map.
    /// Failures are also counted in `service_failures`.
    pub fn new(pool_fd: OwnedFd, service_failures: Arc<AtomicU64>) -> Self {
        ShmemMapper {
            pool_fd,
            channel: Mutex::new(None),
            negotiated: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            counters: ShmemCounters::default(),
            service_failures,
        }
    }

    /// The backend request channel the frontend sent (`SET_BACKEND_REQ_FD`), and whether it
    /// acknowledged both `REPLY_ACK` and `SHMEM`. A new channel replaces the old one.
    pub fn set_channel(&self, channel: Backend, negotiated: bool) {
        if negotiated {
            channel.set_reply_ack_flag(true);
            channel.set_shmem_flag(true);
        }
        self.negotiated.store(negotiated, Ordering::Release);
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = Some(channel);
    }

    /// The VMM process has exited (its pidfd said so): its mappings are gone with it, so unmaps
    /// succeed without a message and maps fail.
    pub fn peer_gone(&self) {
        self.gone.store(true, Ordering::Release);
        // Dropping the channel closes our end of it.
        self.channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Whether [`Self::peer_gone`] was called.
    pub fn is_peer_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// The counters.
    pub fn counters(&self) -> &ShmemCounters {
        &self.counters
    }

    fn send(&self, f: impl FnOnce(&Backend) -> io::Result<u64>) -> io::Result<()> {
        let r = if !self.negotiated.load(Ordering::Acquire) {
            Err(refused(
                "the frontend did not negotiate REPLY_ACK and SHMEM (or sent no backend channel)",
            ))
        } else {
            // The channel is cloned out of the lock: a VMM slow to answer holds up only the
            // thread waiting for its answer, never `peer_gone`.
            let ch = self
                .channel
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            match ch {
                None => Err(refused("no backend request channel")),
                Some(ch) => f(&ch).map(|_| ()),
            }
        };
        if r.is_err() {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            self.service_failures.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

/// `VhostUserMMap` with the fields in the order the message lays them out.
fn mmap_msg(shm_offset: u64, fd_offset: u64, len: u64, flags: VhostUserMMapFlags) -> VhostUserMMap {
    VhostUserMMap {
        shmid: SHM_GRANT_WINDOW,
        padding: [0; 7],
        fd_offset,
        shm_offset,
        len,
        flags: flags.bits(),
    }
}

struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl WindowMapper for ShmemMapper {
    fn map(&self, offset: u64, pool_offset: u64, len: u64) -> io::Result<()> {
        if self.is_peer_gone() {
            return Err(refused("the VMM has exited"));
        }
        let msg = mmap_msg(offset, pool_offset, len, VhostUserMMapFlags::WRITABLE);
        let fd = Fd(self.pool_fd.as_raw_fd());
        // `Backend::shmem_map` sets NEED_REPLY (REPLY_ACK negotiated) and waits for the reply;
        // a non-zero reply is `FrontendInternalError`.
        self.send(|ch| ch.shmem_map(&msg, &fd))?;
        self.counters.maps.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.is_peer_gone() {
            let msg = mmap_msg(offset, 0, len, VhostUserMMapFlags::empty());
            self.send(|ch| ch.shmem_unmap(&msg))?;
        }
        self.counters.unmaps.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
