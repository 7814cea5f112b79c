//! A disk as a vhost-user-blk device: the `vhost-user-backend` glue around
//! [`balloon::blk::BlkQueue`]. One value per frontend connection; the disk itself (backend, pool
//! client, counters) outlives connections.
//!
//! Each queue has its own worker thread. Chains are answered one after another in ring order
//! and put on the used ring as they are answered: `vhost-user-backend` 0.24 does not support
//! in-flight tracking, so a frontend that reconnects (QEMU's `reconnect=` chardev option)
//! restores the available index from the used index, and exactly the unanswered requests are
//! submitted again.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use balloon::blk::{BlkBackend, BlkQueue, BLK_DEVICE_FEATURES};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::disk::Disk;

/// Guest memory as the frontend shares it.
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// The virtio feature bits a disk offers over vhost-user.
pub const VHOST_BLK_FEATURES: u64 = BLK_DEVICE_FEATURES
    | 1 << VIRTIO_F_VERSION_1
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// One connection's view of a disk.
#[derive(Clone)]
pub struct VhostBlk {
    disk: Arc<Disk>,
    mem: GuestMem,
    queues: Arc<Vec<Mutex<BlkQueue<dyn BlkBackend>>>>,
    event_idx: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
}

impl VhostBlk {
    /// A device for one connection to `disk`, reading guest memory through `mem` (the value the
    /// daemon hands to `VhostUserDaemon`, which updates it on every memory table).
    pub fn new(disk: Arc<Disk>, mem: GuestMem) -> Self {
        let name: Arc<str> = Arc::from(disk.name.as_str());
        let queues = (0..disk.config.num_queues)
            .map(|_| {
                let mut q = BlkQueue::new(
                    Arc::clone(&disk.backend),
                    Arc::clone(&disk.metrics),
                    Arc::clone(&name),
                );
                q.set_stop(Arc::clone(&disk.stop));
                Mutex::new(q)
            })
            .collect();
        VhostBlk {
            disk,
            mem,
            queues: Arc::new(queues),
            event_idx: Arc::new(AtomicBool::new(false)),
            acked: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Answers what `vring` (queue `index`) holds; signals the guest if it wants to know.
    fn process(&self, vring: &VringRwLock, index: usize) -> io::Result<()> {
        let Some(_in) = self.disk.enter() else {
            // Stopping: chains stay on the ring for the daemon that serves the disk next.
            return Ok(());
        };
        let Some(q) = self.queues.get(index) else {
            return Err(io::Error::other(format!("no queue {index}")));
        };
        let mut q = q.lock().unwrap_or_else(|e| e.into_inner());
        let mem = self.mem.memory();
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            let done = {
                let mut state = vring.get_mut();
                q.process_queue(state.get_queue_mut(), &mem)
            };
            match done {
                Ok(0) => {}
                Ok(_) => {
                    if vring.needs_notification().map_err(io::Error::other)? {
                        vring.signal_used_queue()?;
                    }
                }
                Err(e) => {
                    // The ring is broken; logged (rate-limited) by the queue. Nothing more can be
                    // answered until the driver resets the device.
                    log::debug!("{}: queue {index}: {e}", self.disk.name);
                    return Ok(());
                }
            }
            if !event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                return Ok(());
            }
        }
    }
}

impl VhostUserBackend for VhostBlk {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.disk.config.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.disk.config.queue_size)
    }

    fn features(&self) -> u64 {
        VHOST_BLK_FEATURES
    }

    fn acked_features(&self, features: u64) {
        self.acked.store(features, Ordering::Relaxed);
        for q in self.queues.iter() {
            q.lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_features(features);
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.disk.config.read(offset, size)
    }

    fn update_memory(&self, _mem: GuestMem) -> io::Result<()> {
        // `self.mem` is the same atomic the handler just updated.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One worker thread per queue: queues of a multi-queue guest run in parallel.
        (0..self.disk.config.num_queues)
            .map(|i| 1u64 << i)
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without one the worker threads would outlive the connection.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event {evset:?}")));
        }
        // One queue per thread: the thread's only vring is queue `thread_id`.
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or_else(|| io::Error::other(format!("no vring for event {device_event}")))?;
        self.process(vring, thread_id)
    }
}
