//! virtio-gcma served by `gcma-hostd` over vhost-user: the VMM is the frontend.
//!
//! [`VhostGcma`] is a [`VirtioDevice`] on the VMM's virtio-mmio transport like the embedded
//! [`balloon::gcma::GcmaDevice`], but its request handling runs in the daemon: the transport
//! keeps the register file, the device forwards what the driver configured. The messages, their
//! order and every failure are in `balloon/PROTOCOL.md` ("vhost-user"):
//!
//! * at connection ([`VhostGcma::connect`]): `SET_OWNER`, `GET_FEATURES`,
//!   `GET_PROTOCOL_FEATURES`, `SET_PROTOCOL_FEATURES` (`CONFIG | REPLY_ACK | BACKEND_REQ |
//!   SHMEM`), `SET_BACKEND_REQ_FD`, `GET_SHMEM_CONFIG` (region 0 = the grant window's length),
//!   `GET_CONFIG`;
//! * when the driver sets `DRIVER_OK` ([`VirtioDevice::activate`]): `SET_FEATURES`,
//!   `SET_MEM_TABLE` (guest RAM's memfd), then per ready queue
//!   `SET_VRING_NUM/ADDR/BASE/CALL/KICK/ERR` and `SET_VRING_ENABLE`;
//! * on a driver reset: `GET_VRING_BASE` per started queue (the daemon then releases this guest's
//!   grants and tmem pages, as the embedded device does on reset).
//!
//! The daemon's requests (`SHMEM_MAP` / `SHMEM_UNMAP` for grants, `CONFIG_CHANGE_MSG`) arrive on
//! the backend-request socket, served by one thread per device (`vhost-gcma-<vm>`), which also
//! turns the daemon's call eventfds into the transport's used-buffer interrupt and watches the
//! main socket: when the daemon goes away the device logs one error, unmaps every grant and
//! enters `DEVICE_NEEDS_RESET` with a config-change interrupt.
//!
//! Guest notifications reach the daemon as writes on the queue's kick eventfd: straight from KVM
//! when [`VhostGcmaLink::register_ioeventfds`] made the eventfds KVM ioeventfds on the notify
//! register ([`GcmaKick::Ioeventfd`], the default), or from [`VirtioDevice::process_queue`] on
//! the MMIO exit of a `QueueNotify` write ([`GcmaKick::Exit`], `vmm run --gcma-kick exit`).
//! The daemon answers a driver that polls with `VIRTQ_AVAIL_F_NO_INTERRUPT` set (the guest
//! agent) without signalling the call eventfd, so a request costs the daemon's wake-up and, for
//! a grant, the `SHMEM_MAP` round trip; nothing wakes this process's request thread otherwise.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use balloon::error::DeviceError;
use balloon::gcma::proto::{
    CONFIG_LEN, NUM_QUEUES, PAGE_SIZE, QUEUE_MAX_SIZE, SHM_GRANT_WINDOW, VIRTIO_ID_GCMA,
};
use balloon::gcma::{HostWindow, WindowRange};
use balloon::transport::mmio::{regs, MmioTransport};
use balloon::transport::{
    Activation, Drained, InterruptHandle, QueueT, ShmRegion, VirtioDevice, VIRTIO_F_VERSION_1,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserMMap, VhostUserMMapFlags,
    VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{
    Frontend, FrontendReqHandler, HandlerResult, VhostUserFrontend, VhostUserFrontendReqHandler,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// How a guest's queue notification (a `QueueNotify` write) reaches gcma-hostd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GcmaKick {
    /// KVM signals the daemon's kick eventfd itself: no exit to the VMM, which on a nested host
    /// costs more than the rest of a small request (compare the two in
    /// `examples/daemon_bench.rs`). Falls back to `exit`, with a warning, if KVM refuses the
    /// ioeventfd.
    #[default]
    Ioeventfd,
    /// The write exits to the VMM's vCPU thread, which signals the eventfd.
    Exit,
}

/// How long the VMM waits for the daemon's answer to one message before it gives up on the
/// connection (a daemon that stopped answering must not hang the vCPU thread).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The protocol features the frontend needs from the daemon.
fn needed_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::SHMEM
}

