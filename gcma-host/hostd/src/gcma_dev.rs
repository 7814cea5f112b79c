//! virtio-gcma as a vhost-user device: one [`GcmaConnection`] per VMM that connects to the
//! `--gcma-socket`, each with its own pool client, [`GcmaDevice`] and [`GrantWindow`] whose
//! grants the VMM maps ([`ShmemMapper`]). The request handling is `balloon::gcma`'s, the same
//! code the embedded device runs: this module only carries the vhost-user messages to it (the
//! way [`crate::vhost_blk`] carries them to `balloon::blk`). `balloon/PROTOCOL.md` ("virtio-gcma
//! over vhost-user") gives the message sequence and every failure.
//!
//! Why not `vhost-user-backend`'s `VhostUserDaemon`, as the disks use: it accepts its connection
//! itself, so the daemon could not learn which process connected, and its vring threads call the
//! device only through `VhostUserBackend`, so a guest reset (the rings stopped by
//! `GET_VRING_BASE`) could not release the guest's grants before the next guest starts. The
//! handler below is the `vhost` crate's `BackendReqHandler` over a stream this module accepted,
//! with one worker thread per connection that serves the three queues.
//!
//! A connection's end is not its VMM's end: the grants it holds are released (and its tmem
//! pages dropped) once the VMM acknowledged their unmaps or its process exited, known from a
//! pidfd ([`Peer`]). Connections that end with grants still mapped in a live process are retired
//! and handed to the [`Reaper`], which releases them when the process exits.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use balloon::gcma::proto::{NUM_QUEUES, QUEUE_MAX_SIZE};
use balloon::gcma::{GcmaDevice, GrantWindow, WindowRange, GCMA_DEVICE_FEATURES};
use balloon::transport::{InterruptHandle, IrqLine, Queue, QueueT, VirtioDevice};
use gcma_host::api::{GcmaBackend, PAGE_SIZE};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Backend, BackendReqHandler, Error as VuError, GpuBackend, Result as VuResult,
    VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::peer::Peer;
use crate::shmem_mapper::ShmemMapper;

/// The virtio feature bits the gcma device offers over vhost-user.
pub const VHOST_GCMA_FEATURES: u64 = GCMA_DEVICE_FEATURES
    | 1 << VIRTIO_F_VERSION_1
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// The protocol features offered; the frontend must acknowledge all of them (see
/// `balloon/PROTOCOL.md`): without `REPLY_ACK` and `SHMEM` no grant can be mapped.
pub fn vhost_gcma_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::SHMEM
}

/// Chains served per queue before the worker looks at the other queues and its exit event.
const BUDGET: u32 = QUEUE_MAX_SIZE as u32;

/// Counters of the gcma service (all connections), read by the metrics collector.
#[derive(Debug, Default)]
pub struct VmmCounters {
    /// VMMs connected now.
    pub connected: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections refused before serving (no peer identity).
    pub refused: AtomicU64,
    /// Pool clients released (everything they held returned to the pool).
    pub released_clients: AtomicU64,
    /// Connections that ended with grants still mapped in a live VMM, waiting for it to exit.
    pub retired_clients: AtomicU64,
    /// Guest resets (rings stopped) that released what the guest held.
    pub resets: AtomicU64,
    /// SHMEM_MAP/SHMEM_UNMAP requests that failed (no channel, a non-zero reply, a broken
    /// channel), over all connections.
    pub shmem_failures: Arc<AtomicU64>,
}

/// What the gcma service holds now, over every connection and every retired client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmmGrants {
    /// Grants mapped in some VMM's window.
    pub grants: u64,
    /// Their pages.
    pub granted_pages: u64,
    /// Grants whose unmap was not acknowledged (kept until it is or the VMM exits).
    pub stuck_grants: u64,
}

/// The gcma device service: what all its connections share.
pub struct GcmaService {
    pool: Arc<dyn GcmaBackend>,
    window_bytes: u64,
    counters: Arc<VmmCounters>,
    windows: Mutex<Vec<Weak<GrantWindow>>>,
    reaper: Reaper,
    next_id: AtomicU64,
    /// How long a connection's worker keeps polling its rings after serving them (ns).
    poll_ns: AtomicU64,
}

