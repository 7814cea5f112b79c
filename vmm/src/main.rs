//! `vmm`: launches KVM microVMs running kernel-less payloads or Linux kernels.

use std::path::PathBuf;
use std::process::ExitCode;

use balloon::virtio_balloon::BalloonConfig;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vmm::api::control::{control_handler, metrics_handler};
use vmm::api::http::{HttpServer, Limits, Listen};
use vmm::api::metrics::VmmMetrics;
use vmm::api::runtime::VmState;
use vmm::devices::vhost_gcma::GcmaKick;
use vmm::kvm::linux::LinuxBoot;
use vmm::launch::{BuiltVm, VmBuilder};
use vmm::payloads::BuiltinPayload;
use vmm::{GuestKind, Hypervisor, SerialOutput, VmConfig, VmOutcome};

/// The kernel command line when `--cmdline` is not given: the console on COM1, early messages
/// there too, no PCI probing (there is no PCI bus), and a panic ends the VM at once.
const DEFAULT_CMDLINE: &str = "console=ttyS0 earlyprintk=serial pci=off panic=-1";

mod agent;
mod demo;
mod limit_args;

/// A rust-vmm VMM for microVMs.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one microVM with a kernel-less payload (--payload) or a Linux kernel (--kernel) until
    /// it exits, powers off or faults.
    ///
    /// The VMM's exit status is the payload's exit code (truncated to 8 bits), or 0 when a Linux
    /// guest powers off; a guest fault prints the faulting RIP, and an instruction KVM cannot
    /// emulate prints its RIP and bytes, both with exit status 125.
    Run(RunArgs),
    /// The end-to-end demo: microVMs share one GCMA pool; tenant guests fill it with cleancache
    /// and frontswap pages while a guest asks for contiguous grants of growing size. Prints
    /// progress, serves /metrics meanwhile, ends with a latency table and writes an SVG chart.
    ///
    /// Exit status 0 when every check passed (every grant succeeded and read as zero, no
    /// frontswap page lost, every guest exited 0), 1 otherwise.
    Demo(DemoArgs),
    /// Run one microVM with the demo's agent payload (a cleancache/frontswap tenant or a grant
    /// requester) and print its mailbox events as `event <tag> <value>` lines, then `outcome
    /// ...`. A `stop` line on standard input (or its end) asks a tenant to finish and check every
    /// frontswap page it holds. This is how `vmm demo --daemon` and the multi-process tests run
    /// one VMM process per guest against gcma-hostd. Exit status: the payload's exit code (0: all
    /// its checks passed), 125 for a guest fault.
    Agent(agent::AgentArgs),
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Pool size in MiB (held and prefaulted for the whole run).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(16..=16384))]
    pool_mib: u64,
    /// Tenant microVMs keeping cleancache and frontswap traffic going.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=8))]
    tenants: u64,
    /// Grant sizes in 4 KiB pages, comma-separated (default: the GCMA paper's sizes).
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 512, 1024, 2048, 4096, 8192, 16384, 32000])]
    sizes: Vec<u64>,
    /// Grants per size.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1000))]
    reps: u64,
    /// Frontswap policy of the pool.
    #[arg(long, value_enum, default_value_t = Policy::WriteThrough)]
    frontswap_policy: Policy,
    /// Address to serve Prometheus metrics on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_addr: std::net::SocketAddr,
    /// Where to write the SVG latency chart.
    #[arg(long, default_value = "gcma-demo.svg")]
    svg: PathBuf,
    /// RAM of every microVM in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(16..=3328))]
    vm_mem_mib: u64,
    /// Cleancache pages each tenant puts per round.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    cc_pages: u64,
    /// Frontswap offsets each tenant stores to.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    fs_pages: u64,
    /// Tenant rounds before the grants start (so that the pool is full of second-class pages).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=1000))]
    warmup_rounds: u64,
    /// Also write the measurements and check results as JSON to this file (before lingering).
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// Keep serving /metrics for this many seconds after the run, so that a scraper gets the
    /// final values (a line on standard error says when the run is over).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=86400))]
    metrics_linger_s: u64,
    /// Print only the final report, no progress lines and no table.
    #[arg(long)]
    quiet: bool,
    /// Use the host pool service instead of an in-process pool: start gcma-hostd (found next to
    /// this executable or on PATH; see --hostd) and run every microVM as a `vmm agent` process of
    /// its own attached to it over vhost-user. Same report and checks, plus the daemon's /metrics.
    #[arg(long)]
    daemon: bool,
    /// With --daemon: the gcma-hostd executable.
    #[arg(long, value_name = "PATH", requires = "daemon")]
    hostd: Option<PathBuf>,
    #[command(flatten)]
    limits: limit_args::LimitArgs,
    /// CPU share, in percent of one core, of the pool's background zeroer, which zeroes free
    /// pool pages while the pool is quiet so that grants find them ready (it steps aside
    /// whenever a grant or a tenant wants the pool). 0 turns it off: grants zero what they take.
    #[arg(long, default_value_t = gcma_host::pool::DEFAULT_ZEROER_CPU_PCT, value_name = "PCT",
          value_parser = clap::value_parser!(u32).range(0..=100))]
    zeroer_cpu_pct: u32,
    /// Back the gcma pool and guest RAM with 2 MiB pages: `hugetlb` takes reserved hugetlb
    /// pages (the host needs enough free: /proc/sys/vm/nr_hugepages; sizes must be multiples of
    /// 2 MiB; the pool then carves grants in whole 2 MiB pages and the balloon returns whole
    /// 2 MiB pages), `thp` asks for shmem transparent huge pages
    /// (/sys/kernel/mm/transparent_hugepage/shmem_enabled at advise or always), `off` uses
    /// 4 KiB pages. Grants of 2 MiB or more are placed 2 MiB-aligned either way.
    #[arg(long, value_enum, default_value_t = gcma_host::huge::HugePages::Off, value_name = "KIND")]
    hugepages: gcma_host::huge::HugePages,
    #[command(flatten)]
    seccomp: SeccompArgs,
}

