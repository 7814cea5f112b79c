//! A running microVM as the control API and `/metrics` see it: [`VmHandle`] implements
//! [`VmControl`] and [`VmMetricsSource`] over live counters and the devices' shared transports,
//! so both work while the vCPU thread is inside `KVM_RUN`.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use balloon::gcma::{GcmaCounters, GcmaMetrics, GrantWindow};
use balloon::transport::MmioTransport;
use balloon::virtio_balloon::{Balloon, BalloonStatus};
use gcma_host::log_limit::LogLimiter;
use gcma_host::pool::Pool;

use crate::api::control::{ControlError, VmControl};
use crate::api::metrics::VmMetricsSource;
use crate::api::model::{
    BalloonDeviceConfig, BalloonStats, BalloonStatsUpdate, BalloonUpdate, GcmaInfo, GcmaRequests,
    GrantInfo, PoolInfo, VmExits, VmInfo,
};
use crate::devices::{OutputCounters, OutputStats, VirtioSlot};
use crate::kvm::vm::{ExitCounters, ExitStats, StopHandle};
use crate::kvm::VmOutcome;

/// The gcma side of a VM: its device's counters, its grant window and the pool.
pub struct GcmaParts {
    /// The device's counters.
    pub metrics: Arc<GcmaMetrics>,
    /// The VM's grant window.
    pub window: Arc<GrantWindow>,
    /// The pool the device draws from.
    pub pool: Arc<Pool>,
}

/// Where a VM is in its life, as `GET /vm` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// The vCPU runs the guest.
    Running,
    /// A shutdown was asked for and the vCPU is being stopped.
    Stopping,
    /// The run ended.
    Ended(VmOutcome),
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmState::Running => f.write_str("running"),
            VmState::Stopping => f.write_str("stopping"),
            VmState::Ended(VmOutcome::Exited { code }) => write!(f, "exited (code {code})"),
            VmState::Ended(VmOutcome::Shutdown { rip }) => write!(f, "faulted (rip {rip:#x})"),
            VmState::Ended(VmOutcome::Halted { rip }) => write!(f, "halted (rip {rip:#x})"),
            VmState::Ended(VmOutcome::Stopped { rip }) => write!(f, "stopped (rip {rip:#x})"),
            VmState::Ended(VmOutcome::MemoryFault {
                gpa: Some(gpa),
                rip,
            }) => {
                write!(f, "faulted on unbacked memory at {gpa:#x} (rip {rip:#x})")
            }
            VmState::Ended(VmOutcome::MemoryFault { gpa: None, rip }) => {
                write!(f, "faulted on unbacked memory (rip {rip:#x})")
            }
            VmState::Ended(VmOutcome::EmulationFailure { rip, insn, .. }) => {
                write!(
                    f,
                    "stopped on an instruction KVM cannot emulate at rip {rip:#x} ({insn})"
                )
            }
        }
    }
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
    state: Mutex<VmState>,
    /// Seconds between balloon statistics refreshes (0: none), as the API shows and sets it.
    stats_interval_s: AtomicU16,
    /// Ask the guest for statistics at the poller's next step (the interval just changed).
    stats_refresh_now: AtomicBool,
    /// The VM's log limiter and output counters, once known ([`Self::with_guest_io`]).
    logs: Option<Arc<LogLimiter>>,
    output: Option<Arc<OutputCounters>>,
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
            state: Mutex::new(VmState::Running),
            stats_interval_s: AtomicU16::new(0),
            stats_refresh_now: AtomicBool::new(false),
            logs: None,
            output: None,
        }
    }

    /// The same handle, reporting the VM's suppressed log lines and its output counters in
    /// `/metrics`.
    pub fn with_guest_io(mut self, logs: Arc<LogLimiter>, output: Arc<OutputCounters>) -> Self {
        self.logs = Some(logs);
        self.output = Some(output);
        self
    }

    /// Records how the run ended (shown by `GET /vm`).
    pub fn set_state(&self, state: VmState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
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

    /// Starts a thread calling [`Self::poll_balloon_stats`] every `interval` (whole seconds, at
    /// most `u16::MAX`; zero: not until the API sets an interval) until `done` is set. The API
    /// may change the interval while it runs (`PATCH /balloon/statistics`).
    pub fn spawn_stats_poller(
        self: &Arc<Self>,
        interval: Duration,
        done: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let secs = u16::try_from(interval.as_secs()).unwrap_or(u16::MAX);
        self.stats_interval_s.store(secs, Ordering::Release);
        let me = self.clone();
        std::thread::Builder::new()
            .name("balloon-stats".into())
            .spawn(move || {
                // It asks the balloon device for statistics, as the device thread would.
                gcma_seccomp::enter_or_exit(gcma_seccomp::ThreadKind::Device);
                let step = Duration::from_millis(100);
                let mut waited = Duration::ZERO;
                while !done.load(Ordering::Acquire) {
                    std::thread::sleep(step);
                    waited += step;
                    let every =
                        Duration::from_secs(u64::from(me.stats_interval_s.load(Ordering::Acquire)));
                    let now = me.stats_refresh_now.swap(false, Ordering::AcqRel);
                    if now || (!every.is_zero() && waited >= every) {
                        waited = Duration::ZERO;
                        me.poll_balloon_stats();
                    }
                }
            })
    }
}

