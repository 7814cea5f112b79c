//! `vmm demo`: several microVMs share one GCMA pool. Tenant guests fill it with cleancache and
//! frontswap pages and keep that traffic going; one guest asks for contiguous grants of growing
//! size, each of which evicts tenants' pages from the run it takes. All gcma traffic is issued by
//! guest code (the `agent` payload, ring 3 under KVM); the host runs the devices, the pool, the
//! metrics endpoint and this report.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, Receiver, RecvTimeoutError};
use gcma_host::api::FrontswapPolicy;
use gcma_host::huge::HugePages;
use gcma_host::pool::{Pool, PoolConfig, PoolStats, Zeroer, ZeroerConfig};

use vmm::abi::*;
use vmm::api::control::metrics_handler;
use vmm::api::http::HttpServer;
use vmm::api::metrics::VmmMetrics;
use vmm::api::runtime::VmHandle;
use vmm::devices::mailbox::{self, MailboxEvent};
use vmm::kvm::vm::{SharedBuffer, StopHandle};
use vmm::launch::{BuiltVm, VmBuilder};
use vmm::limits::GuestLimits;
use vmm::payloads::BuiltinPayload;
use vmm::{Hypervisor, SerialOutput, VmConfig, VmOutcome};

use report::{SizeRow, Summary};

pub mod report;

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Pool size in MiB.
    pub pool_mib: u64,
    /// Tenant microVMs (cleancache + frontswap traffic).
    pub tenants: usize,
    /// RAM of every microVM, MiB.
    pub vm_mem_mib: u64,
    /// Cleancache pages each tenant puts per round.
    pub cc_pages: u64,
    /// Frontswap offsets each tenant uses.
    pub fs_pages: u64,
    /// Tenant rounds before the grants start (so the pool is full of second-class pages).
    pub warmup_rounds: u64,
    /// Grant sizes in pages.
    pub sizes: Vec<u64>,
    /// Grants per size.
    pub reps: u64,
    /// Frontswap policy of the pool.
    pub frontswap_policy: FrontswapPolicy,
    /// Where `/metrics` is served (port 0 picks one).
    pub metrics_addr: SocketAddr,
    /// Where the SVG chart goes (`None`: not written).
    pub svg_path: Option<PathBuf>,
    /// Print progress while running.
    pub progress: bool,
    /// Where to write the summary as JSON when the run is over (`None`: not written).
    pub summary_json: Option<PathBuf>,
    /// How long `/metrics` stays up after the run (and after the summary is written), so that
    /// a scraper gets the final values.
    pub metrics_linger: Duration,
    /// What each guest may cost the host (log lines, console output, requests per kick).
    pub limits: GuestLimits,
    /// Tree nodes one grant may visit under the pool lock.
    pub max_search_nodes: u32,
    /// CPU share of the pool's background zeroer, percent of one core (0: off).
    pub zeroer_cpu_pct: u32,
    /// How the pool and every microVM's RAM are backed (4 KiB, shmem THP or hugetlb pages).
    pub huge_pages: HugePages,
}

impl Default for DemoConfig {
    /// The embedded default: the GCMA paper's set-up scaled to a microVM host: a 256 MiB pool
    /// (the paper's GCMA area; about 1% of a 24 GiB host), two tenants whose pages fill most of
    /// it, and the paper's grant sizes, 32 grants each.
    fn default() -> Self {
        DemoConfig {
            pool_mib: 256,
            tenants: 2,
            vm_mem_mib: 64,
            cc_pages: 8192,
            fs_pages: 16384,
            warmup_rounds: 2,
            sizes: vec![1, 512, 1024, 2048, 4096, 8192, 16384, 32000],
            reps: 32,
            frontswap_policy: FrontswapPolicy::WriteThrough,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            svg_path: Some(PathBuf::from("gcma-demo.svg")),
            progress: true,
            summary_json: None,
            metrics_linger: Duration::ZERO,
            limits: GuestLimits::default(),
            max_search_nodes: gcma_host::range::DEFAULT_MAX_VISITS,
            zeroer_cpu_pct: gcma_host::pool::DEFAULT_ZEROER_CPU_PCT,
            huge_pages: HugePages::Off,
        }
    }
}