/// Per-thread seccomp filters (see gcma-host/seccomp/src/lib.rs).
#[derive(Debug, clap::Args)]
struct SeccompArgs {
    /// Run without seccomp filters. By default every vCPU, device, HTTP and zeroer thread runs
    /// under an allow-list of the system calls its kind makes; a call outside it ends the VMM
    /// with a message naming the call (exit status 159). For debugging only.
    #[arg(long)]
    no_seccomp: bool,
    /// Test only: the vCPU thread makes a system call its filter does not allow (getpgid)
    /// before entering the guest.
    #[arg(long, hide = true)]
    seccomp_selftest: bool,
}

impl SeccompArgs {
    /// Installs the filters (before any thread is spawned) unless turned off.
    fn install(&self) -> Result<(), CliError> {
        if self.no_seccomp {
            log::warn!("seccomp filters are off (--no-seccomp)");
            return Ok(());
        }
        vmm::seccomp::install("vmm").map_err(CliError::Seccomp)
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Policy {
    /// Every store is also written to a backing file; eviction is free.
    WriteThrough,
    /// Eviction writes the page to the backing file first.
    WriteBack,
    /// Eviction copies the page to host memory outside the pool.
    PutBack,
}

/// Why `vmm` could not do its job: printed as one line with its causes, exit status 1.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("cannot read payload {path}")]
    Payload {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {what} {}", path.display())]
    KernelFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("give --payload or --kernel")]
    NoGuest,
    #[error(transparent)]
    Vmm(#[from] vmm::Error),
    #[error("creating the gcma pool")]
    Pool(#[source] gcma_host::api::PoolError),
    #[error("serving the {what}")]
    Http {
        what: &'static str,
        #[source]
        source: vmm::api::http::HttpError,
    },
    #[error("cannot start the balloon statistics poller")]
    Poller(#[source] std::io::Error),
    #[error("demo")]
    Demo(#[from] demo::DemoError),
    #[error("installing the seccomp filters (--no-seccomp runs without them)")]
    Seccomp(#[source] gcma_seccomp::SeccompError),
    #[error("gcma-hostd not found next to vmm or on PATH: build it (cargo build -p gcma-hostd) or give --hostd")]
    NoHostd,
    #[error("cannot find the vmm executable itself")]
    SelfExe(#[source] std::io::Error),
    #[error("agent")]
    Agent(#[from] agent::AgentError),
}

fn demo(args: DemoArgs) -> Result<ExitCode, CliError> {
    use gcma_host::api::FrontswapPolicy;
    args.seccomp.install()?;
    let cfg = demo::DemoConfig {
        pool_mib: args.pool_mib,
        tenants: args.tenants as usize,
        sizes: args.sizes,
        reps: args.reps,
        frontswap_policy: match args.frontswap_policy {
            Policy::WriteThrough => FrontswapPolicy::WriteThrough,
            Policy::WriteBack => FrontswapPolicy::WriteBack,
            Policy::PutBack => FrontswapPolicy::PutBack,
        },
        metrics_addr: args.metrics_addr,
        svg_path: Some(args.svg),
        vm_mem_mib: args.vm_mem_mib,
        cc_pages: args.cc_pages,
        fs_pages: args.fs_pages,
        warmup_rounds: args.warmup_rounds,
        progress: !args.quiet,
        summary_json: args.summary_json,
        metrics_linger: Duration::from_secs(args.metrics_linger_s),
        limits: args.limits.guest_limits(),
        max_search_nodes: args.limits.gcma_max_search_nodes,
        zeroer_cpu_pct: args.zeroer_cpu_pct,
        huge_pages: args.hugepages,
    };
    let summary = if args.daemon {
        let hostd = args
            .hostd
            .or_else(|| vmm::multiproc::find_binary("gcma-hostd"))
            .ok_or(CliError::NoHostd)?;
        let vmm = std::env::current_exe().map_err(CliError::SelfExe)?;
        demo::run_demo_daemon(&cfg, &demo::DaemonBinaries { hostd, vmm })?
    } else {
        demo::run_demo(&cfg)?
    };
    Ok(if summary.all_checks_passed() {
        ExitCode::SUCCESS
    } else {
        eprintln!("vmm: demo finished with failed checks (see above)");
        ExitCode::from(1)
    })
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("guest").required(true).args(["payload", "kernel"])))]
struct RunArgs {
    /// Payload to run: a built-in name (hello, exit, crash, balloon, fill, spin, gcma, agent) or the
    /// path of a static x86-64 ELF linked at 0x400000 (see vmm/payloads for how to build one).
    #[arg(long)]
    payload: Option<String>,
    /// Linux kernel to boot instead of a payload: a bzImage (vmlinuz) or an uncompressed ELF
    /// vmlinux, entered through the 64-bit boot protocol. The guest gets ACPI tables describing
    /// its virtio-mmio devices, COM1 at port 0x3f8 (IRQ 4) for console=ttyS0, and KVM's
    /// in-kernel PICs, IOAPIC and PIT. On a kvm-pvm host the VMM hides CPUID CX16 and appends
    /// noxsave (logged).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initramfs for --kernel, loaded at the top of guest RAM.
    #[arg(long, value_name = "PATH", conflicts_with = "payload")]
    initrd: Option<PathBuf>,
    /// Kernel command line for --kernel [default: "console=ttyS0 earlyprintk=serial pci=off
    /// panic=-1"].
    #[arg(long, conflicts_with = "payload")]
    cmdline: Option<String>,
    /// Write the ACPI tables given to the --kernel guest to this directory (rsdp.dat, xsdt.dat,
    /// facp.dat, dsdt.dat, apic.dat; `iasl -d *.dat` decompiles them), then boot.
    #[arg(long, value_name = "DIR", conflicts_with = "payload")]
    dump_acpi: Option<PathBuf>,
    /// Number of vCPUs. Kernel-less payloads run on one; more are refused until SMP guests are
    /// supported.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=1))]
    vcpus: u8,
    /// Guest RAM in MiB [default: 64 for a payload, 256 for a kernel].
    #[arg(long, value_parser = clap::value_parser!(u64).range(8..=3328))]
    mem_mib: Option<u64>,
    /// Argument handed to the payload in `rsi` (the `exit` payload exits with it).
    #[arg(long, default_value_t = 0)]
    arg: u64,
    /// Write the guest's serial console to this file instead of standard output.
    #[arg(long)]
    serial_file: Option<PathBuf>,
    /// Add a virtio-balloon device with this initial target, in 4 KiB pages (the `balloon`
    /// payload inflates to it).
    #[arg(long)]
    balloon_pages: Option<u32>,
    /// Add a virtio-gcma device backed by an in-process pool of this many MiB (the `gcma`
    /// payload asks it for a contiguous grant; `--arg` is its size in pages).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65536))]
    gcma_pool_mib: Option<u64>,
    /// Add a virtio-gcma device served by gcma-hostd over vhost-user at this Unix socket
    /// (`gcma-hostd --gcma-socket PATH`), instead of an in-process pool: the host's one pool,
    /// shared with other VMM processes. The grant window takes the daemon's size. If the daemon
    /// goes away the VMM logs it and the device enters DEVICE_NEEDS_RESET.
    #[arg(long, value_name = "PATH", conflicts_with = "gcma_pool_mib")]
    gcma_socket: Option<PathBuf>,
    /// With --gcma-pool-mib: CPU share, in percent of one core, of the pool's background zeroer,
    /// which zeroes free pool pages while the pool is quiet so that grants find them ready (it
    /// steps aside whenever a grant or a tenant wants the pool). 0 turns it off: grants zero
    /// what they take.
    #[arg(long, default_value_t = gcma_host::pool::DEFAULT_ZEROER_CPU_PCT, value_name = "PCT",
          value_parser = clap::value_parser!(u32).range(0..=100))]
    zeroer_cpu_pct: u32,
    /// Size of the guest-physical grant window where gcma grants are mapped, in MiB (a multiple
    /// of 2; used with --gcma-pool-mib).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(2..=507 * 1024))]
    grant_window_mib: u64,
    /// Serve the control API on this Unix socket while the VM runs (HTTP/JSON, described by
    /// vmm/api/openapi.yaml: GET /vm, GET /gcma, Firecracker's GET|PUT|PATCH /balloon,
    /// GET|PATCH /balloon/statistics, PUT /actions). A stale socket at the path is replaced;
    /// anything else there is an error.
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics while the VM runs.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Ask the guest for fresh balloon statistics this often, in seconds (0: statistics off, as
    /// Firecracker's stats_polling_interval_s).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=65535))]
    balloon_stats_interval_s: u64,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    limits: limit_args::LimitArgs,
    /// Serve virtio queue notifications through ioeventfds on a device thread instead of on the
    /// vCPU thread at each MMIO exit. Faster when kicks are cheap, slower when each carries much
    /// device work (see examples/notify_bench.rs); needs a spare host core. (The --gcma-socket
    /// device's notifications are set by --gcma-kick.)
    #[arg(long)]
    ioeventfd: bool,
    /// With --gcma-socket: how a guest's queue notification reaches gcma-hostd. `ioeventfd`:
    /// KVM signals the daemon directly, no exit to the VMM; `exit`: the vCPU thread exits and
    /// signals it (slower; see examples/daemon_bench.rs).
    #[arg(long, value_enum, default_value_t = GcmaKick::Ioeventfd, requires = "gcma_socket")]
    gcma_kick: GcmaKick,
    #[command(flatten)]
    seccomp: SeccompArgs,
    /// Back the gcma pool and guest RAM with 2 MiB pages: `hugetlb` takes reserved hugetlb
    /// pages (the host needs enough free: /proc/sys/vm/nr_hugepages; sizes must be multiples of
    /// 2 MiB; the pool then carves grants in whole 2 MiB pages and the balloon returns whole
    /// 2 MiB pages), `thp` asks for shmem transparent huge pages
    /// (/sys/kernel/mm/transparent_hugepage/shmem_enabled at advise or always), `off` uses
    /// 4 KiB pages. Grants of 2 MiB or more are placed 2 MiB-aligned either way.
    #[arg(long, value_enum, default_value_t = gcma_host::huge::HugePages::Off, value_name = "KIND")]
    hugepages: gcma_host::huge::HugePages,
}

/// Limits of the API socket and the metrics endpoint (see gcma-host/http/src/lib.rs).
#[derive(Debug, clap::Args)]
struct HttpArgs {
    /// Permission bits of the API socket, in octal (600: only this user may connect).
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    api_sock_mode: u32,
    /// Largest request head (request line and headers) the API and metrics endpoints accept, in
    /// bytes; a larger one is answered 431.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1024..=1 << 20))]
    http_max_header_bytes: u64,
    /// Largest request body accepted, in bytes; a larger one is answered 413.
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u64).range(0..=16 << 20))]
    http_max_body_bytes: u64,
    /// Milliseconds a client has to send a whole request, counted from when the server starts
    /// waiting for it; a body still incomplete is answered 408, an incomplete head (or an idle
    /// connection) is closed.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    http_request_timeout_ms: u64,
    /// Connections each endpoint serves at once; the next one is answered 503 and closed.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    http_max_connections: u64,
}

impl HttpArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_header_bytes: self.http_max_header_bytes as usize,
            max_body_bytes: self.http_max_body_bytes as usize,
            request_timeout: Duration::from_millis(self.http_request_timeout_ms),
            max_connections: self.http_max_connections as usize,
            ..Limits::default()
        }
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "{s:?} is not a permission mode in octal (000 to 777, e.g. 600)"
        )),
    }
}