fn no_balloon() -> ControlError {
    ControlError::Unavailable(
        "this VM has no balloon device (start it with --balloon-pages)".into(),
    )
}

impl VmHandle {
    fn balloon_slot(&self) -> Result<&VirtioSlot<Balloon>, ControlError> {
        self.balloon.as_ref().ok_or_else(no_balloon)
    }

    /// The target in pages for `amount_mib`, if the guest has that much memory.
    fn target_pages(&self, amount_mib: u32) -> Result<u32, ControlError> {
        let mem_mib = self.mem_bytes >> 20;
        if u64::from(amount_mib) > mem_mib {
            return Err(ControlError::BadRequest(format!(
                "amount_mib {amount_mib} exceeds guest memory ({mem_mib} MiB)"
            )));
        }
        // At most 3328 MiB of guest memory: fits in u32 pages.
        Ok(amount_mib * MIB_PAGES)
    }

    /// Checks that statistics may be `on` with the transport as it is: either they already are
    /// (or are not), or no driver has read the feature offer yet.
    fn stats_change_allowed(t: &MmioTransport<Balloon>, on: bool) -> Result<(), ControlError> {
        let now = t.device().config().stats;
        if now == on || t.status() == 0 {
            return Ok(());
        }
        Err(ControlError::BadRequest(format!(
            "balloon statistics were {} when the guest driver negotiated the device's features; \
             they cannot be turned {} now (only the interval of enabled statistics can change)",
            if now { "enabled" } else { "disabled" },
            if on { "on" } else { "off" },
        )))
    }

    fn set_stats_interval(&self, t: &mut MmioTransport<Balloon>, interval_s: u16) {
        let on = interval_s > 0;
        if t.device().config().stats != on {
            let c = t.device().config();
            t.device_mut()
                .set_offered_features(c.deflate_on_oom, on, c.free_page_reporting);
        }
        let old = self.stats_interval_s.swap(interval_s, Ordering::AcqRel);
        if on && old != interval_s {
            // As Firecracker does: the first refresh at the new interval happens now.
            self.stats_refresh_now.store(true, Ordering::Release);
        }
    }

    fn set_target(&self, t: &mut MmioTransport<Balloon>, pages: u32) -> Result<(), ControlError> {
        t.device_mut()
            .set_target_pages(pages)
            .map_err(|e| ControlError::Internal(format!("signalling the guest failed: {e}")))?;
        log::info!(
            "{}: balloon target set to {} MiB",
            self.name,
            pages / MIB_PAGES
        );
        Ok(())
    }
}

/// 4 KiB pages per MiB.
const MIB_PAGES: u32 = 256;

impl VmControl for VmHandle {
    fn vm_info(&self) -> VmInfo {
        let x = self.exits.snapshot();
        let mut devices = vec![];
        if self.balloon.is_some() {
            devices.push("virtio-balloon".to_string());
        }
        if self.gcma.is_some() {
            devices.push("virtio-gcma".to_string());
        }
        VmInfo {
            id: self.name.clone(),
            state: self
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .to_string(),
            mem_mib: self.mem_bytes >> 20,
            vcpus: 1,
            payload: self.payload.clone(),
            devices,
            exits: VmExits {
                mmio_read: x.mmio_reads,
                mmio_write: x.mmio_writes,
                mmio_unclaimed: x.mmio_unclaimed,
                port_io: x.port_io,
                interrupted: x.interrupted,
            },
        }
    }