/// Why the vhost-user gcma device could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum VhostGcmaError {
    /// The socket could not be reached.
    #[error("cannot connect to gcma-hostd at {path}")]
    Connect {
        /// The socket path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A vhost-user message failed.
    #[error("vhost-user {op} with gcma-hostd failed")]
    Protocol {
        /// The message.
        op: &'static str,
        /// Why.
        #[source]
        source: vhost::Error,
    },
    /// The daemon does not offer what the frontend needs.
    #[error("gcma-hostd does not offer {0}")]
    Missing(String),
    /// Host resources (eventfds, the request thread) could not be set up.
    #[error("{op}")]
    Io {
        /// What failed.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn proto(op: &'static str) -> impl FnOnce(vhost::Error) -> VhostGcmaError {
    move |source| VhostGcmaError::Protocol { op, source }
}

/// Counters of the frontend, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VhostGcmaStats {
    /// `SHMEM_MAP` requests mapped.
    pub maps: u64,
    /// `SHMEM_UNMAP` requests unmapped.
    pub unmaps: u64,
    /// Map or unmap requests refused (answered with a non-zero errno).
    pub refused: u64,
    /// Call eventfd wake-ups turned into used-buffer interrupts.
    pub calls: u64,
    /// Bytes mapped in the window now.
    pub mapped_bytes: u64,
    /// Whether the connection to the daemon is lost.
    pub disconnected: bool,
}

/// State shared by the device (vCPU thread) and its request thread.
struct Shared {
    name: String,
    /// Length of shared-memory region 0 as the daemon announced it (set once at connection).
    shm_len: AtomicU64,
    /// The window's host range, set when the VM is built.
    host: OnceLock<Arc<HostWindow>>,
    /// Grants mapped now: window offset → length.
    maps: Mutex<BTreeMap<u64, u64>>,
    interrupt: Mutex<Option<InterruptHandle>>,
    transport: OnceLock<Weak<Mutex<MmioTransport<VhostGcma>>>>,
    config: Mutex<[u8; CONFIG_LEN]>,
    down: AtomicBool,
    n_maps: AtomicU64,
    n_unmaps: AtomicU64,
    n_refused: AtomicU64,
    n_calls: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn errno(e: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(e)
}

impl Shared {
    /// The state of device `name` whose window (shared-memory region 0) is `shm_len` bytes (0
    /// until the daemon says), with nothing mapped and no transport yet.
    fn new(name: &str, shm_len: u64) -> Self {
        Shared {
            name: name.to_string(),
            shm_len: AtomicU64::new(shm_len),
            host: OnceLock::new(),
            maps: Mutex::new(BTreeMap::new()),
            interrupt: Mutex::new(None),
            transport: OnceLock::new(),
            config: Mutex::new([0; CONFIG_LEN]),
            down: AtomicBool::new(false),
            n_maps: AtomicU64::new(0),
            n_unmaps: AtomicU64::new(0),
            n_refused: AtomicU64::new(0),
            n_calls: AtomicU64::new(0),
        }
    }

    /// The daemon reported queue `index`'s ring broken (a malformed chain from the guest): the
    /// device needs a reset, as the embedded device does for the same ring (virtio 1.2 §2.1.2).
    fn ring_broken(&self, index: u64) {
        log::warn!(
            "virtio-gcma {}: gcma-hostd found queue {index}'s ring broken; the device needs a reset",
            self.name
        );
        if let Some(t) = self.transport.get().and_then(Weak::upgrade) {
            lock(&t).set_needs_reset(&format!("gcma-hostd: queue {index} broken"));
        }
    }

    /// Marks the connection lost. The first caller logs the one error line and unmaps every grant
    /// (the daemon is gone: nothing it mapped may stay guest-visible); with `reset_transport`
    /// (not on the vCPU thread, which holds the transport) it also puts the device into
    /// `DEVICE_NEEDS_RESET` and raises the config-change interrupt.
    fn link_down(&self, why: &str, reset_transport: bool) {
        if self.down.swap(true, Ordering::AcqRel) {
            return;
        }
        log::error!(
            "virtio-gcma {}: lost the connection to gcma-hostd ({why}); the device needs a reset",
            self.name
        );
        self.unmap_all();
        if reset_transport {
            if let Some(t) = self.transport.get().and_then(Weak::upgrade) {
                lock(&t).set_needs_reset("gcma-hostd disconnected");
            }
        }
    }

    fn unmap_all(&self) {
        let maps = std::mem::take(&mut *lock(&self.maps));
        if let Some(host) = self.host.get() {
            for (offset, len) in maps {
                if let Err(e) = host.unmap(offset, len) {
                    log::warn!("virtio-gcma {}: unmapping a grant: {e}", self.name);
                }
            }
        }
    }

