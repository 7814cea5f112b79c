//! A disk as a vhost-user-blk device: the `vhost-user-backend` glue around
//! [`balloon::blk::BlkQueue`]. One value per frontend connection; the disk itself (backend, pool
//! client, counters) outlives connections.
//!
//! Each queue has its own worker thread. Chains are answered one after another in ring order
//! and put on the used ring as they are answered: `vhost-user-backend` 0.24 does not support
//! in-flight tracking, so a frontend that reconnects (QEMU's `reconnect=` chardev option)
//! restores the available index from the used index, and exactly the unanswered requests are
//! submitted again.
//!
//! A worker answers at most one queue's worth of chains per wake-up (ARCHITECTURE.md, "Limits a
//! guest cannot exceed"): with chains possibly left it signals the queue's kick eventfd itself
//! and returns to the worker's epoll loop, which wakes it again after the other events it was
//! given (the connection's exit event, other queues sharing the thread). A guest that keeps
//! posting therefore cannot hold a worker, and every chain it posted is still answered without
//! another kick.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use balloon::blk::{BlkBackend, BlkQueue, BLK_DEVICE_FEATURES};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
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
    /// Chains answered per wake-up at most, if less than the queue's size.
    requests_per_kick: Option<u16>,
}

impl VhostBlk {
    /// A device for one connection to `disk`, reading guest memory through `mem` (the value the
    /// daemon hands to `VhostUserDaemon`, which updates it on every memory table).
    pub fn new(disk: Arc<Disk>, mem: GuestMem) -> Self {
        let name: Arc<str> = Arc::from(disk.name.as_str());
        // One limiter for the log lines the guest can trigger through this disk's queues.
        let logs = Arc::new(gcma_host::log_limit::LogLimiter::default());
        let queues = (0..disk.config.num_queues)
            .map(|_| {
                let mut q = BlkQueue::new(
                    Arc::clone(&disk.backend),
                    Arc::clone(&disk.metrics),
                    Arc::clone(&name),
                );
                q.set_stop(Arc::clone(&disk.stop));
                q.set_log_limiter(Arc::clone(&logs));
                Mutex::new(q)
            })
            .collect();
        VhostBlk {
            disk,
            mem,
            queues: Arc::new(queues),
            event_idx: Arc::new(AtomicBool::new(false)),
            acked: Arc::new(AtomicU64::new(0)),
            requests_per_kick: None,
        }
    }