    fn gcma_info(&self) -> Result<GcmaInfo, ControlError> {
        let g = self.gcma.as_ref().ok_or_else(|| {
            ControlError::Unavailable(
                "this VM has no gcma device (start it with --gcma-pool-mib)".into(),
            )
        })?;
        let grants = g
            .window
            .grants()
            .into_iter()
            .map(|(gpa, gr)| GrantInfo {
                gpa,
                nr_pages: gr.nr_pages,
                pool_first_page: gr.first_page,
            })
            .collect();
        let u = g.window.usage();
        let p = g.pool.stats();
        let c = g.metrics.snapshot();
        Ok(GcmaInfo {
            grants,
            window_free_bytes: u.free_bytes,
            stuck_grants: u.stuck_grants,
            stuck_pages: u.stuck_pages,
            requests: GcmaRequests {
                control: c.requests(0),
                cleancache: c.requests(1),
                frontswap: c.requests(2),
            },
            pool: PoolInfo {
                nr_pages: p.nr_pages,
                free_pages: p.free_zero_pages + p.free_dirty_pages,
                cleancache_pages: p.cleancache_pages,
                frontswap_pages: p.frontswap_pages,
                granted_pages: p.granted_pages,
            },
        })
    }

    fn balloon_config(&self) -> Result<BalloonDeviceConfig, ControlError> {
        let slot = self.balloon_slot()?;
        let t = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
        let c = t.device().config();
        Ok(BalloonDeviceConfig {
            amount_mib: t.device().status().target_pages / MIB_PAGES,
            deflate_on_oom: c.deflate_on_oom,
            stats_polling_interval_s: self.stats_interval_s.load(Ordering::Acquire),
            free_page_hinting: false,
            free_page_reporting: c.free_page_reporting,
        })
    }

    fn put_balloon(&self, cfg: &BalloonDeviceConfig) -> Result<(), ControlError> {
        let slot = self.balloon_slot()?;
        if cfg.free_page_hinting {
            return Err(ControlError::BadRequest(
                "free_page_hinting is not supported: this balloon does not offer \
                 VIRTIO_BALLOON_F_FREE_PAGE_HINT"
                    .into(),
            ));
        }
        let pages = self.target_pages(cfg.amount_mib)?;
        let mut t = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
        let now = t.device().config();
        let stats = cfg.stats_polling_interval_s > 0;
        if (now.deflate_on_oom, now.free_page_reporting)
            != (cfg.deflate_on_oom, cfg.free_page_reporting)
        {
            if t.status() != 0 {
                return Err(ControlError::BadRequest(format!(
                    "the guest driver has already negotiated the balloon's features \
                     (deflate_on_oom: {}, free_page_reporting: {}); they cannot change now. \
                     The target can (PATCH /balloon), and so can the interval of enabled \
                     statistics (PATCH /balloon/statistics)",
                    now.deflate_on_oom, now.free_page_reporting
                )));
            }
            t.device_mut().set_offered_features(
                cfg.deflate_on_oom,
                now.stats,
                cfg.free_page_reporting,
            );
        }
        Self::stats_change_allowed(&t, stats)?;
        self.set_stats_interval(&mut t, cfg.stats_polling_interval_s);
        self.set_target(&mut t, pages)
    }

    fn patch_balloon(&self, update: &BalloonUpdate) -> Result<(), ControlError> {
        let slot = self.balloon_slot()?;
        let pages = self.target_pages(update.amount_mib)?;
        let mut t = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(interval) = update.stats_polling_interval_s {
            Self::stats_change_allowed(&t, interval > 0)?;
            self.set_stats_interval(&mut t, interval);
        }
        self.set_target(&mut t, pages)
    }

    fn balloon_stats(&self) -> Result<BalloonStats, ControlError> {
        let slot = self.balloon_slot()?;
        let t = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
        if !t.device().config().stats {
            return Err(ControlError::BadRequest(
                "balloon statistics are not enabled (stats_polling_interval_s is 0)".into(),
            ));
        }
        let s = t.device().status();
        let mut out = BalloonStats {
            target_pages: s.target_pages,
            actual_pages: s.actual_pages,
            target_mib: s.target_pages / MIB_PAGES,
            actual_mib: s.actual_pages / MIB_PAGES,
            ..BalloonStats::default()
        };
        out.set_guest_stats(&s.stats.values);
        Ok(out)
    }

    fn patch_balloon_stats(&self, update: &BalloonStatsUpdate) -> Result<(), ControlError> {
        let slot = self.balloon_slot()?;
        let mut t = slot.transport.lock().unwrap_or_else(|e| e.into_inner());
        Self::stats_change_allowed(&t, update.stats_polling_interval_s > 0)?;
        self.set_stats_interval(&mut t, update.stats_polling_interval_s);
        Ok(())
    }

