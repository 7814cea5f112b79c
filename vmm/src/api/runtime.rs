//! A running microVM as the control API and `/metrics` see it: [`VmHandle`] implements
//! [`VmControl`] and [`VmMetricsSource`] over live counters and the devices' shared transports,
//! so both work while the vCPU thread is inside `KVM_RUN`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use balloon::gcma::{GcmaCounters, GcmaMetrics, GrantWindow};
use balloon::virtio_balloon::{Balloon, BalloonStatus, STAT_NAMES};
use gcma_host::pool::Pool;
use serde_json::{json, Value};

use crate::api::control::{ControlError, VmControl};
use crate::api::metrics::VmMetricsSource;
use crate::devices::VirtioSlot;
use crate::kvm::vm::{ExitCounters, ExitStats, StopHandle};

/// The gcma side of a VM: its device's counters, its grant window and the pool.
pub struct GcmaParts {
    /// The device's counters.
    pub metrics: Arc<GcmaMetrics>,
    /// The VM's grant window.
    pub window: Arc<GrantWindow>,
    /// The pool the device draws from.
    pub pool: Arc<Pool>,
}

/// Control and metrics view of one microVM.
pub struct VmHandle {
    name: String,
    mem_bytes: u64,
    payload: String,
    exits: Arc<ExitCounters>,
    stop: StopHandle,
    stopping: AtomicBool,
    balloon: Option<VirtioSlot<Balloon>>,
    gcma: Option<GcmaParts>,
    state: Mutex<String>,
}

impl VmHandle {
    /// A handle for a VM called `name` with `mem_bytes` of RAM running `payload`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: impl Into<String>,
        mem_bytes: u64,
        payload: impl Into<String>,
        exits: Arc<ExitCounters>,
        stop: StopHandle,
        balloon: Option<VirtioSlot<Balloon>>,
        gcma: Option<GcmaParts>,
    ) -> Self {
        VmHandle {
            name: name.into(),
            mem_bytes,
            payload: payload.into(),
            exits,
            stop,
            stopping: AtomicBool::new(false),
            balloon,
            gcma,
            state: Mutex::new("running".into()),
        }
    }

    /// Records how the run ended (shown by `GET /vm`).
    pub fn set_state(&self, state: impl Into<String>) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state.into();
    }

    /// The pool the VM's virtio-gcma device draws from, if it has one.
    pub fn pool(&self) -> Option<&Arc<Pool>> {
        self.gcma.as_ref().map(|g| &g.pool)
    }

    /// Whether `PUT /actions {"action":"shutdown"}` was received.
    pub fn shutdown_requested(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn balloon_status(&self) -> Option<BalloonStatus> {
        let slot = self.balloon.as_ref()?;
        let t = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
        Some(t.device().status())
    }

    /// Hands the balloon's stats buffer back to the guest so it sends fresh statistics; call on
    /// the polling interval.
    pub fn poll_balloon_stats(&self) {
        if let Some(slot) = &self.balloon {
            let mut t = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = t.device_mut().request_stats() {
                log::warn!("{}: balloon stats refresh failed: {e}", self.name);
            }
        }
    }

    /// Starts a thread calling [`Self::poll_balloon_stats`] every `interval` until `done` is set.
    pub fn spawn_stats_poller(
        self: &Arc<Self>,
        interval: Duration,
        done: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("balloon-stats".into())
            .spawn(move || {
                let step = Duration::from_millis(100).min(interval);
                let mut waited = Duration::ZERO;
                while !done.load(Ordering::Acquire) {
                    std::thread::sleep(step);
                    waited += step;
                    if waited >= interval {
                        waited = Duration::ZERO;
                        me.poll_balloon_stats();
                    }
                }
            })
    }
}

fn mib(pages: u64) -> f64 {
    pages as f64 * 4096.0 / (1 << 20) as f64
}