/// Errors that stop the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// KVM cannot be used here.
    #[error("/dev/kvm is unusable. The demo runs microVMs under KVM: run it on a Linux host with KVM enabled and read/write access to /dev/kvm (root, or a member of group kvm)")]
    Kvm(#[source] vmm::Error),
    /// The configuration is not usable.
    #[error("invalid demo configuration: {0}")]
    Config(String),
    /// Setting up or running a microVM failed.
    #[error("microVM {vm}")]
    Vm {
        /// Which VM.
        vm: String,
        /// What failed.
        #[source]
        source: vmm::Error,
    },
    /// A microVM's vCPU thread could not be started, or ended in a panic.
    #[error("microVM {vm}: vCPU thread {what}")]
    VcpuThread {
        /// Which VM.
        vm: String,
        /// "could not start" or "panicked".
        what: &'static str,
    },
    /// The pool could not be created.
    #[error("creating the pool")]
    Pool(#[source] gcma_host::api::PoolError),
    /// The metrics endpoint could not be served.
    #[error("serving the metrics endpoint")]
    Metrics(#[source] vmm::api::http::HttpError),
    /// The summary could not be encoded.
    #[error("encoding the summary")]
    SummaryJson(#[source] serde_json::Error),
    /// The summary could not be written.
    #[error("cannot write the summary to {path}")]
    Summary {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What one tenant saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TenantSummary {
    /// Rounds completed.
    pub rounds: u64,
    /// Cleancache puts kept.
    pub cc_puts: u64,
    /// Cleancache hits.
    pub cc_hits: u64,
    /// Cleancache misses (pages dropped, e.g. evicted by a grant).
    pub cc_misses: u64,
    /// Frontswap stores accepted.
    pub fs_stores: u64,
    /// Frontswap stores rejected.
    pub fs_rejects: u64,
    /// Frontswap loads.
    pub fs_loads: u64,
    /// Pages checked at the end.
    pub fs_verified: u64,
    /// Cleancache hits with the wrong bytes.
    pub cc_stale: u64,
    /// Accepted frontswap pages that could not be loaded.
    pub fs_lost: u64,
    /// Frontswap pages with the wrong bytes.
    pub fs_corrupt: u64,
    /// Driver errors.
    pub errors: u64,
    /// Whether the agent reported every check passed.
    pub passed: bool,
}

/// What the demo measured and checked (written by `vmm demo --summary-json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoSummary {
    /// Latency per grant size, with the memset baseline.
    pub rows: Vec<SizeRow>,
    /// Grants that succeeded.
    pub grants_ok: u64,
    /// Grants refused.
    pub grants_failed: u64,
    /// Fresh grants with non-zero bytes, pattern mismatches and failed frees.
    pub grant_check_failures: u64,
    /// Per tenant.
    pub tenants: Vec<TenantSummary>,
    /// How each VM ended, grants VM last.
    pub outcomes: Vec<(String, VmOutcome)>,
    /// The pool at the end.
    pub pool: PoolStats,
    /// Second-class pages evicted by grants.
    pub evicted_by_grants: u64,
    /// `/metrics` as scraped over HTTP just before the VMs were torn down.
    pub metrics_text: String,
    /// TSC frequency used to convert guest cycle counts.
    pub tsc_hz: f64,
    /// Whether every check passed ([`DemoSummary::all_checks_passed`]).
    pub passed: bool,
}

impl DemoSummary {
    /// Every grant succeeded and read as zero, every tenant check passed, every VM exited 0.
    pub fn all_checks_passed(&self) -> bool {
        self.grants_failed == 0
            && self.grant_check_failures == 0
            && self.tenants.iter().all(|t| t.passed)
            && self
                .outcomes
                .iter()
                .all(|(_, o)| *o == VmOutcome::Exited { code: 0 })
    }
}

struct Running {
    name: String,
    control: Arc<AtomicU64>,
    stop: StopHandle,
    serial: SharedBuffer,
    thread: Option<JoinHandle<vmm::Result<VmOutcome>>>,
    metrics: Arc<VmHandle>,
}

macro_rules! say {
    ($cfg:expr, $($arg:tt)*) => {
        if $cfg.progress {
            println!($($arg)*);
            let _ = std::io::stdout().flush();
        }
    };
}

#[allow(clippy::too_many_arguments)]
fn launch(
    hv: &Hypervisor,
    pool: &Arc<Pool>,
    name: &str,
    index: usize,
    params: Vec<u64>,
    mem_mib: u64,
    window_bytes: u64,
    events: &crossbeam::channel::Sender<MailboxEvent>,
    limits: GuestLimits,
    huge_pages: HugePages,
) -> Result<Running, DemoError> {
    let err = |source: vmm::Error| DemoError::Vm {
        vm: name.to_string(),
        source,
    };
    // Only shown when a check fails: the first 64 KiB are plenty.
    let serial = SharedBuffer::with_capacity(64 << 10);
    let config = VmConfig {
        mem_bytes: mem_mib << 20,
        serial: SerialOutput::Buffer(serial.clone()),
        grant_window_bytes: window_bytes,
        limits,
        huge_pages,
        ..VmConfig::default()
    };
    let BuiltVm {
        mut vm,
        handle: metrics,
        ..
    } = VmBuilder::new(name, config, BuiltinPayload::Agent.name())
        .gcma(pool.clone())
        .build(hv)
        .map_err(err)?;
    let control = mailbox::attach(&mut vm, index, params, events.clone()).map_err(err)?;
    vm.load_payload(BuiltinPayload::Agent.elf()).map_err(err)?;
    let stop = vm.stop_handle();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu-{name}"))
        .spawn(move || {
            gcma_seccomp::enter_or_exit(gcma_seccomp::ThreadKind::Vcpu);
            vm.run()
        })
        .map_err(|_| DemoError::VcpuThread {
            vm: name.to_string(),
            what: "could not start",
        })?;
    Ok(Running {
        name: name.to_string(),
        control,
        stop,
        serial,
        thread: Some(thread),
        metrics,
    })
}

fn join(r: &mut Running) -> Result<VmOutcome, DemoError> {
    let panicked = || DemoError::VcpuThread {
        vm: r.name.clone(),
        what: "panicked",
    };
    // Joined once: `run_demo` joins every VM exactly once.
    let t = r.thread.take().ok_or_else(panicked)?;
    let result = t.join().map_err(|_| panicked())?;
    result.map_err(|source| DemoError::Vm {
        vm: r.name.clone(),
        source,
    })
}

fn scrape(addr: SocketAddr) -> String {
    let fetch = || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        Ok(resp
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_string()))
    };
    fetch().unwrap_or_else(|e| {
        log::warn!("self-scrape of /metrics failed: {e}");
        String::new()
    })
}

fn validate(cfg: &DemoConfig) -> Result<(), DemoError> {
    let bad = |m: &str| Err(DemoError::Config(m.to_string()));
    if cfg.sizes.is_empty() || cfg.sizes.contains(&0) {
        return bad("grant sizes must be non-empty and non-zero");
    }
    let pool_pages = cfg.pool_mib * 256;
    if let Some(&m) = cfg.sizes.iter().find(|&&s| s > pool_pages) {
        return bad(&format!(
            "grant size {m} pages exceeds the {pool_pages}-page pool"
        ));
    }
    if cfg.vm_mem_mib < 16 {
        return bad("microVMs need at least 16 MiB");
    }
    if cfg.reps == 0 {
        return bad("reps must be at least 1");
    }
    Ok(())
}

/// Runs the demo and prints progress and the report (when `cfg.progress`).
pub fn run_demo(cfg: &DemoConfig) -> Result<DemoSummary, DemoError> {
    validate(cfg)?;
    let hv = Hypervisor::open().map_err(DemoError::Kvm)?;
    let pool_pages = cfg.pool_mib * 256;
    let pool = Pool::new(PoolConfig {
        frontswap_policy: cfg.frontswap_policy,
        // Bound what one guest can push to the backing file (a store may be accepted there when
        // no pool page is free): at most a pool's worth each.
        client_frontswap_limit_pages: Some(pool_pages),
        max_search_nodes: cfg.max_search_nodes,
        log_limit: cfg.limits.log,
        huge_pages: cfg.huge_pages,
        ..PoolConfig::new(pool_pages)
    })
    .map_err(DemoError::Pool)?;
    // Zeroes free pool pages between grants; stopped when the demo returns.
    let _zeroer = match cfg.zeroer_cpu_pct {
        0 => None,
        pct => Some(Zeroer::start(&pool, ZeroerConfig::new(pct)).map_err(DemoError::Pool)?),
    };
    // Writes pages whose write-back failed once the backing file works again.
    let _retrier =
        gcma_host::pool::WritebackRetrier::start(&pool, gcma_host::pool::DEFAULT_RETRY_PERIOD)
            .map_err(DemoError::Pool)?;

    let mut metrics = VmmMetrics::new();
    pool.register_metrics(metrics.registry_mut());
    let metrics = Arc::new(metrics);
    let m = metrics.clone();
    let handler = metrics_handler(Arc::new(move || m.render()));
    let server = match HttpServer::tcp(cfg.metrics_addr, "metrics", handler.clone()) {
        Ok(s) => s,
        Err(e) if cfg.metrics_addr.port() != 0 => {
            // Another demo or exporter holds the default port: any free port will do.
            let mut any = cfg.metrics_addr;
            any.set_port(0);
            log::warn!("{e}; serving metrics on a free port instead");
            HttpServer::tcp(any, "metrics", handler).map_err(DemoError::Metrics)?
        }
        Err(e) => return Err(DemoError::Metrics(e)),
    };
    let metrics_addr = server.local_addr().unwrap_or(cfg.metrics_addr);

    say!(
        cfg,
        "gcma demo: {} MiB pool ({} pages), {} tenant microVMs + 1 grant microVM, {} MiB RAM each",
        cfg.pool_mib,
        pool_pages,
        cfg.tenants,
        cfg.vm_mem_mib
    );
    say!(cfg, "metrics: http://{metrics_addr}/metrics");
    say!(
        cfg,
        "All virtio-gcma traffic below comes from guest code: the `agent` payload runs natively in"
    );
    say!(cfg, "ring 3 under KVM and drives the device through MMIO registers and virtqueues. The host runs");
    say!(
        cfg,
        "the device model, the pool and this report; no request is injected from the host side."
    );

    let hz = vmm::payloads::tsc_hz();
    // Bounded: a guest writing events in a loop fills it and the rest is dropped and counted.
    let (tx, rx) = bounded::<MailboxEvent>(mailbox::EVENT_QUEUE_LEN);
    let mut vms: Vec<Running> = Vec::new();
    for i in 0..cfg.tenants {
        let params = vec![DEMO_ROLE_TENANT, i as u64, cfg.cc_pages, cfg.fs_pages];
        let name = format!("tenant{i}");
        let r = launch(
            &hv,
            &pool,
            &name,
            i,
            params,
            cfg.vm_mem_mib,
            4 << 20,
            &tx,
            cfg.limits,
            cfg.huge_pages,
        )?;
        metrics.add_vm(r.metrics.clone());
        vms.push(r);
    }
    let mut tenants = vec![TenantSummary::default(); cfg.tenants];
    let mut done = vec![false; cfg.tenants + 1];
    let pool_now = || pool.stats();
    warm_up(cfg, &rx, &mut tenants, &mut done, &pool_now);

    // Grants, while the tenants keep going.
    let max_pages = cfg.sizes.iter().copied().max().unwrap_or(1);
    let window = (max_pages * 4096).div_ceil(2 << 20) * (2 << 20) + (2 << 20);
    let mut params = vec![
        DEMO_ROLE_GRANTS,
        cfg.tenants as u64,
        cfg.reps,
        cfg.sizes.len() as u64,
    ];
    params.extend(&cfg.sizes);
    let gi = cfg.tenants;
    let g = launch(
        &hv,
        &pool,
        "grants",
        gi,
        params,
        cfg.vm_mem_mib,
        window,
        &tx,
        cfg.limits,
        cfg.huge_pages,
    )?;
    metrics.add_vm(g.metrics.clone());
    vms.push(g);
    drop(tx);
    say!(cfg, "\n[phase 2] guest asks for contiguous grants, {} of each size, while tenants keep their traffic going", cfg.reps);

    let grants_vm = &vms[gi];
    let tally = grant_phase(
        cfg,
        hz,
        &rx,
        GrantsVm {
            index: gi,
            overdue: &|| grants_vm.stop.stop(),
            exited: &|| grants_vm.thread.as_ref().is_some_and(|t| t.is_finished()),
        },
        &mut tenants,
        &mut done,
        &pool_now,
    );
    let grants_outcome = join(&mut vms[gi])?;

    // Stop the tenants: they check every page they still hold and report.
    say!(
        cfg,
        "\n[phase 3] tenants stop and check every frontswap page they still hold"
    );
    for v in vms.iter().take(cfg.tenants) {
        v.control.store(MAILBOX_CONTROL_STOP, Ordering::Release);
    }
    let stop_deadline = Instant::now() + Duration::from_secs(600);
    while done.iter().take(cfg.tenants).any(|d| !*d) {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(ev) if ev.vm < cfg.tenants => apply_tenant(&mut tenants, &mut done, ev),
            Ok(_) => {}
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                if Instant::now() > stop_deadline {
                    for v in vms.iter().take(cfg.tenants) {
                        v.stop.stop();
                    }
                    break;
                }
            }
        }
    }
    let mut outcomes = Vec::new();
    for v in vms.iter_mut().take(cfg.tenants) {
        let o = join(v)?;
        outcomes.push((v.name.clone(), o));
    }
    outcomes.push(("grants".to_string(), grants_outcome));
    drain(&rx, &mut tenants, &mut done);
    let metrics_text = scrape(metrics_addr);
    let summary = summarize(cfg, hz, tally, tenants, outcomes, metrics_text, |_| {
        pool.stats()
    });
    if cfg.progress {
        print_report(cfg, &summary, &vms);
    }
    write_outputs(
        cfg,
        &summary,
        "Contiguous grant latency seen by a guest (virtio-gcma)",
    )?;
    if !cfg.metrics_linger.is_zero() {
        eprintln!(
            "vmm: demo finished; serving http://{metrics_addr}/metrics for {} more seconds",
            cfg.metrics_linger.as_secs()
        );
        std::thread::sleep(cfg.metrics_linger);
    }
    drop(server);
    Ok(summary)
}