    fn refuse(&self, e: i32, what: &str) -> HandlerResult<u64> {
        self.n_refused.fetch_add(1, Ordering::Relaxed);
        log::warn!("virtio-gcma {}: refused {what}", self.name);
        Err(errno(e))
    }

    /// `SHMEM_MAP`: checks the request against the window and what is mapped, then maps the fd.
    fn map(&self, req: &VhostUserMMap, fd: BorrowedFd<'_>) -> HandlerResult<u64> {
        let (shmid, fd_offset, offset, len, flags) =
            (req.shmid, req.fd_offset, req.shm_offset, req.len, req.flags);
        let what = format!("SHMEM_MAP shmid {shmid} offset {offset:#x} len {len:#x}");
        if shmid != SHM_GRANT_WINDOW {
            return self.refuse(libc::EINVAL, &format!("{what}: no such region"));
        }
        if flags & VhostUserMMapFlags::WRITABLE.bits() == 0 {
            return self.refuse(libc::EINVAL, &format!("{what}: grants are writable"));
        }
        let page = PAGE_SIZE as u64;
        let end = offset.checked_add(len);
        if len == 0
            || !offset.is_multiple_of(page)
            || !len.is_multiple_of(page)
            || !fd_offset.is_multiple_of(page)
            || end.is_none_or(|e| e > self.shm_len.load(Ordering::Acquire))
        {
            return self.refuse(libc::EINVAL, &format!("{what}: outside the window"));
        }
        let end = end.unwrap_or(u64::MAX);
        // SAFETY: a zeroed stat is a valid out-buffer; `fd` is a descriptor we were sent.
        let size = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
                return self.refuse(libc::EBADF, &format!("{what}: fstat failed"));
            }
            st.st_size as u64
        };
        if fd_offset.checked_add(len).is_none_or(|e| e > size) {
            return self.refuse(
                libc::EINVAL,
                &format!("{what}: fd of {size} bytes too short"),
            );
        }
        let Some(host) = self.host.get() else {
            return self.refuse(libc::ENXIO, &format!("{what}: no window yet"));
        };
        let mut maps = lock(&self.maps);
        let overlaps = maps
            .range(..end)
            .next_back()
            .is_some_and(|(&o, &l)| o + l > offset);
        if overlaps {
            drop(maps);
            return self.refuse(libc::EEXIST, &format!("{what}: overlaps a mapping"));
        }
        if let Err(e) = host.map_fd(offset, fd, fd_offset, len) {
            drop(maps);
            let code = e.raw_os_error().unwrap_or(libc::EIO);
            return self.refuse(code, &format!("{what}: {e}"));
        }
        maps.insert(offset, len);
        self.n_maps.fetch_add(1, Ordering::Relaxed);
        Ok(0)
    }

    /// `SHMEM_UNMAP`: exactly one earlier mapping.
    fn unmap(&self, req: &VhostUserMMap) -> HandlerResult<u64> {
        let (shmid, offset, len) = (req.shmid, req.shm_offset, req.len);
        let what = format!("SHMEM_UNMAP shmid {shmid} offset {offset:#x} len {len:#x}");
        if shmid != SHM_GRANT_WINDOW {
            return self.refuse(libc::EINVAL, &format!("{what}: no such region"));
        }
        let mut maps = lock(&self.maps);
        if maps.get(&offset) != Some(&len) {
            drop(maps);
            return self.refuse(libc::ENOENT, &format!("{what}: not a mapping"));
        }
        let Some(host) = self.host.get() else {
            return self.refuse(libc::ENXIO, &format!("{what}: no window"));
        };
        if let Err(e) = host.unmap(offset, len) {
            drop(maps);
            let code = e.raw_os_error().unwrap_or(libc::EIO);
            return self.refuse(code, &format!("{what}: {e}"));
        }
        maps.remove(&offset);
        self.n_unmaps.fetch_add(1, Ordering::Relaxed);
        Ok(0)
    }
}

/// What serves the daemon's backend requests.
struct ReqHandler {
    shared: Arc<Shared>,
    frontend: Frontend,
}

impl VhostUserFrontendReqHandler for ReqHandler {
    fn handle_config_change(&self) -> HandlerResult<u64> {
        let mut f = self.frontend.clone();
        let (_, buf) = f
            .get_config(
                0,
                CONFIG_LEN as u32,
                VhostUserConfigFlags::empty(),
                &[0; CONFIG_LEN],
            )
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if let Ok(b) = <[u8; CONFIG_LEN]>::try_from(buf.as_slice()) {
            *lock(&self.shared.config) = b;
        }
        if let Some(irq) = lock(&self.shared.interrupt).as_ref() {
            irq.signal_config_change()?;
        }
        Ok(0)
    }

    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> HandlerResult<u64> {
        // SAFETY: `fd` is the descriptor that came with the message and outlives this call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) };
        self.shared.map(req, fd)
    }