impl VmControl for VmHandle {
    fn vm_info(&self) -> Value {
        let x = self.exits.snapshot();
        let mut devices = vec![];
        if self.balloon.is_some() {
            devices.push("virtio-balloon");
        }
        if self.gcma.is_some() {
            devices.push("virtio-gcma");
        }
        json!({
            "id": self.name,
            "state": *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            "mem_mib": self.mem_bytes >> 20,
            "vcpus": 1,
            "payload": self.payload,
            "devices": devices,
            "exits": {
                "mmio_read": x.mmio_reads,
                "mmio_write": x.mmio_writes,
                "mmio_unclaimed": x.mmio_unclaimed,
                "port_io": x.port_io,
                "interrupted": x.interrupted,
            },
        })
    }

    fn set_balloon_target(&self, target_mib: u64) -> Result<(), ControlError> {
        let slot = self.balloon.as_ref().ok_or_else(|| {
            ControlError::Unavailable(
                "this VM has no balloon device (start it with --balloon-pages)".into(),
            )
        })?;
        let mem_mib = self.mem_bytes >> 20;
        if target_mib > mem_mib {
            return Err(ControlError::BadRequest(format!(
                "target_mib {target_mib} exceeds guest memory ({mem_mib} MiB)"
            )));
        }
        let pages = u32::try_from(target_mib * 256)
            .map_err(|_| ControlError::BadRequest("target_mib too large".into()))?;
        let mut t = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
        t.device_mut()
            .set_target_pages(pages)
            .map_err(|e| ControlError::Internal(format!("signalling the guest failed: {e}")))?;
        log::info!("{}: balloon target set to {target_mib} MiB", self.name);
        Ok(())
    }

    fn balloon_statistics(&self) -> Result<Value, ControlError> {
        let s = self
            .balloon_status()
            .ok_or_else(|| ControlError::Unavailable("this VM has no balloon device".into()))?;
        let stats: serde_json::Map<String, Value> = s
            .stats
            .values
            .iter()
            .zip(STAT_NAMES)
            .filter_map(|(v, name)| v.map(|v| (name.to_string(), json!(v))))
            .collect();
        Ok(json!({
            "target_mib": mib(u64::from(s.target_pages)),
            "actual_mib": mib(u64::from(s.actual_pages)),
            "inflated_mib": mib(s.inflated_pages),
            "activated": s.activated,
            "stats_generation": s.stats.generation,
            "stats": stats,
            "released_bytes": s.counters.released_bytes,
            "pfns_out_of_range": s.counters.pfn_out_of_range,
            "malformed_chains": s.counters.malformed_chains,
        }))
    }

    fn gcma_info(&self) -> Result<Value, ControlError> {
        let g = self.gcma.as_ref().ok_or_else(|| {
            ControlError::Unavailable(
                "this VM has no gcma device (start it with --gcma-pool-mib)".into(),
            )
        })?;
        let grants: Vec<Value> = g
            .window
            .grants()
            .into_iter()
            .map(|(gpa, gr)| {
                json!({"gpa": gpa, "nr_pages": gr.nr_pages, "pool_first_page": gr.first_page})
            })
            .collect();
        let u = g.window.usage();
        let p = g.pool.stats();
        let c = g.metrics.snapshot();
        Ok(json!({
            "grants": grants,
            "window_free_bytes": u.free_bytes,
            "stuck_grants": u.stuck_grants,
            "stuck_pages": u.stuck_pages,
            "requests": c.by_status.iter().map(|q| q.iter().sum::<u64>()).collect::<Vec<u64>>(),
            "pool": {
                "nr_pages": p.nr_pages,
                "free_pages": p.free_zero_pages + p.free_dirty_pages,
                "cleancache_pages": p.cleancache_pages,
                "frontswap_pages": p.frontswap_pages,
                "granted_pages": p.granted_pages,
            },
        }))
    }

    fn shutdown(&self) -> Result<(), ControlError> {
        self.stopping.store(true, Ordering::Release);
        self.set_state("stopping");
        self.stop.stop();
        log::info!("{}: shutdown requested through the API", self.name);
        Ok(())
    }
}

impl VmMetricsSource for VmHandle {
    fn vm_name(&self) -> String {
        self.name.clone()
    }
    fn exits(&self) -> ExitStats {
        self.exits.snapshot()
    }
    fn balloon(&self) -> Option<BalloonStatus> {
        self.balloon_status()
    }
    fn gcma(&self) -> Option<GcmaCounters> {
        self.gcma.as_ref().map(|g| g.metrics.snapshot())
    }
}