fn run(args: RunArgs) -> Result<ExitCode, CliError> {
    let (kind, label, elf) = match (&args.payload, &args.kernel) {
        (Some(payload), _) => {
            let elf: Vec<u8> = match payload.parse::<BuiltinPayload>() {
                Ok(builtin) => builtin.elf().to_vec(),
                Err(_) => std::fs::read(payload).map_err(|source| CliError::Payload {
                    path: payload.clone(),
                    source,
                })?,
            };
            (GuestKind::Payload, payload.clone(), elf)
        }
        (None, Some(kernel)) => {
            // Checked before KVM is opened, as payloads are: a typo is reported as such.
            for (what, path) in [("kernel", Some(kernel)), ("initrd", args.initrd.as_ref())] {
                if let Some(path) = path {
                    std::fs::File::open(path).map_err(|source| CliError::KernelFile {
                        what,
                        path: path.clone(),
                        source,
                    })?;
                }
            }
            (GuestKind::Linux, kernel.display().to_string(), Vec::new())
        }
        (None, None) => return Err(CliError::NoGuest),
    };
    let mem_mib = args.mem_mib.unwrap_or(match kind {
        GuestKind::Payload => 64,
        GuestKind::Linux => 256,
    });
    args.seccomp.install()?;
    let hv = Hypervisor::open()?;
    let config = VmConfig {
        mem_bytes: mem_mib << 20,
        payload_arg: args.arg,
        serial: args
            .serial_file
            .map_or(SerialOutput::Stdout, SerialOutput::File),
        grant_window_bytes: if args.gcma_pool_mib.is_some() {
            args.grant_window_mib << 20
        } else {
            0
        },
        limits: args.limits.guest_limits(),
        kind,
        huge_pages: args.hugepages,
        ..VmConfig::default()
    };
    let mut builder = VmBuilder::new("vm0", config.clone(), label)
        .ioeventfd(args.ioeventfd)
        .gcma_kick(args.gcma_kick);
    if let Some(socket) = &args.gcma_socket {
        builder = builder.gcma_socket(socket);
    }
    // Stopped when the run is over (dropped at the end of this function).
    let mut _zeroer = None;
    let mut _retrier = None;
    if let Some(pool_mib) = args.gcma_pool_mib {
        let pool_pages = pool_mib << 8;
        let pool = gcma_host::pool::Pool::new(gcma_host::pool::PoolConfig {
            // A guest may not park more than a pool's worth of frontswap pages on the host.
            client_frontswap_limit_pages: Some(pool_pages),
            max_search_nodes: args.limits.gcma_max_search_nodes,
            log_limit: args.limits.log_limit(),
            huge_pages: args.hugepages,
            ..gcma_host::pool::PoolConfig::new(pool_pages)
        })
        .map_err(CliError::Pool)?;
        if args.zeroer_cpu_pct > 0 {
            let cfg = gcma_host::pool::ZeroerConfig::new(args.zeroer_cpu_pct);
            _zeroer = Some(gcma_host::pool::Zeroer::start(&pool, cfg).map_err(CliError::Pool)?);
        }
        _retrier = Some(
            gcma_host::pool::WritebackRetrier::start(&pool, gcma_host::pool::DEFAULT_RETRY_PERIOD)
                .map_err(CliError::Pool)?,
        );
        builder = builder.gcma(pool);
    }
    if let Some(target_pages) = args.balloon_pages {
        builder = builder.balloon(BalloonConfig {
            target_pages,
            stats: args.balloon_stats_interval_s > 0,
            ..BalloonConfig::default()
        });
    }
    let BuiltVm {
        mut vm,
        handle,
        balloon,
        events,
        ..
    } = builder.build(&hv)?;
    match &args.kernel {
        Some(kernel) if kind == GuestKind::Linux => {
            let boot = LinuxBoot {
                kernel: kernel.clone(),
                initrd: args.initrd.clone(),
                cmdline: args.cmdline.clone().unwrap_or(DEFAULT_CMDLINE.into()),
            };
            let guest = vm.load_linux(&boot)?;
            if let Some(dir) = &args.dump_acpi {
                guest.acpi.dump(dir)?;
                log::info!("ACPI tables written to {}", dir.display());
            }
        }
        _ => {
            vm.load_payload(&elf)?;
        }
    }
    let limits = args.http.limits();
    let _api = match &args.api_sock {
        Some(path) => {
            let listen = Listen::Unix {
                path: path.clone(),
                mode: args.http.api_sock_mode,
            };
            let s = HttpServer::start("api", &listen, &limits, control_handler(handle.clone()))
                .map_err(|source| CliError::Http {
                    what: "control API",
                    source,
                })?;
            log::info!("control API on {}", path.display());
            Some(s)
        }
        None => None,
    };
    let _metrics = match args.metrics_addr {
        Some(addr) => {
            let mut m = VmmMetrics::new();
            if let Some(pool) = handle.pool() {
                pool.register_metrics(m.registry_mut());
            }
            m.add_vm(handle.clone());
            let m = Arc::new(m);
            let s = HttpServer::start(
                "metrics",
                &Listen::Tcp(addr),
                &limits,
                metrics_handler(Arc::new(move || m.render())),
            )
            .map_err(|source| CliError::Http {
                what: "metrics endpoint",
                source,
            })?;
            eprintln!(
                "vmm: metrics at http://{}/metrics",
                s.local_addr().unwrap_or(addr)
            );
            Some(s)
        }
        None => None,
    };
    let poller_done = Arc::new(AtomicBool::new(false));
    // Started even with statistics off: the API may turn them on before the driver comes up.
    let poller = match &balloon {
        Some(_) => Some(
            handle
                .spawn_stats_poller(
                    Duration::from_secs(args.balloon_stats_interval_s),
                    poller_done.clone(),
                )
                .map_err(CliError::Poller)?,
        ),
        None => None,
    };
    // The guest runs on a thread of its own under the vCPU filter; this thread, which handles
    // no guest input, tears the VM down afterwards.
    let selftest = args.seccomp.seccomp_selftest;
    let outcome = vmm::seccomp::on_vcpu_thread("vcpu0", || {
        if selftest {
            // SAFETY: getpgid has no memory effects.
            unsafe { libc::getpgid(0) };
        }
        vm.run()
    });
    if let Some(events) = events {
        if let Err(e) = events.stop() {
            log::warn!("stopping the device event loop: {e}");
        }
    }
    poller_done.store(true, Ordering::Release);
    if let Some(p) = poller {
        let _ = p.join();
    }
    let outcome = outcome??;
    handle.set_state(VmState::Ended(outcome));
    log::info!("exit counts: {:?}", vm.stats());
    if let Some(slot) = balloon {
        let status = slot
            .transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .device()
            .status();
        log::info!(
            "balloon: target {} pages, actual {}, inflated {}",
            status.target_pages,
            status.actual_pages,
            status.inflated_pages
        );
    }
    if let (VmOutcome::Stopped { .. }, true) = (&outcome, handle.shutdown_requested()) {
        log::info!("stopped by the control API");
        return Ok(ExitCode::SUCCESS);
    }
    Ok(match outcome {
        VmOutcome::Exited { code } if kind == GuestKind::Linux => {
            log::info!("guest powered off");
            ExitCode::from(code as u8)
        }
        VmOutcome::Exited { code } => {
            log::info!("payload exited with code {code}");
            ExitCode::from(code as u8)
        }
        VmOutcome::Shutdown { rip } if kind == GuestKind::Linux => {
            eprintln!("vmm: guest reset or triple fault at rip {rip:#x}");
            ExitCode::from(125)
        }
        VmOutcome::EmulationFailure {
            suberror,
            rip,
            insn,
        } => {
            eprintln!(
                "vmm: emulation failure: KVM cannot execute the guest instruction at rip {rip:#x} \
                 (bytes: {insn}; KVM_EXIT_INTERNAL_ERROR suberror {suberror}); the VM was stopped"
            );
            ExitCode::from(125)
        }
        VmOutcome::Shutdown { rip } => {
            let place = if vm.image().is_some_and(|i| i.code_contains(rip)) {
                "in the payload's code"
            } else {
                "outside the payload's code"
            };
            eprintln!("vmm: guest fault at rip {rip:#x} ({place})");
            ExitCode::from(125)
        }
        VmOutcome::Stopped { rip } => {
            eprintln!("vmm: stopped at rip {rip:#x}");
            ExitCode::from(125)
        }
        VmOutcome::Halted { rip } => {
            eprintln!("vmm: guest halted at rip {rip:#x}");
            ExitCode::from(125)
        }
        VmOutcome::MemoryFault { gpa, rip } => {
            match gpa {
                Some(gpa) => eprintln!(
                    "vmm: guest fault: access to unbacked guest-physical {gpa:#x} (no grant mapped there) at rip {rip:#x}"
                ),
                None => eprintln!("vmm: guest fault: access to unbacked memory at rip {rip:#x}"),
            }
            ExitCode::from(125)
        }
    })
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Demo(args) => demo(args),
        Command::Agent(args) => agent::run(args).map_err(CliError::from),
    };
    result.unwrap_or_else(|e| {
        eprintln!("vmm: {}", gcma_host::api::ErrorChain(&e));
        ExitCode::from(1)
    })
}