    fn shmem_unmap(&self, req: &VhostUserMMap) -> HandlerResult<u64> {
        self.shared.unmap(req)
    }
}

/// The virtio-gcma device of a VM whose pool is `gcma-hostd`'s (see the module docs).
pub struct VhostGcma {
    frontend: Frontend,
    shared: Arc<Shared>,
    /// The daemon's virtio features.
    backend_features: u64,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    /// Written by the daemon when it finds a queue's ring broken.
    errs: Vec<EventFd>,
    window_gpa: u64,
    /// Queues handed to the daemon by the last activation.
    started: Vec<usize>,
    thread: Option<JoinHandle<()>>,
    stop: EventFd,
}

impl std::fmt::Debug for VhostGcma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostGcma")
            .field("name", &self.shared.name)
            .field("backend_features", &self.backend_features)
            .field("shm_len", &self.shared.shm_len)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

/// A handle on a [`VhostGcma`] that stays usable after the device moved into its transport.
#[derive(Clone)]
pub struct VhostGcmaLink {
    shared: Arc<Shared>,
    kicks: Arc<Vec<EventFd>>,
}

impl std::fmt::Debug for VhostGcmaLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostGcmaLink")
            .field("name", &self.shared.name)
            .field("stats", &self.stats())
            .finish()
    }
}

impl VhostGcmaLink {
    /// Length of the daemon's grant window (shared-memory region 0) in bytes.
    pub fn shm_len(&self) -> u64 {
        self.shared.shm_len.load(Ordering::Acquire)
    }

    /// Gives the request thread the device's transport, so that a lost daemon puts it into
    /// `DEVICE_NEEDS_RESET`.
    pub fn set_transport(&self, transport: &Arc<Mutex<MmioTransport<VhostGcma>>>) {
        let _ = self.shared.transport.set(Arc::downgrade(transport));
    }

    /// Makes the kick eventfds KVM ioeventfds on the `QueueNotify` register of the device at
    /// `base` (matched on the queue index): a guest notification then reaches the daemon without
    /// an exit to the VMM.
    pub fn register_ioeventfds(&self, vm: &VmFd, base: u64) -> crate::Result<()> {
        for (i, evt) in self.kicks.iter().enumerate() {
            vm.register_ioevent(
                evt,
                &IoEventAddress::Mmio(base + regs::QUEUE_NOTIFY),
                i as u32,
            )
            .map_err(crate::Error::kvm("KVM_IOEVENTFD (vhost-user gcma kick)"))?;
        }
        Ok(())
    }

    /// The frontend's counters now.
    pub fn stats(&self) -> VhostGcmaStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VhostGcmaStats {
            maps: g(&self.shared.n_maps),
            unmaps: g(&self.shared.n_unmaps),
            refused: g(&self.shared.n_refused),
            calls: g(&self.shared.n_calls),
            mapped_bytes: lock(&self.shared.maps).values().sum(),
            disconnected: self.shared.down.load(Ordering::Acquire),
        }
    }
}

fn eventfd(op: &'static str) -> Result<EventFd, VhostGcmaError> {
    EventFd::new(EFD_NONBLOCK).map_err(|source| VhostGcmaError::Io { op, source })
}