/// How long a connection's worker polls its rings for more work after serving them, before it
/// sleeps on the kick eventfds again (`gcma-hostd --gcma-poll-us`; twice QEMU's `poll-max-ns`
/// for its I/O threads, because a guest's exits between requests cost more on nested hosts).
pub const DEFAULT_POLL: Duration = Duration::from_micros(64);

impl std::fmt::Debug for GcmaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcmaService")
            .field("window_bytes", &self.window_bytes)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl GcmaService {
    /// A service granting from `pool` through windows of `window_bytes` (a non-zero multiple of
    /// the page size).
    pub fn new(pool: Arc<dyn GcmaBackend>, window_bytes: u64) -> io::Result<Arc<Self>> {
        if window_bytes == 0 || !window_bytes.is_multiple_of(PAGE_SIZE as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "grant window is not a non-zero multiple of the page size",
            ));
        }
        let counters = Arc::new(VmmCounters::default());
        Ok(Arc::new(GcmaService {
            pool,
            window_bytes,
            reaper: Reaper::start(Arc::clone(&counters))?,
            counters,
            windows: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            poll_ns: AtomicU64::new(DEFAULT_POLL.as_nanos() as u64),
        }))
    }

    /// Sets how long each connection's worker keeps polling its rings after it served them
    /// (zero: never; it then sleeps until the next kick at once). A guest that posts its next
    /// batch within that time is served without a wake-up of the worker, at the price of that
    /// much CPU after each burst. Applies to connections made afterwards.
    pub fn set_busy_poll(&self, d: Duration) {
        self.poll_ns.store(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// The counters.
    pub fn counters(&self) -> &Arc<VmmCounters> {
        &self.counters
    }

    /// Grants held now over all connections (live and retired).
    pub fn grants(&self) -> VmmGrants {
        let mut g = VmmGrants::default();
        let mut ws = lock(&self.windows);
        ws.retain(|w| w.strong_count() > 0);
        for w in ws.iter().filter_map(Weak::upgrade) {
            let u = w.usage();
            g.grants += u.grants;
            g.granted_pages += u.granted_pages;
            g.stuck_grants += u.stuck_grants;
        }
        g
    }

    /// Serves one accepted connection until it ends, on the calling thread; then releases or
    /// retires what it held. Never panics on what the frontend sends.
    pub fn serve(self: &Arc<Self>, stream: UnixStream) {
        let peer = match Peer::of(&stream) {
            Ok(p) => p,
            Err(e) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                log::warn!("virtio-gcma: refusing a connection whose peer is unknown: {e}");
                return;
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let name = format!("vmm{id}-pid{}", peer.pid);
        let conn = match GcmaConnection::new(self, &name) {
            Ok(c) => c,
            Err(e) => {
                log::error!("virtio-gcma {name}: cannot set up the connection: {e}");
                return;
            }
        };
        self.counters.connected.fetch_add(1, Ordering::Relaxed);
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        log::info!(
            "virtio-gcma {name}: VMM pid {} uid {} connected",
            peer.pid,
            peer.uid
        );
        let shared = Arc::clone(&conn.shared);
        let handler = Arc::new(Mutex::new(conn));
        let mut req = BackendReqHandler::from_stream(stream, Arc::clone(&handler));
        let end = loop {
            match req.handle_request() {
                Ok(()) => {}
                // The frontend's request was refused (and told so when it asked for a reply);
                // the message was read whole, so the connection goes on.
                Err(
                    e @ (VuError::InvalidParam
                    | VuError::InvalidOperation(_)
                    | VuError::InactiveFeature(_)
                    | VuError::InactiveOperation(_)
                    | VuError::FeatureMismatch
                    | VuError::ReqHandlerError(_)),
                ) => log::debug!("virtio-gcma {name}: request refused: {e}"),
                Err(e) => break e,
            }
        };
        match end {
            VuError::Disconnected | VuError::PartialMessage => {
                log::info!("virtio-gcma {name}: VMM disconnected")
            }
            e => log::warn!("virtio-gcma {name}: connection ended: {e}"),
        }
        drop(req);
        self.counters.connected.fetch_sub(1, Ordering::Relaxed);
        // Stop the worker before tearing down what it serves.
        shared.stop_worker();
        drop(shared);
        let conn = match Arc::try_unwrap(handler) {
            Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
            Err(_) => {
                log::error!("virtio-gcma {name}: handler still shared at disconnect");
                return;
            }
        };
        self.finish(conn, peer);
    }

    /// Releases what a finished connection held, or retires it until its VMM exits.
    fn finish(&self, conn: GcmaConnection, peer: Peer) {
        let GcmaConnection {
            name,
            shared,
            window,
            mapper,
            ..
        } = conn;
        if peer.exited() {
            mapper.peer_gone();
        }
        // Dropping the device releases its client: grants unmapped (acknowledged by a live VMM,
        // or moot once it exited) go back to the pool; the others stay granted to the retired
        // client, stuck in the window.
        let device = match Arc::try_unwrap(shared) {
            Ok(s) => s.device.into_inner().unwrap_or_else(|p| p.into_inner()),
            Err(_) => {
                log::error!("virtio-gcma {name}: device still shared at disconnect");
                return;
            }
        };
        drop(device);
        if window.usage().stuck_grants == 0 {
            self.counters
                .released_clients
                .fetch_add(1, Ordering::Relaxed);
            log::info!("virtio-gcma {name}: released");
            return;
        }
        log::warn!(
            "virtio-gcma {name}: {} grants may still be mapped by VMM pid {}; kept until it exits",
            window.usage().stuck_grants,
            peer.pid
        );
        self.counters
            .retired_clients
            .fetch_add(1, Ordering::Relaxed);
        self.reaper.add(Retired {
            name,
            peer,
            window,
            mapper,
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection whose VMM may still map some of its grants.
struct Retired {
    name: String,
    peer: Peer,
    window: Arc<GrantWindow>,
    mapper: Arc<ShmemMapper>,
}

/// Releases retired connections' grants once their VMM processes exit: one thread polling
/// every retired peer's pidfd.
pub struct Reaper {
    list: Arc<Mutex<Vec<Retired>>>,
    wake: Arc<EventFd>,
    _thread: Option<JoinHandle<()>>,
}

fn eventfd() -> io::Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
}

fn signal(fd: &EventFd) {
    let _ = fd.write(1);
}

fn drain_eventfd(fd: &EventFd) {
    let _ = fd.read();
}

impl Reaper {
    fn start(counters: Arc<VmmCounters>) -> io::Result<Self> {
        let list: Arc<Mutex<Vec<Retired>>> = Arc::new(Mutex::new(Vec::new()));
        let wake = Arc::new(eventfd()?);
        let thread = {
            let (list, wake) = (Arc::clone(&list), Arc::clone(&wake));
            std::thread::Builder::new()
                .name("gcma-reaper".into())
                .spawn(move || {
                    gcma_seccomp::enter_or_exit(gcma_seccomp::ThreadKind::Vhost);
                    reap(&list, &wake, &counters)
                })?
        };
        Ok(Reaper {
            list,
            wake,
            _thread: Some(thread),
        })
    }

    fn add(&self, r: Retired) {
        lock(&self.list).push(r);
        signal(&self.wake);
    }
}

fn reap(list: &Mutex<Vec<Retired>>, wake: &EventFd, counters: &VmmCounters) {
    loop {
        let mut fds: Vec<libc::pollfd> = vec![libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        fds.extend(lock(list).iter().map(|r| libc::pollfd {
            fd: r.peer.pidfd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: `fds` is a valid array of pollfds; the pidfds stay open while their entries
        // are in `list`, and only this thread removes entries.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        drain_eventfd(wake);
        let mut l = lock(list);
        l.retain(|r| {
            // Only an exited VMM is certain to have lost its mappings; a live one that will not
            // acknowledge its unmaps keeps its grants (and is never waited on here, so a VMM
            // that does not answer cannot hold up the others).
            if !r.peer.exited() {
                return true;
            }
            r.mapper.peer_gone();
            r.window.retry_stuck();
            let left = r.window.usage().stuck_grants;
            if left > 0 {
                // Unmaps of an exited VMM cannot fail; the pool refused the pages back (a bug,
                // logged by the window). Not kept: its pidfd would wake this loop forever.
                log::error!(
                    "virtio-gcma {}: {left} grants could not be released",
                    r.name
                );
            }
            counters.retired_clients.fetch_sub(1, Ordering::Relaxed);
            counters.released_clients.fetch_add(1, Ordering::Relaxed);
            log::info!(
                "virtio-gcma {}: VMM pid {} gone; its grants are released",
                r.name,
                r.peer.pid
            );
            false
        });
    }
}

/// One queue's call eventfd as the device's interrupt line.
#[derive(Default)]
struct CallLine {
    fd: Mutex<Option<File>>,
}

impl IrqLine for CallLine {
    fn raise(&self) -> io::Result<()> {
        match &*lock(&self.fd) {
            Some(f) => {
                let mut f: &File = f;
                f.write_all(&1u64.to_ne_bytes())
            }
            // No call fd: the frontend polls.
            None => Ok(()),
        }
    }
}

/// One vring as the frontend configured it.
struct Vring {
    queue: Queue,
    kick: Option<Arc<File>>,
    call: Arc<CallLine>,
    interrupt: InterruptHandle,
    err: Option<File>,
    enabled: bool,
    /// The ring is broken (reported on the err fd); not served until the rings are stopped.
    broken: bool,
}

impl Vring {
    fn new() -> Self {
        let call = Arc::new(CallLine::default());
        Vring {
            queue: Queue::new(QUEUE_MAX_SIZE).expect("QUEUE_MAX_SIZE is a valid queue size"),
            kick: None,
            interrupt: InterruptHandle::new(call.clone()),
            call,
            err: None,
            enabled: false,
            broken: false,
        }
    }
}

/// What a connection's handler and its worker thread share.
struct Shared {
    device: Mutex<GcmaDevice>,
    vrings: Vec<Mutex<Vring>>,
    mem: Mutex<Option<Arc<GuestMemoryMmap>>>,
    /// Wakes the worker to re-read the kick fds.
    wake: EventFd,
    exit: EventFd,
    stopping: AtomicBool,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Busy-poll time after serving (see [`GcmaService::set_busy_poll`]).
    poll: Duration,
}

impl Shared {
    /// Whether queue `index` is served and its driver posted chains the device has not taken.
    fn has_work(&self, index: usize, mem: &GuestMemoryMmap) -> bool {
        let Some(vring) = self.vrings.get(index) else {
            return false;
        };
        let v = lock(vring);
        v.enabled
            && !v.broken
            && v.queue.ready()
            && v.queue
                .avail_idx(mem, Ordering::Acquire)
                .is_ok_and(|idx| idx.0 != v.queue.next_avail())
    }

    /// After a wake-up that served queues: keeps looking at every served ring for `poll` and
    /// serves what appears, starting the time again after each find (QEMU's I/O threads and
    /// Linux's vhost busy-poll do the same). Every ring, not just the ones that were kicked: a
    /// queue enabled meanwhile has no kick fd in this wake-up's list. A kick written meanwhile
    /// wakes the next `poll` call, which then finds the ring empty: cheap.
    fn busy_poll(&self) {
        if self.poll.is_zero() {
            return;
        }
        let Some(mem) = lock(&self.mem).clone() else {
            return;
        };
        let mut until = Instant::now() + self.poll;
        while !self.stopping.load(Ordering::Acquire) {
            let mut found = false;
            for i in 0..self.vrings.len() {
                if self.has_work(i, &mem) {
                    self.serve(i);
                    found = true;
                }
            }
            let now = Instant::now();
            if found {
                until = now + self.poll;
            } else if now >= until {
                return;
            } else {
                std::hint::spin_loop();
            }
        }
    }

    fn stop_worker(&self) {
        self.stopping.store(true, Ordering::Release);
        signal(&self.exit);
        if let Some(t) = lock(&self.worker).take() {
            let _ = t.join();
        }
    }

    /// Serves queue `index` until it is empty (or broken).
    fn serve(&self, index: usize) {
        let Some(mem) = lock(&self.mem).clone() else {
            return;
        };
        let mut dev = lock(&self.device);
        let Some(vring) = self.vrings.get(index) else {
            return;
        };
        let mut v = lock(vring);
        if !v.enabled || v.broken || !v.queue.ready() {
            return;
        }
        let v = &mut *v;
        loop {
            match dev.serve_queue(index as u16, &mut v.queue, &mem, &v.interrupt, BUDGET) {
                Ok(d) if d.more && !self.stopping.load(Ordering::Acquire) => continue,
                Ok(_) => return,
                Err(e) => {
                    log::warn!("virtio-gcma: queue {index}: {e}; served again after a reset");
                    v.broken = true;
                    if let Some(f) = &v.err {
                        let mut f: &File = f;
                        let _ = f.write_all(&1u64.to_ne_bytes());
                    }
                    return;
                }
            }
        }
    }
}

/// Waits on the kick fds and serves the queues they name.
fn worker(shared: &Shared) {
    loop {
        let kicks: Vec<(usize, Arc<File>)> = shared
            .vrings
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let v = lock(v);
                (v.enabled && !v.broken)
                    .then(|| v.kick.clone())
                    .flatten()
                    .map(|k| (i, k))
            })
            .collect();
        let mut fds = vec![
            libc::pollfd {
                fd: shared.exit.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shared.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        fds.extend(kicks.iter().map(|(_, k)| libc::pollfd {
            fd: k.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: `fds` is a valid array; every fd in it is kept open by `shared` or `kicks`
        // for the duration of the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("virtio-gcma: poll: {}", io::Error::last_os_error());
            return;
        }
        if fds[0].revents != 0 || shared.stopping.load(Ordering::Acquire) {
            return;
        }
        if fds[1].revents != 0 {
            drain_eventfd(&shared.wake);
        }
        let mut served = false;
        for (p, (index, kick)) in fds[2..].iter().zip(&kicks) {
            if p.revents == 0 {
                continue;
            }
            let mut b = [0u8; 8];
            let mut k: &File = kick;
            match k.read(&mut b) {
                Ok(8) => {
                    shared.serve(*index);
                    served = true;
                }
                // Not an eventfd (a file at its end, a closed pipe): it would wake us forever.
                r => {
                    log::warn!("virtio-gcma: queue {index}: kick fd is not an eventfd ({r:?})");
                    let mut v = lock(&shared.vrings[*index]);
                    if v.kick.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, kick)) {
                        v.kick = None;
                    }
                }
            }
        }
        if served {
            shared.busy_poll();
        }
    }
}

/// One VMM's connection: the vhost-user request handler.
pub struct GcmaConnection {
    name: String,
    shared: Arc<Shared>,
    window: Arc<GrantWindow>,
    mapper: Arc<ShmemMapper>,
    owned: bool,
    acked_protocol: u64,
    /// (frontend address, length, guest-physical address) of each memory region.
    regions: Vec<(u64, u64, u64)>,
    /// The guest may hold something the device would have to release on the next ring stop.
    session: bool,
    counters: Arc<VmmCounters>,
}

impl GcmaConnection {
    fn new(service: &Arc<GcmaService>, name: &str) -> io::Result<Self> {
        let pool_fd = service.pool.memfd().try_clone_to_owned()?;
        let mapper = Arc::new(ShmemMapper::new(
            pool_fd,
            Arc::clone(&service.counters.shmem_failures),
        ));
        // The window's base is the VMM's business: the daemon works in offsets (base 0), which is
        // what the guest is told (`balloon/PROTOCOL.md`).
        let window = Arc::new(
            GrantWindow::new(
                WindowRange {
                    gpa: 0,
                    len_bytes: service.window_bytes,
                },
                Arc::clone(&service.pool),
                mapper.clone(),
            )
            .map_err(io::Error::other)?,
        );
        lock(&service.windows).push(Arc::downgrade(&window));
        let device = GcmaDevice::new(Arc::clone(&window), name);
        let shared = Arc::new(Shared {
            device: Mutex::new(device),
            vrings: (0..NUM_QUEUES).map(|_| Mutex::new(Vring::new())).collect(),
            mem: Mutex::new(None),
            wake: eventfd()?,
            exit: eventfd()?,
            stopping: AtomicBool::new(false),
            worker: Mutex::new(None),
            poll: Duration::from_nanos(service.poll_ns.load(Ordering::Relaxed)),
        });
        let t = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("gcma-{name}"))
                .spawn(move || worker(&shared))?
        };
        *lock(&shared.worker) = Some(t);
        Ok(GcmaConnection {
            name: name.to_string(),
            shared,
            window,
            mapper,
            owned: false,
            acked_protocol: 0,
            regions: Vec::new(),
            session: false,
            counters: Arc::clone(&service.counters),
        })
    }

    fn vring(&self, index: u32) -> VuResult<MutexGuard<'_, Vring>> {
        self.shared
            .vrings
            .get(index as usize)
            .map(lock)
            .ok_or(VuError::InvalidParam)
    }

    /// Translates a frontend address into a guest-physical one through the memory table.
    fn gpa(&self, addr: u64) -> VuResult<GuestAddress> {
        self.regions
            .iter()
            .find(|&&(va, len, _)| addr >= va && addr - va < len)
            .map(|&(va, _, gpa)| GuestAddress(gpa + (addr - va)))
            .ok_or(VuError::InvalidParam)
    }

    /// The guest is gone (rings stopped, owner or device reset): release what it held and start
    /// a fresh pool client, as the embedded device does on a reset.
    fn reset_guest(&mut self) {
        if self.session {
            self.session = false;
            lock(&self.shared.device).reset();
            self.counters.resets.fetch_add(1, Ordering::Relaxed);
            log::info!(
                "virtio-gcma {}: guest reset; its pool pages were released",
                self.name
            );
        }
        for v in &self.shared.vrings {
            let mut v = lock(v);
            v.enabled = false;
            v.broken = false;
            v.queue.set_ready(false);
        }
        signal(&self.shared.wake);
    }
}

fn refuse<T>(why: &str) -> VuResult<T> {
    Err(VuError::ReqHandlerError(io::Error::new(
        io::ErrorKind::Unsupported,
        why.to_string(),
    )))
}

/// Maps one memory region the frontend shares, refusing any that could fault later: the file
/// must cover the region and be sealed against shrinking (a hostile frontend truncating guest
/// memory under the daemon would otherwise kill it with SIGBUS).
fn map_region(r: &VhostUserMemoryRegion, file: File) -> VuResult<GuestRegionMmap> {
    let bad = |why: &str| {
        VuError::ReqHandlerError(io::Error::new(io::ErrorKind::InvalidInput, why.to_string()))
    };
    let end = r
        .mmap_offset
        .checked_add(r.memory_size)
        .ok_or_else(|| bad("region overflows"))?;
    let size = file.metadata().map_err(VuError::ReqHandlerError)?.len();
    if r.memory_size == 0 || end > size {
        return Err(bad("memory region is empty or larger than its file"));
    }
    // SAFETY: F_GET_SEALS on a descriptor we own; no memory is involved.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
        return Err(bad(
            "guest memory must be a memfd sealed with F_SEAL_SHRINK",
        ));
    }
    let mmap = r.mmap_region::<()>(file)?;
    GuestRegionMmap::new(mmap, GuestAddress(r.guest_phys_addr))
        .ok_or_else(|| bad("memory region overflows the guest address space"))
}

impl VhostUserBackendReqHandlerMut for GcmaConnection {
    fn set_owner(&mut self) -> VuResult<()> {
        if self.owned {
            return Err(VuError::InvalidOperation("already owned"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.reset_guest();
        self.owned = false;
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        self.reset_guest();
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(VHOST_GCMA_FEATURES)
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        if features & !VHOST_GCMA_FEATURES != 0 {
            return Err(VuError::InvalidParam);
        }
        lock(&self.shared.device).features_negotiated(features);
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        if postcopy_listening.is_some() || ctx.len() != files.len() {
            return Err(VuError::InvalidParam);
        }
        let mut regions = Vec::with_capacity(ctx.len());
        let mut table = Vec::with_capacity(ctx.len());
        for (r, f) in ctx.iter().zip(files) {
            regions.push(map_region(r, f)?);
            table.push((r.user_addr, r.memory_size, r.guest_phys_addr));
        }
        let mem = GuestMemoryMmap::from_regions(regions)
            .map_err(|e| VuError::ReqHandlerError(io::Error::other(e)))?;
        // The worker takes the new table on its next chain; rings keep their guest-physical
        // addresses.
        *lock(&self.shared.mem) = Some(Arc::new(mem));
        self.regions = table;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        let size = u16::try_from(num)
            .ok()
            .filter(|n| n.is_power_of_two() && *n <= QUEUE_MAX_SIZE)
            .ok_or(VuError::InvalidParam)?;
        self.vring(index)?.queue.set_size(size);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        let (d, a, u) = (self.gpa(descriptor)?, self.gpa(available)?, self.gpa(used)?);
        let mut v = self.vring(index)?;
        let q = &mut v.queue;
        q.try_set_desc_table_address(d)
            .and_then(|()| q.try_set_avail_ring_address(a))
            .and_then(|()| q.try_set_used_ring_address(u))
            .map_err(|_| VuError::InvalidParam)
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        let base = u16::try_from(base).map_err(|_| VuError::InvalidParam)?;
        let mut v = self.vring(index)?;
        v.queue.set_next_avail(base);
        v.queue.set_next_used(base);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        if index as usize >= NUM_QUEUES {
            return Err(VuError::InvalidParam);
        }
        // The rings stop: the guest (or its VMM) is resetting the device.
        let next = {
            let _dev = lock(&self.shared.device);
            let mut v = self.vring(index)?;
            v.enabled = false;
            v.queue.set_ready(false);
            v.kick = None;
            *lock(&v.call.fd) = None;
            v.queue.next_avail()
        };
        self.reset_guest();
        Ok(VhostUserVringState::new(index, u32::from(next)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.vring(u32::from(index))?.kick = fd.map(Arc::new);
        signal(&self.shared.wake);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let v = self.vring(u32::from(index))?;
        *lock(&v.call.fd) = fd;
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.vring(u32::from(index))?.err = fd;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(vhost_gcma_protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(NUM_QUEUES as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        let has_mem = lock(&self.shared.mem).clone();
        let mut v = self.vring(index)?;
        if enable {
            let Some(mem) = has_mem else {
                return Err(VuError::InvalidOperation("no memory table"));
            };
            if v.kick.is_none() {
                return Err(VuError::InvalidOperation("no kick fd"));
            }
            v.queue.set_ready(true);
            if !v.queue.is_valid(&*mem) {
                v.queue.set_ready(false);
                return Err(VuError::InvalidParam);
            }
            v.enabled = true;
            // Chains the driver posted before the ring was enabled are served now.
            if let Some(k) = &v.kick {
                let mut k: &File = k;
                let _ = k.write_all(&1u64.to_ne_bytes());
            }
            drop(v);
            self.session = true;
        } else {
            v.enabled = false;
        }
        signal(&self.shared.wake);
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        let mut buf = vec![0u8; size.min(256) as usize];
        lock(&self.shared.device).read_config(u64::from(offset), &mut buf);
        Ok(buf)
    }

    fn set_config(
        &mut self,
        offset: u32,
        buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VuResult<()> {
        lock(&self.shared.device).write_config(u64::from(offset), buf);
        Ok(())
    }

    fn set_backend_req_fd(&mut self, backend: Backend) {
        let need = (VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::SHMEM).bits();
        let negotiated = self.acked_protocol & need == need;
        if !negotiated {
            log::warn!(
                "virtio-gcma {}: the VMM did not acknowledge REPLY_ACK and SHMEM; grants will fail",
                self.name
            );
        }
        self.mapper.set_channel(backend, negotiated);
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        refuse("no GPU socket on virtio-gcma")
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        refuse("no shared objects")
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        refuse("no in-flight tracking")
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> VuResult<()> {
        refuse("no in-flight tracking")
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        refuse("no memory slots")
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        refuse("no memory slots")
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        refuse("no memory slots")
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        refuse("no device state transfer")
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        refuse("no device state transfer")
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Ok(VhostUserShMemConfig::new(
            1,
            &[self.window.range().len_bytes],
        ))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        refuse("no dirty logging")
    }
}

/// Serves `service` on `listener`: accepts every VMM that connects and serves each on its own
/// thread, until `stop` is set (checked after each accept).
pub fn serve_gcma(
    listener: std::os::unix::net::UnixListener,
    service: Arc<GcmaService>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("gcma-accept".into())
        .spawn(move || {
            // Connection and worker threads inherit the filter.
            gcma_seccomp::enter_or_exit(gcma_seccomp::ThreadKind::Vhost);
            while !stop.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let s = Arc::clone(&service);
                        if let Err(e) = std::thread::Builder::new()
                            .name("gcma-conn".into())
                            .spawn(move || s.serve(stream))
                        {
                            log::error!("virtio-gcma: cannot start a connection thread: {e}");
                        }
                    }
                    Err(e) => {
                        log::error!("virtio-gcma: accept: {e}");
                        // A listener that fails to accept (out of fds) would fail again at once.
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        })
}