/// Writes what `cfg` asks for besides the report: the latency chart (titled `chart_title`) and
/// the JSON summary.
fn write_outputs(
    cfg: &DemoConfig,
    summary: &DemoSummary,
    chart_title: &str,
) -> Result<(), DemoError> {
    if let Some(p) = &cfg.svg_path {
        let svg = report::render_svg(&summary.rows, chart_title);
        match std::fs::write(p, svg) {
            Ok(()) => say!(cfg, "chart: {}", p.display()),
            Err(e) => eprintln!("vmm: cannot write {}: {e}", p.display()),
        }
    }
    if let Some(path) = &cfg.summary_json {
        let json = serde_json::to_string_pretty(summary).map_err(DemoError::SummaryJson)?;
        std::fs::write(path, json).map_err(|source| DemoError::Summary {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

fn drain(rx: &Receiver<MailboxEvent>, tenants: &mut [TenantSummary], done: &mut [bool]) {
    while let Ok(ev) = rx.try_recv() {
        if ev.vm < tenants.len() {
            apply_tenant(tenants, done, ev);
        }
    }
}

fn apply_tenant(tenants: &mut [TenantSummary], done: &mut [bool], ev: MailboxEvent) {
    let Some(t) = tenants.get_mut(ev.vm) else {
        return;
    };
    let v = ev.value;
    match ev.tag {
        EV_TENANT_ROUND => t.rounds = v,
        EV_CC_PUTS => t.cc_puts = v,
        EV_CC_HITS => t.cc_hits = v,
        EV_CC_MISSES => t.cc_misses = v,
        EV_FS_STORES => t.fs_stores = v,
        EV_FS_REJECTS => t.fs_rejects = v,
        EV_FS_LOADS => t.fs_loads = v,
        EV_FS_VERIFIED => t.fs_verified = v,
        EV_CC_STALE => t.cc_stale = v,
        EV_FS_LOST => t.fs_lost = v,
        EV_FS_CORRUPT => t.fs_corrupt = v,
        EV_ERRORS => t.errors = v,
        EV_DONE => {
            t.passed = v == 1;
            if let Some(d) = done.get_mut(ev.vm) {
                *d = true;
            }
        }
        _ => {}
    }
}

/// Phase 1: lets the tenants fill the pool (until each went through `cfg.warmup_rounds` rounds,
/// one of them finished, or 10 minutes passed), then prints what the pool holds.
fn warm_up(
    cfg: &DemoConfig,
    rx: &Receiver<MailboxEvent>,
    tenants: &mut [TenantSummary],
    done: &mut [bool],
    pool_now: &dyn Fn() -> PoolStats,
) {
    say!(
        cfg,
        "\n[phase 1] tenants fill the pool with cleancache and frontswap pages ({} rounds)",
        cfg.warmup_rounds
    );
    let warm_deadline = Instant::now() + Duration::from_secs(600);
    while cfg.tenants > 0 && tenants.iter().any(|t| t.rounds < cfg.warmup_rounds) {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(ev) => apply_tenant(tenants, done, ev),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if done.iter().take(cfg.tenants).any(|d| *d) || Instant::now() > warm_deadline {
            break;
        }
    }
    let s = pool_now();
    say!(
        cfg,
        "  pool: {} cleancache, {} frontswap, {} free pages",
        s.cleancache_pages,
        s.frontswap_pages,
        s.free_zero_pages + s.free_dirty_pages
    );
}

/// The grants VM as phase 2 sees it: its index in the event stream, what to do when it has not
/// finished in 30 minutes (after logging it), and whether it ended without saying so.
struct GrantsVm<'a> {
    index: usize,
    overdue: &'a dyn Fn(),
    exited: &'a dyn Fn() -> bool,
}

/// Phase 2: collects the grants VM's events (and the tenants') until it is done, printing the
/// pool every 3 s.
fn grant_phase(
    cfg: &DemoConfig,
    hz: f64,
    rx: &Receiver<MailboxEvent>,
    grants: GrantsVm<'_>,
    tenants: &mut [TenantSummary],
    done: &mut [bool],
    pool_now: &dyn Fn() -> PoolStats,
) -> GrantTally {
    let gi = grants.index;
    let mut tally = GrantTally::default();
    let mut last_report = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(1800);
    while !done[gi] {
        let ev = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => {
                if Instant::now() > deadline {
                    log::error!("grants VM did not finish in time; stopping it");
                    (grants.overdue)();
                    break;
                }
                if (grants.exited)() {
                    break;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if ev.vm != gi {
            apply_tenant(tenants, done, ev);
            continue;
        }
        if tally.apply(cfg, hz, &ev) {
            done[gi] = true;
        }
        if last_report.elapsed() > Duration::from_secs(3) {
            last_report = Instant::now();
            let s = pool_now();
            say!(
                cfg,
                "  ... pool: {} granted, {} cleancache, {} frontswap pages; tenants at round {}",
                s.granted_pages,
                s.cleancache_pages,
                s.frontswap_pages,
                tenants.iter().map(|t| t.rounds).min().unwrap_or(0)
            );
        }
    }
    tally.finish(cfg);
    tally
}

/// The demo's summary from what the phases collected; `pool` gives the pool's final state from
/// the metrics text (read after the memset baselines are measured, as before).
fn summarize(
    cfg: &DemoConfig,
    hz: f64,
    tally: GrantTally,
    tenants: Vec<TenantSummary>,
    outcomes: Vec<(String, VmOutcome)>,
    metrics_text: String,
    pool: impl FnOnce(&str) -> PoolStats,
) -> DemoSummary {
    let GrantTally {
        mut rows,
        ok: grants_ok,
        failed: grants_failed,
        check_failures,
    } = tally;
    for row in &mut rows {
        row.memset = report::measure_memset(row.pages, cfg.reps as usize);
    }
    let pool_stats = pool(&metrics_text);
    let evicted_by_grants = pool_stats.evictions_grant.iter().sum();
    let mut summary = DemoSummary {
        rows,
        grants_ok,
        grants_failed,
        grant_check_failures: check_failures,
        tenants,
        outcomes,
        pool: pool_stats,
        evicted_by_grants,
        metrics_text,
        tsc_hz: hz,
        passed: false,
    };
    summary.passed = summary.all_checks_passed();
    summary
}

/// What the grants VM reported, collected the same way in both demo modes.
#[derive(Default)]
struct GrantTally {
    rows: Vec<SizeRow>,
    ok: u64,
    failed: u64,
    check_failures: u64,
}

impl GrantTally {
    /// Takes one event of the grants VM (timings in TSC cycles at `hz`); true once it is done.
    fn apply(&mut self, cfg: &DemoConfig, hz: f64, ev: &MailboxEvent) -> bool {
        match ev.tag {
            EV_GRANT_SIZE => {
                if let Some(r) = self.rows.last() {
                    print_size(cfg, r);
                }
                self.rows.push(SizeRow {
                    pages: ev.value,
                    grants: Vec::new(),
                    memset: Vec::new(),
                });
            }
            EV_GRANT_CYCLES => {
                self.ok += 1;
                if let Some(r) = self.rows.last_mut() {
                    r.grants.push(Duration::from_secs_f64(ev.value as f64 / hz));
                }
            }
            EV_GRANT_FAILED => {
                self.failed += 1;
                say!(cfg, "  grant refused (error code {:#x})", ev.value);
            }
            EV_GRANT_NONZERO | EV_GRANT_PATTERN_BAD | EV_GRANT_FREE_FAILED => {
                self.check_failures += 1;
                say!(
                    cfg,
                    "  grant check failed: event {} value {}",
                    ev.tag,
                    ev.value
                );
            }
            EV_DONE => return true,
            _ => {}
        }
        false
    }

    /// Prints the last size's row (each earlier one was printed when the next size began).
    fn finish(&self, cfg: &DemoConfig) {
        if let Some(r) = self.rows.last() {
            print_size(cfg, r);
        }
    }
}

fn print_size(cfg: &DemoConfig, r: &SizeRow) {
    if let Some(s) = Summary::of(&r.grants) {
        say!(
            cfg,
            "  {:>6} pages x {:>2}: avg {:>9.1} µs  (min {:.1}, max {:.1})",
            r.pages,
            s.n,
            s.avg_us,
            s.min_us,
            s.max_us
        );
    }
}

fn print_report(cfg: &DemoConfig, s: &DemoSummary, vms: &[Running]) {
    println!("\nGrant latency per size, as the guest saw it (ALLOC_CONTIG request to response, rdtsc at {:.2} GHz),", s.tsc_hz / 1e9);
    println!("beside a host memset of the same bytes measured in this run (the zeroing limit). The paper's");
    println!(
        "numbers are from an ARMv7 board in 2015: orientation, not a like-for-like comparison.\n"
    );
    print!("{}", report::render_table(&s.rows));
    println!();
    for (i, t) in s.tenants.iter().enumerate() {
        println!("tenant{i}: {} rounds; cleancache {} puts, {} hits, {} misses; frontswap {} stores ({} rejected), {} loads, {} checked at the end",
            t.rounds, t.cc_puts, t.cc_hits, t.cc_misses, t.fs_stores, t.fs_rejects, t.fs_loads, t.fs_verified);
    }
    println!("pool: {} grants, {} second-class pages evicted by grants, {} pages zeroed, {} frontswap pages written back or put back",
        s.pool.grants, s.evicted_by_grants, s.pool.zeroed_pages, s.pool.written_back_pages + s.pool.put_back_pages);
    let samples = s
        .metrics_text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    println!("metrics: {samples} samples scraped from /metrics at the end");
    println!("\nchecks:");
    let lost: u64 = s.tenants.iter().map(|t| t.fs_lost + t.fs_corrupt).sum();
    let stale: u64 = s.tenants.iter().map(|t| t.cc_stale).sum();
    let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
    println!(
        "  [{}] every grant succeeded ({} of {})",
        mark(s.grants_failed == 0),
        s.grants_ok,
        s.grants_ok + s.grants_failed
    );
    println!(
        "  [{}] every granted page read as zero and kept the guest's pattern",
        mark(s.grant_check_failures == 0)
    );
    println!(
        "  [{}] no accepted frontswap page lost or corrupted ({lost} bad)",
        mark(lost == 0)
    );
    println!(
        "  [{}] no cleancache hit returned stale bytes ({stale} stale)",
        mark(stale == 0)
    );
    for (name, o) in &s.outcomes {
        let serial = vms
            .iter()
            .find(|v| &v.name == name)
            .map(|v| {
                String::from_utf8_lossy(&v.serial.contents())
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        let ok = *o == VmOutcome::Exited { code: 0 };
        if ok {
            println!("  [ok  ] {name} exited 0");
        } else {
            println!("  [FAIL] {name}: {o:?}; console: {serial}");
        }
    }
    let _ = cfg;
}

/// Where `vmm demo --daemon` finds its executables.
#[derive(Debug, Clone)]
pub struct DaemonBinaries {
    /// `gcma-hostd`.
    pub hostd: PathBuf,
    /// `vmm` (this executable), run as `vmm agent` once per microVM.
    pub vmm: PathBuf,
}

/// The pool as the daemon's `/metrics` shows it (the fields the report uses).
fn pool_stats_from_metrics(text: &str) -> PoolStats {
    use vmm::multiproc::metric;
    let m = |name: &str, labels: &[(&str, &str)]| metric(text, name, labels) as u64;
    let state = |s: &str| m("gcma_pool_pages", &[("state", s)]);
    PoolStats {
        nr_pages: m("gcma_pool_capacity_pages", &[]),
        free_zero_pages: state("free_zero"),
        free_dirty_pages: state("free_dirty"),
        cleancache_pages: state("cleancache"),
        frontswap_pages: state("frontswap"),
        granted_pages: state("granted"),
        clients: m("gcma_clients", &[]),
        live_grants: m("gcma_live_grants", &[]),
        grants: m("gcma_grants_total", &[]),
        zeroed_pages: m("gcma_zeroed_pages_total", &[]),
        written_back_pages: m("gcma_written_back_pages_total", &[]),
        put_back_pages: m("gcma_put_back_pages_total", &[]),
        evictions_grant: [
            m(
                "gcma_evicted_pages_total",
                &[("reason", "grant"), ("kind", "cleancache")],
            ),
            m(
                "gcma_evicted_pages_total",
                &[("reason", "grant"), ("kind", "frontswap")],
            ),
        ],
        ..PoolStats::default()
    }
}

/// `vmm demo --daemon`: the same run as [`run_demo`], but the pool is `gcma-hostd`'s and every
/// microVM is a `vmm agent` process of its own attached to it over vhost-user. Prints the same
/// report and checks, plus an excerpt of the daemon's `/metrics`.
pub fn run_demo_daemon(cfg: &DemoConfig, bins: &DaemonBinaries) -> Result<DemoSummary, DemoError> {
    use vmm::multiproc::{AgentLine, AgentProcess, Hostd};
    validate(cfg)?;
    let io = |what: &str, e: std::io::Error| DemoError::Config(format!("{what}: {e}"));
    let dir = std::env::temp_dir().join(format!("vmm-demo-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| io("creating the run directory", e))?;
    let policy = match cfg.frontswap_policy {
        FrontswapPolicy::WriteThrough => "write-through",
        FrontswapPolicy::WriteBack => "write-back",
        FrontswapPolicy::PutBack => "put-back",
    };
    let mut extra = vec![
        "--frontswap-policy".to_string(),
        policy.to_string(),
        "--zeroer-cpu-pct".to_string(),
        cfg.zeroer_cpu_pct.to_string(),
        "--backing-dir".to_string(),
        dir.display().to_string(),
    ];
    extra.push("--metrics-addr".into());
    extra.push(cfg.metrics_addr.to_string());
    let mut hostd = match Hostd::start(&bins.hostd, &dir, cfg.pool_mib, &extra) {
        Ok(h) => h,
        Err(e) if cfg.metrics_addr.port() != 0 => {
            log::warn!("{e}; starting gcma-hostd with /metrics on a free port instead");
            let mut any = cfg.metrics_addr;
            any.set_port(0);
            let n = extra.len();
            extra[n - 1] = any.to_string();
            Hostd::start(&bins.hostd, &dir, cfg.pool_mib, &extra)
                .map_err(|e| io("starting gcma-hostd", e))?
        }
        Err(e) => return Err(io("starting gcma-hostd", e)),
    };
    say!(
        cfg,
        "gcma demo (daemon): gcma-hostd (pid {}) serves a {} MiB pool at {}; {} tenant + 1 grant vmm processes, {} MiB RAM each",
        hostd.pid(),
        cfg.pool_mib,
        hostd.socket.display(),
        cfg.tenants,
        cfg.vm_mem_mib
    );
    say!(
        cfg,
        "Every microVM is a `vmm agent` process of its own, attached to the daemon over vhost-user;"
    );
    say!(
        cfg,
        "the daemon runs the device model and the pool, each VMM maps its grants into its guest."
    );
    let hz = vmm::payloads::tsc_hz();
    let (tx, rx) = bounded::<MailboxEvent>(mailbox::EVENT_QUEUE_LEN * (cfg.tenants + 1));
    let spawn = |name: &str, index: usize, args: Vec<String>| -> Result<AgentProcess, DemoError> {
        let mut all = vec![
            "--vm".to_string(),
            index.to_string(),
            "--gcma-socket".into(),
            hostd.socket.display().to_string(),
            "--mem-mib".into(),
            cfg.vm_mem_mib.to_string(),
        ];
        all.extend(args);
        let p = AgentProcess::spawn(&bins.vmm, &all, &dir.join(format!("{name}.log")))
            .map_err(|e| io("starting a vmm agent process", e))?;
        let lines = p.lines.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in lines {
                if let AgentLine::Event { tag, value } = l {
                    let _ = tx.send(MailboxEvent {
                        vm: index,
                        tag,
                        value,
                    });
                }
            }
        });
        Ok(p)
    };
    let mut agents: Vec<(String, AgentProcess)> = Vec::new();
    for i in 0..cfg.tenants {
        let name = format!("tenant{i}");
        let p = spawn(
            &name,
            i,
            vec![
                "--role".into(),
                "tenant".into(),
                "--cc-pages".into(),
                cfg.cc_pages.to_string(),
                "--fs-pages".into(),
                cfg.fs_pages.to_string(),
            ],
        )?;
        agents.push((name, p));
    }
    let mut tenants = vec![TenantSummary::default(); cfg.tenants];
    let mut done = vec![false; cfg.tenants + 1];
    let pool_now = || pool_stats_from_metrics(&hostd.metrics().unwrap_or_default());
    warm_up(cfg, &rx, &mut tenants, &mut done, &pool_now);
    let gi = cfg.tenants;
    let sizes: Vec<String> = cfg.sizes.iter().map(u64::to_string).collect();
    let g = spawn(
        "grants",
        gi,
        vec![
            "--role".into(),
            "grants".into(),
            "--reps".into(),
            cfg.reps.to_string(),
            "--sizes".into(),
            sizes.join(","),
        ],
    )?;
    agents.push(("grants".into(), g));
    drop(tx);
    say!(cfg, "\n[phase 2] guest asks for contiguous grants, {} of each size, while tenants keep their traffic going", cfg.reps);
    let tally = grant_phase(
        cfg,
        hz,
        &rx,
        GrantsVm {
            index: gi,
            overdue: &|| {},
            exited: &|| false,
        },
        &mut tenants,
        &mut done,
        &pool_now,
    );
    let outcome_of = |p: &mut AgentProcess, timeout: Duration| -> VmOutcome {
        match p.wait(timeout) {
            Some(s) => match s.code() {
                Some(c) if c != 125 => VmOutcome::Exited { code: c as u32 },
                _ => VmOutcome::Shutdown { rip: 0 },
            },
            None => VmOutcome::Stopped { rip: 0 },
        }
    };
    let grants_outcome = outcome_of(&mut agents[gi].1, Duration::from_secs(60));
    say!(
        cfg,
        "\n[phase 3] tenants stop and check every frontswap page they still hold"
    );
    for (_, a) in agents.iter_mut().take(cfg.tenants) {
        a.stop();
    }
    let stop_deadline = Instant::now() + Duration::from_secs(600);
    while done.iter().take(cfg.tenants).any(|d| !*d) && Instant::now() < stop_deadline {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(ev) if ev.vm < cfg.tenants => apply_tenant(&mut tenants, &mut done, ev),
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let mut outcomes = Vec::new();
    for (name, a) in agents.iter_mut().take(cfg.tenants) {
        outcomes.push((name.clone(), outcome_of(a, Duration::from_secs(60))));
    }
    outcomes.push(("grants".to_string(), grants_outcome));
    drain(&rx, &mut tenants, &mut done);
    let metrics_text = hostd.metrics().unwrap_or_default();
    let summary = summarize(
        cfg,
        hz,
        tally,
        tenants,
        outcomes,
        metrics_text,
        pool_stats_from_metrics,
    );
    if cfg.progress {
        print_report(cfg, &summary, &[]);
        for (name, o) in &summary.outcomes {
            if *o != (VmOutcome::Exited { code: 0 }) {
                if let Some((_, a)) = agents.iter().find(|(n, _)| n == name) {
                    println!("  {name} log ({}):\n{}", a.log.display(), a.log_text());
                }
            }
        }
        println!("\ngcma-hostd /metrics (excerpt):");
        for l in summary.metrics_text.lines().filter(|l| {
            [
                "gcma_pool_pages{",
                "gcma_clients ",
                "gcma_live_grants ",
                "gcma_grants_total ",
                "gcma_evicted_pages_total{reason=\"grant\"",
                "gcma_frontswap_stores_total",
                "gcma_cleancache_puts_total",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        }) {
            println!("  {l}");
        }
    }
    write_outputs(
        cfg,
        &summary,
        "Contiguous grant latency seen by a guest (virtio-gcma over vhost-user)",
    )?;
    if !cfg.metrics_linger.is_zero() {
        eprintln!(
            "vmm: demo finished; gcma-hostd serves its /metrics for {} more seconds",
            cfg.metrics_linger.as_secs()
        );
        std::thread::sleep(cfg.metrics_linger);
    }
    hostd.stop(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(summary)
}