impl VhostGcma {
    /// Connects to `gcma-hostd`'s socket at `path` for the VM `name` and runs the start-up
    /// exchange (see the module docs); starts the request thread.
    pub fn connect(path: &Path, name: &str) -> Result<(Self, VhostGcmaLink), VhostGcmaError> {
        let sock = UnixStream::connect(path).map_err(|source| VhostGcmaError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        let io = |op| move |source| VhostGcmaError::Io { op, source };
        sock.set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(io("setting the socket's timeout"))?;
        let watch = sock
            .try_clone()
            .map_err(io("duplicating the vhost-user socket"))?;
        let mut frontend = Frontend::from_stream(sock, NUM_QUEUES as u64);
        frontend.set_owner().map_err(proto("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(proto("GET_FEATURES"))?;
        if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Err(VhostGcmaError::Missing(
                "VHOST_USER_F_PROTOCOL_FEATURES".into(),
            ));
        }
        let offered = frontend
            .get_protocol_features()
            .map_err(proto("GET_PROTOCOL_FEATURES"))?;
        let needed = needed_protocol_features();
        if !offered.contains(needed) {
            return Err(VhostGcmaError::Missing(format!(
                "the protocol features {:?}",
                needed - offered
            )));
        }
        frontend
            .set_protocol_features(needed)
            .map_err(proto("SET_PROTOCOL_FEATURES"))?;
        // Every message without a reply of its own is acknowledged (REPLY_ACK), so a failure in
        // the daemon is seen here rather than as a silent device.
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);

        let shared = Arc::new(Shared::new(name, 0));
        let mut req = FrontendReqHandler::new(Arc::new(ReqHandler {
            shared: shared.clone(),
            frontend: frontend.clone(),
        }))
        .map_err(|e| VhostGcmaError::Protocol {
            op: "creating the backend-request channel",
            source: vhost::Error::VhostUserProtocol(e),
        })?;
        req.set_reply_ack_flag(true);
        frontend
            .set_backend_request_fd(&req.get_tx_raw_fd())
            .map_err(proto("SET_BACKEND_REQ_FD"))?;
        let shm = frontend
            .get_shmem_config()
            .map_err(proto("GET_SHMEM_CONFIG"))?;
        let shm_len = if shm.nregions >= 1 {
            shm.memory_sizes[usize::from(SHM_GRANT_WINDOW)]
        } else {
            0
        };
        if shm_len == 0 || !shm_len.is_multiple_of(PAGE_SIZE as u64) {
            return Err(VhostGcmaError::Missing(format!(
                "a grant window (shared-memory region 0 is {shm_len} bytes)"
            )));
        }
        shared.shm_len.store(shm_len, Ordering::Release);
        let (_, cfg) = frontend
            .get_config(
                0,
                CONFIG_LEN as u32,
                VhostUserConfigFlags::empty(),
                &[0; CONFIG_LEN],
            )
            .map_err(proto("GET_CONFIG"))?;
        *lock(&shared.config) = <[u8; CONFIG_LEN]>::try_from(cfg.as_slice())
            .map_err(|_| VhostGcmaError::Missing("a config space of the right size".into()))?;

        let mut kicks = Vec::with_capacity(NUM_QUEUES);
        let mut calls = Vec::with_capacity(NUM_QUEUES);
        let mut errs = Vec::with_capacity(NUM_QUEUES);
        for _ in 0..NUM_QUEUES {
            kicks.push(eventfd("creating a kick eventfd")?);
            calls.push(eventfd("creating a call eventfd")?);
            errs.push(eventfd("creating an err eventfd")?);
        }
        let clones = |fds: &[EventFd]| {
            fds.iter()
                .map(EventFd::try_clone)
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(io("duplicating the call and err eventfds"))
        };
        let (thread_calls, thread_errs) = (clones(&calls)?, clones(&errs)?);
        let stop = eventfd("creating the stop eventfd")?;
        let thread_stop = stop.try_clone().map_err(io("duplicating an eventfd"))?;
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vhost-gcma-{name}"))
            .spawn(move || {
                gcma_seccomp::enter_or_exit(gcma_seccomp::ThreadKind::VhostFrontend);
                serve(
                    req,
                    thread_shared,
                    Rings {
                        calls: thread_calls,
                        errs: thread_errs,
                    },
                    watch,
                    thread_stop,
                )
            })
            .map_err(io("starting the vhost-user request thread"))?;
        let link = VhostGcmaLink {
            shared: shared.clone(),
            kicks: Arc::new(
                kicks
                    .iter()
                    .map(EventFd::try_clone)
                    .collect::<std::io::Result<Vec<_>>>()
                    .map_err(io("duplicating the kick eventfds"))?,
            ),
        };
        Ok((
            VhostGcma {
                frontend,
                shared,
                backend_features,
                kicks,
                calls,
                errs,
                window_gpa: 0,
                started: Vec::new(),
                thread: Some(thread),
                stop,
            },
            link,
        ))
    }

    /// Places the grant window: shared-memory region 0 at guest-physical `range.gpa`, backed by
    /// `host` (the VM's [`crate::grant::KvmWindow`]), where `SHMEM_MAP` requests are mapped.
    pub fn set_window(&mut self, range: WindowRange, host: Arc<HostWindow>) {
        self.window_gpa = range.gpa;
        let _ = self.shared.host.set(host);
    }

    fn down(&self) -> bool {
        self.shared.down.load(Ordering::Acquire)
    }

    /// A message on the main socket failed: unless it was refused by a live daemon, the link is
    /// down. Returns the device error the transport turns into `DEVICE_NEEDS_RESET`.
    fn failed(&self, op: &'static str, e: vhost::Error) -> DeviceError {
        let why = format!("{op}: {e}");
        if !matches!(
            e,
            vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::BackendInternalError)
        ) {
            self.shared.link_down(&why, false);
        }
        DeviceError::Backend(format!("vhost-user {why}"))
    }

