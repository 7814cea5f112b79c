//! Device events off the vCPU thread: irqfd interrupt lines, ioeventfd queue notifications served
//! by an `event-manager` loop, and stopping a running vCPU from another thread.
//!
//! By default a guest's `QueueNotify` write exits to the VMM and the vCPU thread calls the
//! transport synchronously (see [`crate::devices::virtio`]). With a [`QueueNotifier`] registered,
//! KVM completes that write in the kernel by signalling an eventfd (one per queue index, matched
//! on the value written), the vCPU goes on at once, and the [`DeviceEventLoop`] thread delivers
//! the notification to the transport. [`IrqfdLine`] is the interrupt side: raising it signals an
//! eventfd KVM injects as interrupt `gsi` through the in-kernel irqchip.
//!
//! Stopping a running vCPU from another thread is [`crate::kvm::vm::StopHandle`]'s job.
//!
//! ```no_run
//! use std::sync::Arc;
//! use balloon::virtio_balloon::{Balloon, BalloonConfig};
//! use vmm::kvm::events::{DeviceEventLoop, QueueNotifier};
//! use vmm::{payloads::BuiltinPayload, Hypervisor, MicroVm, VmConfig};
//!
//! let hv = Hypervisor::open()?;
//! let mut vm = MicroVm::new(&hv, &VmConfig::default())?;
//! let slot = vm.add_virtio_device(Balloon::new(BalloonConfig::default()))?;
//! let notifier = QueueNotifier::new(vm.shared_vm_fd(), slot.base, slot.transport.clone())?;
//! let events = DeviceEventLoop::start(vec![Box::new(notifier)])?;
//! vm.load_payload(BuiltinPayload::Balloon.elf())?;
//! println!("{:?}", vm.run()?);
//! events.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use balloon::transport::mmio::regs;
use balloon::transport::mmio::MmioTransport;
use balloon::transport::{IrqLine, VirtioDevice};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What can go wrong setting up device events or stopping a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// An eventfd could not be created.
    #[error("creating an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// KVM refused an irqfd because the VM has no in-kernel irqchip.
    #[error("irqfd for gsi {gsi} refused: the VM has no in-kernel irqchip (set VmConfig::irqchip, which creates it before the vCPU)")]
    NoIrqchip {
        /// The interrupt number asked for.
        gsi: u32,
    },
    /// `KVM_IRQFD` failed for another reason.
    #[error("registering the irqfd for gsi {gsi}: {source}")]
    Irqfd {
        /// The interrupt number asked for.
        gsi: u32,
        /// The error KVM returned.
        source: kvm_ioctls::Error,
    },
    /// `KVM_IOEVENTFD` failed.
    #[error("registering the ioeventfd for queue {queue} at {addr:#x}: {source}")]
    Ioeventfd {
        /// Guest-physical address of the `QueueNotify` register.
        addr: u64,
        /// The queue index the eventfd matches.
        queue: u16,
        /// The error KVM returned.
        source: kvm_ioctls::Error,
    },
    /// The device has no queues to notify.
    #[error("the device has no queues")]
    NoQueues,
    /// The event manager could not be created or polled.
    #[error("event manager: {0:?}")]
    EventManager(event_manager::Error),
    /// A thread could not be started.
    #[error("starting the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A thread panicked.
    #[error("the {0} thread panicked")]
    ThreadPanicked(&'static str),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, EventsError>;

/// An interrupt line backed by a KVM irqfd: raising it writes an eventfd that KVM turns into
/// interrupt `gsi` of the in-kernel irqchip, without a trip through the VMM.
///
/// The irqfd is unregistered when the line is dropped.
pub struct IrqfdLine {
    vm: Arc<VmFd>,
    evt: EventFd,
    gsi: u32,
    raised: AtomicU64,
}

impl std::fmt::Debug for IrqfdLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrqfdLine")
            .field("gsi", &self.gsi)
            .field("raised", &self.raised())
            .finish_non_exhaustive()
    }
}

impl IrqfdLine {
    /// Registers a new eventfd as irqfd for `gsi`. The VM needs an in-kernel irqchip
    /// ([`EventsError::NoIrqchip`] otherwise).
    pub fn new(vm: Arc<VmFd>, gsi: u32) -> Result<Self> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(EventsError::EventFd)?;
        vm.register_irqfd(&evt, gsi).map_err(|source| {
            // x86 KVM refuses irqfds with EINVAL while no in-kernel irqchip exists.
            if source.errno() == libc::EINVAL {
                EventsError::NoIrqchip { gsi }
            } else {
                EventsError::Irqfd { gsi, source }
            }
        })?;
        Ok(IrqfdLine {
            vm,
            evt,
            gsi,
            raised: AtomicU64::new(0),
        })
    }

    /// The interrupt number.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// How many times the line was raised.
    pub fn raised(&self) -> u64 {
        self.raised.load(Ordering::Relaxed)
    }

    /// A duplicate of the eventfd (tests; another signaller).
    pub fn eventfd(&self) -> std::io::Result<EventFd> {
        self.evt.try_clone()
    }
}