    /// Answers at most `n` chains (at least one) per wake-up instead of one queue's worth.
    pub fn with_requests_per_kick(mut self, n: u16) -> Self {
        self.requests_per_kick = Some(n);
        self
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
        // What is left of this wake-up's budget: one queue's worth, or less if configured.
        let size = vring.get_ref().get_queue().size();
        let mut budget = u32::from(self.requests_per_kick.map_or(size, |n| n.min(size))).max(1);
        loop {
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            let done = {
                let mut state = vring.get_mut();
                q.process_queue(state.get_queue_mut(), &mem, budget)
            };
            let done = match done {
                Ok(n) => n,
                Err(e) => {
                    // The ring is broken; logged (rate-limited) by the queue. Nothing more can be
                    // answered until the driver resets the device.
                    log::debug!("{}: queue {index}: {e}", self.disk.name);
                    return Ok(());
                }
            };
            if done > 0 && vring.needs_notification().map_err(io::Error::other)? {
                vring.signal_used_queue()?;
            }
            if done == budget {
                // Budget spent, chains may be left: come back after the worker's other events.
                // With EVENT_IDX, notifications stay off meanwhile (the guest need not kick:
                // this wake-up is already owed).
                return Self::rearm(vring);
            }
            budget -= done;
            if !event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                return Ok(());
            }
        }
    }

    /// Signals `vring`'s kick eventfd from this side, as the guest's kick would: the worker's
    /// epoll loop wakes this queue again on its next turn.
    fn rearm(vring: &VringRwLock) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let state = vring.get_ref();
        let Some(kick) = state.get_kick() else {
            // No kick eventfd (the frontend has not set one): nothing ever wakes this worker;
            // the frontend's next SET_VRING_KICK starts the queue again.
            return Ok(());
        };
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to the kick eventfd, which `state` keeps open
        // for the call.
        let n = unsafe { libc::write(kick.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if n == one.len() as isize {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        // EAGAIN: the counter is at its maximum, so the eventfd is readable: already re-armed.
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(());
        }
        Err(e)
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

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::{FromRawFd, IntoRawFd};

    use balloon::blk::testing::MemDisk;
    use balloon::blk::{BlkConfig, ReqStatus, ReqType};
    use gcma_host::api::ClientId;
    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_OUT;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::disk::DiskKind;

    const QSIZE: u16 = 32;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const DATA: u64 = 0x1_0000;
    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    /// Writes descriptor `i` of the table.
    fn desc(mem: &GuestMemoryMmap<()>, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + 16 * u64::from(i);
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    fn sector_bytes(n: u64) -> Vec<u8> {
        vec![n as u8 + 1; 512]
    }

    /// A queue holding more chains than a wake-up's budget is still fully answered, one budget
    /// per wake-up: each spent budget re-arms the kick eventfd (the worker goes back to its
    /// epoll loop in between) and is counted.
    #[test]
    fn a_wake_up_answers_one_budget_then_rearms_the_kick() {
        const CHAINS: u16 = 10;
        const BUDGET: u16 = 4;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let backend = Arc::new(MemDisk::new(1 << 20));
        let disk = Arc::new(Disk::new(
            "d0".into(),
            "g0".into(),
            DiskKind::Swap,
            "unused.sock".into(),
            BlkConfig {
                queue_size: QSIZE,
                ..BlkConfig::new(1 << 20)
            },
            backend.clone(),
            ClientId(0),
        ));
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let blk = VhostBlk::new(disk.clone(), atomic.clone()).with_requests_per_kick(BUDGET);
        let vring = VringRwLock::new(atomic, QSIZE).unwrap();
        vring.set_queue_size(QSIZE);
        vring.set_queue_info(DESC, AVAIL, USED).unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        // SAFETY: a fresh duplicate of the eventfd, owned by the File from here on.
        let dup = unsafe { File::from_raw_fd(kick.try_clone().unwrap().into_raw_fd()) };
        vring.set_kick(Some(dup));

        // Ten writes of one sector each: header, data, status byte.
        for c in 0..CHAINS {
            let (i, base) = (3 * c, DATA + 0x400 * u64::from(c));
            let mut header = [0u8; 16];
            header[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
            header[8..16].copy_from_slice(&u64::from(c).to_le_bytes());
            mem.write_slice(&header, GuestAddress(base)).unwrap();
            mem.write_slice(&sector_bytes(c.into()), GuestAddress(base + 0x10))
                .unwrap();
            desc(&mem, i, base, 16, F_NEXT, i + 1);
            desc(&mem, i + 1, base + 0x10, 512, F_NEXT, i + 2);
            desc(&mem, i + 2, base + 0x210, 1, F_WRITE, 0);
            mem.write_obj(i, GuestAddress(AVAIL + 4 + 2 * u64::from(c)))
                .unwrap();
        }
        mem.write_obj(CHAINS, GuestAddress(AVAIL + 2)).unwrap();
        kick.write(1).unwrap();

        // The worker's loop: a readable kick wakes the queue.
        let mut answered = Vec::new();
        while kick.read().is_ok() {
            let before: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
            blk.handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 0)
                .unwrap();
            let after: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
            answered.push(after - before);
            assert!(answered.len() <= 10, "the worker never stops waking");
        }
        assert_eq!(answered, [4, 4, 2], "one budget per wake-up");
        let c = disk.metrics.snapshot();
        assert_eq!(c.budget_exhausted, 2);
        assert_eq!(
            c.count(ReqType::Out, ReqStatus::Ok),
            u64::from(CHAINS),
            "{c:?}"
        );
        let contents = backend.contents();
        for s in 0..u64::from(CHAINS) {
            let at = (s * 512) as usize;
            assert_eq!(contents[at..at + 512], sector_bytes(s)[..], "sector {s}");
        }
    }
}