    fn start(&mut self, a: &Activation) -> Result<(), DeviceError> {
        let features = a.features | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        self.frontend
            .set_features(features)
            .map_err(|e| self.failed("SET_FEATURES", e))?;
        let regions = a
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DeviceError::Backend(format!("guest RAM is not file-backed: {e}")))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(|e| self.failed("SET_MEM_TABLE", e))?;
        for (i, q) in a.queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            let host = |gpa: u64, what: &str| {
                a.mem
                    .get_host_address(GuestAddress(gpa))
                    .map(|p| p as u64)
                    .map_err(|_| {
                        DeviceError::Backend(format!("queue {i}: {what} outside guest RAM"))
                    })
            };
            let ring = VringConfigData {
                queue_max_size: QUEUE_MAX_SIZE,
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(q.desc_table(), "descriptor table")?,
                used_ring_addr: host(q.used_ring(), "used ring")?,
                avail_ring_addr: host(q.avail_ring(), "available ring")?,
                log_addr: None,
            };
            let f = &mut self.frontend;
            let r = f
                .set_vring_num(i, q.size())
                .map_err(|e| ("SET_VRING_NUM", e))
                .and_then(|()| {
                    f.set_vring_addr(i, &ring)
                        .map_err(|e| ("SET_VRING_ADDR", e))
                })
                .and_then(|()| {
                    f.set_vring_base(i, q.next_avail())
                        .map_err(|e| ("SET_VRING_BASE", e))
                })
                .and_then(|()| {
                    f.set_vring_call(i, &self.calls[i])
                        .map_err(|e| ("SET_VRING_CALL", e))
                })
                .and_then(|()| {
                    f.set_vring_kick(i, &self.kicks[i])
                        .map_err(|e| ("SET_VRING_KICK", e))
                })
                .and_then(|()| {
                    f.set_vring_err(i, &self.errs[i])
                        .map_err(|e| ("SET_VRING_ERR", e))
                })
                .and_then(|()| {
                    f.set_vring_enable(i, true)
                        .map_err(|e| ("SET_VRING_ENABLE", e))
                });
            if let Err((op, e)) = r {
                return Err(self.failed(op, e));
            }
            self.started.push(i);
        }
        Ok(())
    }
}

impl Drop for VhostGcma {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            // The request thread may hold the last reference to the transport (and so drop this
            // device) itself: never join from there.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
        self.shared.unmap_all();
    }
}

impl VirtioDevice for VhostGcma {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_GCMA
    }

    fn device_features(&self) -> u64 {
        self.backend_features
            & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            & !VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self, _features: u64) -> Vec<u16> {
        vec![QUEUE_MAX_SIZE; NUM_QUEUES]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = lock(&self.shared.config);
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| cfg.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, activation: Activation) -> Result<(), DeviceError> {
        if self.down() {
            return Err(DeviceError::Backend("gcma-hostd is gone".into()));
        }
        *lock(&self.shared.interrupt) = Some(activation.interrupt.clone());
        self.started.clear();
        self.start(&activation)
    }

    fn process_queue(&mut self, index: u16, _budget: u32) -> Result<Drained, DeviceError> {
        if self.down() {
            return Err(DeviceError::Backend("gcma-hostd is gone".into()));
        }
        let kick = self
            .kicks
            .get(usize::from(index))
            .ok_or(DeviceError::NoSuchQueue(index))?;
        // The daemon serves the queue; the kick only wakes it (a full counter means it is awake).
        match kick.write(1) {
            Ok(()) => Ok(Drained::default()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Drained::default()),
            Err(e) => Err(DeviceError::Backend(format!("kicking queue {index}: {e}"))),
        }
    }

    fn reset(&mut self) {
        *lock(&self.shared.interrupt) = None;
        if self.down() {
            self.started.clear();
            return;
        }
        for i in std::mem::take(&mut self.started) {
            if let Err(e) = self.frontend.get_vring_base(i) {
                self.shared
                    .link_down(&format!("GET_VRING_BASE: {e}"), false);
                return;
            }
        }
    }

    fn shm_regions(&self) -> Vec<ShmRegion> {
        vec![ShmRegion {
            id: SHM_GRANT_WINDOW,
            gpa: self.window_gpa,
            len: self.shared.shm_len.load(Ordering::Acquire),
        }]
    }
}

