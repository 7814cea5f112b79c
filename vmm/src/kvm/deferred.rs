//! Queue work a notification left behind, served on the vCPU thread a turn at a time.
//!
//! A `QueueNotify` write exits to the VMM and the vCPU thread serves the queue: at most one
//! queue's worth of chains per turn (`balloon::transport::MmioTransport::process_queue`). If the
//! guest keeps posting (from another vCPU, or by having the device's own writes land in its
//! available ring), serving until the ring is empty would hold the vCPU thread, and the device's
//! lock, for as long as the guest likes. So a turn that ends with work left marks its queue
//! pending and returns to the guest; the guest only kicks once per batch, so the VMM must come
//! back by itself: a one-shot timer interrupts `KVM_RUN` after [`SLICE`] of guest time (it sends
//! the vCPU kick signal to this thread) and the run loop then serves the next turn of every
//! pending queue. Every posted request is served, the guest runs between turns, and a stop
//! request or the control API (which takes the device lock) gets through between turns too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use balloon::transport::mmio::MmioTransport;
use balloon::transport::VirtioDevice;

use crate::error::{Error, Result};

/// Guest time between two turns of leftover queue work.
pub const SLICE: Duration = Duration::from_micros(100);

/// Something with notification work left over: a virtio transport.
pub(crate) trait PendingWork: Send + Sync {
    /// Serves one more turn of every queue with work left; `true` if some is still left.
    fn process_pending(&self) -> bool;
}

impl<D: VirtioDevice> PendingWork for Mutex<MmioTransport<D>> {
    fn process_pending(&self) -> bool {
        self.lock()
            .unwrap_or_else(|p| p.into_inner())
            .process_pending()
    }
}

/// A POSIX timer that sends `signal` to the thread that created it.
struct SliceTimer(libc::timer_t);

impl SliceTimer {
    fn new(signal: libc::c_int) -> std::io::Result<Self> {
        // SAFETY: a zeroed sigevent is valid; the fields used by SIGEV_THREAD_ID are set below.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = signal;
        // SAFETY: gettid has no preconditions.
        sev.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `sev` and `id` are valid for the call; the kernel writes the new timer's id.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SliceTimer(id))
    }

    fn arm(&self, after: Duration) -> std::io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos().into(),
            },
        };
        // SAFETY: `self.0` is a live timer of this process; `spec` is valid for the call.
        if unsafe { libc::timer_settime(self.0, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for SliceTimer {
    fn drop(&mut self) {
        // SAFETY: `self.0` was created by timer_create and is deleted once, here (which also
        // disarms it).
        unsafe { libc::timer_delete(self.0) };
    }
}

/// The leftover queue work of one VM and the timer that brings the vCPU thread back to it.
pub(crate) struct Deferred {
    /// Set by a transport whose notification left work (shared with every transport of the VM).
    flag: Arc<AtomicBool>,
    transports: Vec<Arc<dyn PendingWork>>,
    /// Created on the vCPU thread when first needed, deleted when `run` returns.
    timer: Option<SliceTimer>,
    armed: bool,
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred")
            .field("pending", &self.flag.load(Ordering::Relaxed))
            .field("transports", &self.transports.len())
            .field("armed", &self.armed)
            .finish()
    }
}

// SAFETY: the timer id is a plain handle; it is only used by the thread inside `MicroVm::run`,
// which creates it and deletes it before returning (`finish`), so moving a `Deferred` between
// threads while no run is in progress moves no live timer.
unsafe impl Send for Deferred {}

impl Deferred {
    pub(crate) fn new() -> Self {
        Deferred {
            flag: Arc::new(AtomicBool::new(false)),
            transports: Vec::new(),
            timer: None,
            armed: false,
        }
    }

    /// The flag transports set when they leave work.
    pub(crate) fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.flag)
    }

    pub(crate) fn add(&mut self, t: Arc<dyn PendingWork>) {
        self.transports.push(t);
    }

    /// Before entering the guest: with work pending, arms the timer that brings this thread back
    /// after [`SLICE`] (the kick signal interrupts `KVM_RUN`).
    pub(crate) fn before_run(&mut self, signal: libc::c_int) -> Result<()> {
        if self.armed || !self.flag.load(Ordering::Acquire) {
            return Ok(());
        }
        let io = |source| Error::Io {
            op: "arming the timer for leftover queue work",
            source,
        };
        if self.timer.is_none() {
            self.timer = Some(SliceTimer::new(signal).map_err(io)?);
        }
        if let Some(t) = &self.timer {
            t.arm(SLICE).map_err(io)?;
        }
        self.armed = true;
        Ok(())
    }

    /// After `KVM_RUN` was interrupted (by the timer, or any other signal): serves one more turn
    /// of every queue with work left.
    pub(crate) fn after_interrupt(&mut self) {
        self.armed = false;
        if !self.flag.swap(false, Ordering::AcqRel) {
            return;
        }
        for t in &self.transports {
            // A transport with work still left sets the flag again.
            t.process_pending();
        }
    }

    /// `run` is returning: the timer belongs to this thread, so it goes.
    pub(crate) fn finish(&mut self) {
        self.timer = None;
        self.armed = false;
    }
}