impl IrqLine for IrqfdLine {
    fn raise(&self) -> std::io::Result<()> {
        self.raised.fetch_add(1, Ordering::Relaxed);
        self.evt.write(1)
    }
}

impl Drop for IrqfdLine {
    fn drop(&mut self) {
        if let Err(e) = self.vm.unregister_irqfd(&self.evt, self.gsi) {
            log::warn!("unregistering the irqfd for gsi {}: {e}", self.gsi);
        }
    }
}

/// Counts shared between a [`QueueNotifier`] and whoever watches it.
#[derive(Debug, Default)]
pub struct NotifierStats {
    wakeups: AtomicU64,
    delivered: AtomicU64,
    rearmed: AtomicU64,
}

impl NotifierStats {
    /// Times the event loop woke up for one of the device's eventfds.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Notifications handed to the transport (one per wake-up and queue; guest kicks that
    /// arrive while one is pending are coalesced, which is fine: a queue with work left after
    /// its turn is re-armed).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Turns that ended with work left (the device served one queue's worth), after which the
    /// queue's eventfd was signalled again so that the loop comes back to it after the other
    /// ready events.
    pub fn rearmed(&self) -> u64 {
        self.rearmed.load(Ordering::Relaxed)
    }
}

/// One virtio-mmio device's queue notifications through ioeventfds: an eventfd per possible
/// queue index, registered on the device's `QueueNotify` register with the index as datamatch
/// (virtio-mmio without `VIRTIO_F_NOTIFICATION_DATA`: the driver writes the 32-bit queue index).
///
/// Registered on creation, for every queue index the device could have with all features it
/// offers (the driver may configure fewer). A subscriber of the [`DeviceEventLoop`]; its
/// ioeventfds are unregistered when it is dropped (when the loop stops). While registered, a
/// notify of a valid index never reaches the vCPU thread; other values still exit to the VMM
/// and the transport handles them as before.
pub struct QueueNotifier<D: VirtioDevice> {
    vm: Arc<VmFd>,
    notify_addr: u64,
    transport: Arc<Mutex<MmioTransport<D>>>,
    queues: Vec<EventFd>,
    stats: Arc<NotifierStats>,
}

impl<D: VirtioDevice> std::fmt::Debug for QueueNotifier<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueNotifier")
            .field("notify_addr", &self.notify_addr)
            .field("queues", &self.queues.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<D: VirtioDevice> QueueNotifier<D> {
    /// Registers the ioeventfds of the device whose register window starts at `base`.
    pub fn new(vm: Arc<VmFd>, base: u64, transport: Arc<Mutex<MmioTransport<D>>>) -> Result<Self> {
        let nr_queues = {
            let t = transport.lock().unwrap_or_else(|p| p.into_inner());
            t.device().queue_max_sizes(t.offered_features()).len()
        };
        let nr_queues = u16::try_from(nr_queues).unwrap_or(u16::MAX);
        if nr_queues == 0 {
            return Err(EventsError::NoQueues);
        }
        let mut notifier = QueueNotifier {
            vm,
            notify_addr: base + regs::QUEUE_NOTIFY,
            transport,
            queues: Vec::with_capacity(usize::from(nr_queues)),
            stats: Arc::default(),
        };
        for queue in 0..nr_queues {
            let evt = EventFd::new(EFD_NONBLOCK).map_err(EventsError::EventFd)?;
            notifier
                .vm
                .register_ioevent(
                    &evt,
                    &IoEventAddress::Mmio(notifier.notify_addr),
                    u32::from(queue),
                )
                .map_err(|source| EventsError::Ioeventfd {
                    addr: notifier.notify_addr,
                    queue,
                    source,
                })?;
            // Pushed only once registered: drop unregisters exactly these.
            notifier.queues.push(evt);
        }
        log::debug!(
            "ioeventfds for {nr_queues} queues at {:#x}",
            notifier.notify_addr
        );
        Ok(notifier)
    }

    /// Counters, readable while the notifier runs in the loop.
    pub fn stats(&self) -> Arc<NotifierStats> {
        self.stats.clone()
    }

    /// Number of queue indices with an ioeventfd.
    pub fn nr_queues(&self) -> usize {
        self.queues.len()
    }

    fn deliver(&self, queue: u16) {
        // What a trapped `QueueNotify` write does, so notifications sent between FEATURES_OK and
        // DRIVER_OK are deferred to activation exactly as on the synchronous path. The device
        // serves one queue's worth per turn; when work is left the queue's eventfd is signalled
        // again, so the loop serves the other ready events (other devices, other queues) before
        // coming back: a guest that keeps posting cannot hold this thread or the transport.
        let drained = self
            .transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .notify(queue);
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        if drained.more {
            if let Some(evt) = self.queues.get(usize::from(queue)) {
                match evt.write(1) {
                    Ok(()) => {
                        self.stats.rearmed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => log::warn!("re-arming the ioeventfd of queue {queue}: {e}"),
                }
            }
        }
    }
}

impl<D: VirtioDevice> Drop for QueueNotifier<D> {
    fn drop(&mut self) {
        for (queue, evt) in self.queues.iter().enumerate() {
            let addr = IoEventAddress::Mmio(self.notify_addr);
            if let Err(e) = self.vm.unregister_ioevent(evt, &addr, queue as u32) {
                log::warn!(
                    "unregistering the ioeventfd for queue {queue} at {:#x}: {e}",
                    self.notify_addr
                );
            }
        }
    }
}

impl<D: VirtioDevice> MutEventSubscriber for QueueNotifier<D> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let Ok(queue) = u16::try_from(events.data()) else {
            return;
        };
        let Some(evt) = self.queues.get(usize::from(queue)) else {
            return;
        };
        if events
            .event_set()
            .intersects(EventSet::ERROR | EventSet::HANG_UP)
        {
            log::warn!(
                "ioeventfd of queue {queue} at {:#x} failed",
                self.notify_addr
            );
            if let Err(e) = ops.remove(Events::empty(evt)) {
                log::warn!("removing the ioeventfd from the event loop: {e:?}");
            }
            return;
        }
        self.stats.wakeups.fetch_add(1, Ordering::Relaxed);
        match evt.read() {
            Ok(_) => self.deliver(queue),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => log::warn!("reading the ioeventfd of queue {queue}: {e}"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (queue, evt) in self.queues.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, queue as u32, EventSet::IN)) {
                log::warn!(
                    "adding the ioeventfd of queue {queue} (fd {}) to the event loop: {e:?}",
                    evt.as_raw_fd()
                );
            }
        }
    }
}