const TOKEN_REQUESTS: u64 = 0;
const TOKEN_MAIN: u64 = 1;
const TOKEN_STOP: u64 = 2;
const TOKEN_CALL0: u64 = 16;
const TOKEN_ERR0: u64 = 32;

/// The request thread's ends of the queues' call and err eventfds.
struct Rings {
    calls: Vec<EventFd>,
    errs: Vec<EventFd>,
}

/// The request thread: serves the daemon's backend requests, forwards call eventfds to the
/// guest's interrupt, turns an err eventfd (the daemon found a queue's ring broken) into
/// `DEVICE_NEEDS_RESET`, and watches the main socket for the daemon going away.
fn serve(
    mut req: FrontendReqHandler<ReqHandler>,
    shared: Arc<Shared>,
    rings: Rings,
    main: UnixStream,
    stop: EventFd,
) {
    let Rings { calls, errs } = rings;
    let setup = || -> std::io::Result<Epoll> {
        let ep = Epoll::new()?;
        let add = |fd: RawFd, ev: EventSet, token: u64| {
            ep.ctl(ControlOperation::Add, fd, EpollEvent::new(ev, token))
        };
        add(req.as_raw_fd(), EventSet::IN, TOKEN_REQUESTS)?;
        add(main.as_fd().as_raw_fd(), EventSet::READ_HANG_UP, TOKEN_MAIN)?;
        add(stop.as_raw_fd(), EventSet::IN, TOKEN_STOP)?;
        for (i, c) in calls.iter().enumerate() {
            add(c.as_raw_fd(), EventSet::IN, TOKEN_CALL0 + i as u64)?;
        }
        for (i, e) in errs.iter().enumerate() {
            add(e.as_raw_fd(), EventSet::IN, TOKEN_ERR0 + i as u64)?;
        }
        Ok(ep)
    };
    let ep = match setup() {
        Ok(ep) => ep,
        Err(e) => {
            shared.link_down(&format!("setting up the request thread: {e}"), true);
            return;
        }
    };
    let mut events = vec![EpollEvent::default(); 8];
    loop {
        let n = match ep.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                shared.link_down(&format!("epoll: {e}"), true);
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_STOP => return,
                TOKEN_MAIN => {
                    shared.link_down("the daemon closed the socket", true);
                    return;
                }
                TOKEN_REQUESTS => {
                    use vhost::vhost_user::Error as E;
                    match req.handle_request() {
                        // A refused request was answered with its errno; the link is fine.
                        Ok(_) | Err(E::ReqHandlerError(_)) => {}
                        Err(e) => {
                            shared.link_down(&format!("backend request channel: {e}"), true);
                            return;
                        }
                    }
                }
                t if t >= TOKEN_ERR0 => {
                    let i = t - TOKEN_ERR0;
                    if errs.get(i as usize).is_some_and(|e| e.read().is_ok()) {
                        shared.ring_broken(i);
                    }
                }
                t => {
                    let Some(c) = usize::try_from(t - TOKEN_CALL0)
                        .ok()
                        .and_then(|i| calls.get(i))
                    else {
                        continue;
                    };
                    if c.read().is_ok() {
                        shared.n_calls.fetch_add(1, Ordering::Relaxed);
                        if let Some(irq) = lock(&shared.interrupt).as_ref() {
                            if let Err(e) = irq.signal_used() {
                                log::debug!("virtio-gcma {}: interrupt: {e}", shared.name);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    const PAGE: u64 = PAGE_SIZE as u64;

    fn shared(window_pages: u64) -> Arc<Shared> {
        let s = Arc::new(Shared::new("t", window_pages * PAGE));
        let host = HostWindow::reserve(window_pages * PAGE).unwrap();
        let _ = s.host.set(Arc::new(host));
        s
    }

    fn pool(pages: u64) -> std::fs::File {
        use std::os::fd::FromRawFd;
        // SAFETY: a valid NUL-terminated name; the new descriptor is owned by the File.
        let f = unsafe {
            let fd = libc::memfd_create(c"test-pool".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0);
            std::fs::File::from_raw_fd(fd)
        };
        f.set_len(pages * PAGE).unwrap();
        f
    }

    fn req(shmid: u8, offset: u64, fd_offset: u64, len: u64, writable: bool) -> VhostUserMMap {
        VhostUserMMap {
            shmid,
            fd_offset,
            shm_offset: offset,
            len,
            flags: if writable {
                VhostUserMMapFlags::WRITABLE.bits()
            } else {
                0
            },
            ..VhostUserMMap::default()
        }
    }

    fn code(r: HandlerResult<u64>) -> i32 {
        r.map_or_else(|e| e.raw_os_error().unwrap_or(-1), |_| 0)
    }

    #[test]
    fn a_map_shows_the_fd_in_the_window_and_an_unmap_takes_it_away() {
        let s = shared(16);
        let f = pool(8);
        std::os::unix::fs::FileExt::write_all_at(&f, &[0xab; 8], 3 * PAGE).unwrap();
        assert_eq!(
            code(s.map(&req(0, 4 * PAGE, 3 * PAGE, 2 * PAGE, true), f.as_fd())),
            0
        );
        let host = s.host.get().unwrap().host_addr() + 4 * PAGE as usize;
        // SAFETY: just mapped, readable.
        let b = unsafe { std::ptr::read_volatile(host as *const u8) };
        assert_eq!(b, 0xab);
        assert_eq!(lock(&s.maps).get(&(4 * PAGE)), Some(&(2 * PAGE)));
        assert_eq!(code(s.unmap(&req(0, 4 * PAGE, 0, 2 * PAGE, true))), 0);
        assert!(lock(&s.maps).is_empty());
        assert_eq!(s.n_maps.load(Ordering::Relaxed), 1);
        assert_eq!(s.n_unmaps.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn bad_maps_are_refused_with_an_errno_and_change_nothing() {
        let s = shared(16);
        let f = pool(8);
        assert_eq!(code(s.map(&req(0, 0, 0, 2 * PAGE, true), f.as_fd())), 0);
        let cases = [
            (
                req(1, 4 * PAGE, 0, PAGE, true),
                libc::EINVAL,
                "another region",
            ),
            (req(0, 4 * PAGE, 0, PAGE, false), libc::EINVAL, "read-only"),
            (
                req(0, 15 * PAGE, 0, 2 * PAGE, true),
                libc::EINVAL,
                "past the window",
            ),
            (
                req(0, u64::MAX - PAGE + 1, 0, PAGE, true),
                libc::EINVAL,
                "overflow",
            ),
            (
                req(0, 4 * PAGE + 1, 0, PAGE, true),
                libc::EINVAL,
                "unaligned",
            ),
            (
                req(0, 4 * PAGE, 7 * PAGE, 2 * PAGE, true),
                libc::EINVAL,
                "fd too short",
            ),
            (req(0, PAGE, 0, PAGE, true), libc::EEXIST, "overlap inside"),
        ];
        for (r, want, what) in cases {
            assert_eq!(code(s.map(&r, f.as_fd())), want, "{what}");
        }
        assert_eq!(s.n_refused.load(Ordering::Relaxed), cases.len() as u64);
        assert_eq!(lock(&s.maps).len(), 1);
        // Unmaps must name exactly one mapping.
        assert_eq!(code(s.unmap(&req(0, 0, 0, PAGE, true))), libc::ENOENT);
        assert_eq!(
            code(s.unmap(&req(0, 8 * PAGE, 0, PAGE, true))),
            libc::ENOENT
        );
        assert_eq!(code(s.unmap(&req(2, 0, 0, 2 * PAGE, true))), libc::EINVAL);
        assert_eq!(code(s.unmap(&req(0, 0, 0, 2 * PAGE, true))), 0);
    }

    #[test]
    fn a_lost_link_unmaps_every_grant_once() {
        let s = shared(16);
        let f = pool(8);
        assert_eq!(code(s.map(&req(0, 0, 0, PAGE, true), f.as_fd())), 0);
        assert_eq!(
            code(s.map(&req(0, 8 * PAGE, PAGE, PAGE, true), f.as_fd())),
            0
        );
        s.link_down("test", true);
        assert!(s.down.load(Ordering::Acquire));
        assert!(lock(&s.maps).is_empty());
        // The window is inaccessible again there: mapping anew works (nothing overlaps).
        assert_eq!(code(s.map(&req(0, 0, 0, PAGE, true), f.as_fd())), 0);
    }
}