    fn shutdown(&self) -> Result<(), ControlError> {
        self.stopping.store(true, Ordering::Release);
        self.set_state(VmState::Stopping);
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
    fn log_suppressed(&self) -> Vec<(&'static str, u64)> {
        self.logs.as_ref().map_or_else(Vec::new, |l| l.suppressed())
    }
    fn output(&self) -> Option<OutputStats> {
        self.output.as_ref().map(|o| o.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use balloon::testing::{memfd_guest_memory, CountingIrq, Driver};
    use balloon::transport::MmioTransport;
    use balloon::virtio_balloon::{
        Balloon, BalloonConfig, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_PAGE_REPORTING,
        VIRTIO_BALLOON_F_STATS_VQ,
    };

    use super::*;
    use crate::devices::virtio::PolledIrq;
    use crate::kvm::vm::{ExitCounters, StopHandle};

    const MEM: u64 = 4 << 20;

    fn vm() -> (VmHandle, Driver<Arc<Mutex<MmioTransport<Balloon>>>>) {
        let mem = Arc::new(memfd_guest_memory(&[(0, MEM as usize)]).unwrap());
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            Balloon::new(BalloonConfig::default()),
            mem.clone(),
            Arc::new(CountingIrq::default()),
        )));
        let slot = VirtioSlot {
            base: 0,
            irq: Arc::new(PolledIrq::new(5)),
            transport: transport.clone(),
        };
        let handle = VmHandle::new(
            "vm0",
            MEM,
            "test",
            Arc::new(ExitCounters::default()),
            StopHandle::detached(),
            Some(slot),
            None,
        );
        (handle, Driver::new(transport, mem, (3 << 20)..MEM))
    }

    fn cfg(amount_mib: u32, deflate: bool, stats_s: u16, reporting: bool) -> BalloonDeviceConfig {
        BalloonDeviceConfig {
            amount_mib,
            deflate_on_oom: deflate,
            stats_polling_interval_s: stats_s,
            free_page_hinting: false,
            free_page_reporting: reporting,
        }
    }

    #[test]
    fn balloon_settings_change_until_the_driver_negotiates() {
        let (vm, mut driver) = vm();
        let bits = VIRTIO_BALLOON_F_DEFLATE_ON_OOM
            | VIRTIO_BALLOON_F_STATS_VQ
            | VIRTIO_BALLOON_F_PAGE_REPORTING;

        // No driver yet: every setting can change, and the offer follows.
        vm.put_balloon(&cfg(1, false, 0, false)).unwrap();
        assert_eq!(driver.device_features() & bits, 0);
        assert_eq!(vm.balloon_config().unwrap(), cfg(1, false, 0, false));
        assert!(matches!(
            vm.balloon_stats(),
            Err(ControlError::BadRequest(m)) if m.contains("not enabled")
        ));
        vm.put_balloon(&cfg(1, true, 2, true)).unwrap();
        assert_eq!(driver.device_features() & bits, bits);
        assert_eq!(vm.balloon_config().unwrap(), cfg(1, true, 2, true));

        // The driver takes what is offered; from then on features stay.
        driver.negotiate(u64::MAX).unwrap();
        let refused = vm.put_balloon(&cfg(2, false, 2, true));
        assert!(
            matches!(&refused, Err(ControlError::BadRequest(m)) if m.contains("already negotiated")),
            "{refused:?}"
        );
        assert!(matches!(
            vm.patch_balloon_stats(&BalloonStatsUpdate { stats_polling_interval_s: 0 }),
            Err(ControlError::BadRequest(m)) if m.contains("cannot be turned off")
        ));
        assert_eq!(
            vm.balloon_config().unwrap(),
            cfg(1, true, 2, true),
            "a refused request changed something"
        );

        // The target and the interval of enabled statistics still change.
        vm.put_balloon(&cfg(2, true, 2, true)).unwrap();
        vm.patch_balloon_stats(&BalloonStatsUpdate {
            stats_polling_interval_s: 7,
        })
        .unwrap();
        vm.patch_balloon(&BalloonUpdate {
            amount_mib: 3,
            stats_polling_interval_s: None,
        })
        .unwrap();
        assert_eq!(vm.balloon_config().unwrap(), cfg(3, true, 7, true));
        let s = vm.balloon_stats().unwrap();
        assert_eq!((s.target_pages, s.target_mib), (768, 3));
        assert_eq!(driver.config_read_u32(0), 768, "num_pages in config space");

        assert!(matches!(
            vm.patch_balloon(&BalloonUpdate { amount_mib: 5, stats_polling_interval_s: None }),
            Err(ControlError::BadRequest(m)) if m.contains("exceeds guest memory")
        ));
        let mut hinting = cfg(3, true, 7, true);
        hinting.free_page_hinting = true;
        assert!(matches!(
            vm.put_balloon(&hinting),
            Err(ControlError::BadRequest(m)) if m.contains("free_page_hinting")
        ));
        assert_eq!(vm.balloon_config().unwrap(), cfg(3, true, 7, true));
    }
}