/// A subscriber the device event loop can own.
pub type DeviceSubscriber = Box<dyn MutEventSubscriber + Send>;

/// Watches the loop's exit eventfd.
struct ExitWatcher {
    evt: EventFd,
    stop: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stop.store(true, Ordering::Release);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::warn!("adding the exit eventfd to the event loop: {e:?}");
        }
    }
}

/// An `event-manager` loop on its own thread that owns the device subscribers (e.g. a
/// [`QueueNotifier`] per virtio device). [`Self::stop`] (or dropping it) ends the thread through
/// an exit eventfd and drops the subscribers, which unregisters their eventfds.
pub struct DeviceEventLoop {
    exit: EventFd,
    thread: Option<JoinHandle<Result<()>>>,
}

impl std::fmt::Debug for DeviceEventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceEventLoop")
            .field("running", &self.thread.is_some())
            .finish_non_exhaustive()
    }
}

impl DeviceEventLoop {
    /// Starts the loop thread with `subscribers`. Returns once every subscriber is registered.
    pub fn start(subscribers: Vec<DeviceSubscriber>) -> Result<Self> {
        let exit = EventFd::new(EFD_NONBLOCK).map_err(EventsError::EventFd)?;
        let watcher_evt = exit.try_clone().map_err(EventsError::EventFd)?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let thread = std::thread::Builder::new()
            .name("vmm-devices".into())
            .spawn(move || {
                gcma_seccomp::enter_or_exit(gcma_seccomp::ThreadKind::Device);
                let mut manager = match EventManager::<DeviceSubscriber>::new() {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(EventsError::EventManager(e)));
                        return Ok(());
                    }
                };
                let stop = Arc::new(AtomicBool::new(false));
                manager.add_subscriber(Box::new(ExitWatcher {
                    evt: watcher_evt,
                    stop: stop.clone(),
                }));
                for s in subscribers {
                    manager.add_subscriber(s);
                }
                let _ = ready_tx.send(Ok(()));
                while !stop.load(Ordering::Acquire) {
                    match manager.run() {
                        Ok(_) => {}
                        Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
                        Err(e) => return Err(EventsError::EventManager(e)),
                    }
                }
                Ok(())
            })
            .map_err(|source| EventsError::Thread {
                what: "device event loop",
                source,
            })?;
        let mut me = DeviceEventLoop {
            exit,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(me),
            Ok(Err(e)) => {
                me.thread.take().map(JoinHandle::join);
                Err(e)
            }
            Err(_) => Err(me.join()),
        }
    }

    /// Stops the loop thread, drops the subscribers and reports how the loop ended.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        if let Err(e) = self.exit.write(1) {
            log::warn!("signalling the device event loop to stop: {e}");
        }
        thread
            .join()
            .map_err(|_| EventsError::ThreadPanicked("device event loop"))?
    }

    fn join(&mut self) -> EventsError {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            _ => EventsError::ThreadPanicked("device event loop"),
        }
    }
}

impl Drop for DeviceEventLoop {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::warn!("device event loop: {e}");
        }
    }
}
