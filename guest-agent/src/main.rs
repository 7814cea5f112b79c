//! `guest-agent`: a userspace driver for the virtio-gcma device, for Linux guests (run as root).
//!
//! It finds the device (`--device BASE[@SIZE]`, or a scan of the kernel command line, sysfs and
//! `/proc/iomem`), maps its registers through `/dev/mem`, takes DMA buffers from locked memory
//! (hugetlb when available) translated with `/proc/self/pagemap`, and runs the shared driver core
//! on them.
//!
//! Grants live as long as the process that made them: starting a driver resets the device, and
//! a reset releases everything the guest held. So `guest-agent serve` owns the device and answers
//! `alloc`, `free` and `stats` from other invocations on a Unix socket; without a server, `alloc`
//! frees its grant when it exits (or holds it, and serves the socket, with `--hold` until
//! SIGINT/SIGTERM).

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("guest-agent: error: the userspace agent runs only in Linux guests");
    std::process::ExitCode::from(2)
}

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(target_os = "linux")]
mod cli {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::sync::atomic::{AtomicBool, Ordering};

    use clap::{Parser, Subcommand, ValueEnum};
    use log::{info, warn};

    use guest_agent::linux::agent::bench;
    use guest_agent::linux::control::{stat_name, Command, Reply, DEFAULT_SOCKET};
    use guest_agent::linux::device::{
        candidates, open_agent, release_gcma, FindOptions, LinuxAgent,
    };
    use guest_agent::linux::discovery::{parse_c_int, parse_device_arg, Candidate};
    use guest_agent::linux::dma::HugePages;
    use guest_agent::linux::regs::{probe, DevMemWindow};
    use guest_agent::linux::serve::{request, serve, ClientError};

    /// Userspace virtio-gcma driver for Linux guests (run as root).
    #[derive(Parser, Debug)]
    #[command(name = "guest-agent", version, about, long_about = None)]
    struct Cli {
        /// Register window of the gcma device, BASE[@SIZE] (or the kernel's SIZE@BASE); skips
        /// the scan.
        #[arg(
            long,
            global = true,
            value_name = "BASE[@SIZE]",
            visible_alias = "mmio"
        )]
        device: Option<String>,
        /// Use of hugetlb pages for DMA memory.
        #[arg(long, global = true, value_enum, default_value_t = Huge::Auto)]
        hugetlb: Huge,
        /// Unbind the kernel's virtio-mmio driver from the gcma device before mapping it (also
        /// for `scan`). Needed on kernels with CONFIG_IO_STRICT_DEVMEM (Debian's), where
        /// /dev/mem refuses a window a driver claimed: virtio_mmio claims the gcma device's
        /// window although no driver knows its ID. Only the gcma device is unbound.
        #[arg(long, global = true)]
        unbind: bool,
        /// Control socket of `guest-agent serve`.
        #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Root of /proc and /sys for the scan.
        #[arg(long, global = true, default_value = "/", hide = true)]
        root: PathBuf,
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
    enum Huge {
        /// Hugetlb pages when available, else 4 KiB pages (logged).
        Auto,
        /// Only hugetlb pages.
        Require,
        /// Only 4 KiB pages.
        Never,
    }

    #[derive(Subcommand, Debug)]
    enum Cmd {
        /// List the virtio-mmio devices found and what each one is.
        Scan,
        /// Own the device and answer alloc/free/stats on the control socket until SIGINT/SIGTERM.
        Serve,
        /// Ask for a contiguous grant; prints its gpa and length. Without a server the grant is
        /// released when this process exits, unless --hold.
        Alloc {
            /// Pages (4 KiB) wanted.
            #[arg(long)]
            pages: u64,
            /// Alignment in pages (a power of two).
            #[arg(long, default_value_t = 1)]
            align: u64,
            /// Keep the grant (and serve the control socket) until SIGINT/SIGTERM.
            #[arg(long)]
            hold: bool,
        },
        /// Return a grant held by a running server (`serve` or `alloc --hold`).
        Free {
            /// Guest-physical address of the grant (decimal or 0x hex).
            #[arg(long, value_parser = parse_num)]
            gpa: u64,
        },
        /// Print the device's counters.
        Stats,
        /// Time cleancache put/get and frontswap store/load round trips (checks every byte).
        Bench {
            /// Pages per phase.
            #[arg(long, default_value_t = 1024)]
            pages: u64,
        },
    }

    fn parse_num(s: &str) -> Result<u64, String> {
        parse_c_int(s).ok_or_else(|| format!("{s:?} is not a number (decimal or 0x hex)"))
    }

    static STOP: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_sig: libc::c_int) {
        STOP.store(true, Ordering::SeqCst);
    }

    fn install_signal_handlers() {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which
            // is async-signal-safe. No SA_RESTART, so blocking calls see EINTR.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    }

    /// The error every failure ends in: one line on stderr, exit status 1.
    type Failure = String;

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
            .format_timestamp(None)
            .init();
        match run(cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("guest-agent: error: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn run(cli: Cli) -> Result<(), Failure> {
        let device = cli
            .device
            .as_deref()
            .map(parse_device_arg)
            .transpose()
            .map_err(|e| e.to_string())?;
        let find = FindOptions {
            device,
            root: cli.root.clone(),
            unbind: cli.unbind,
        };
        let huge = match cli.hugetlb {
            Huge::Auto => HugePages::Auto,
            Huge::Require => HugePages::Require,
            Huge::Never => HugePages::Never,
        };
        match cli.cmd {
            Cmd::Scan => cmd_scan(&find),
            Cmd::Serve => {
                let (_lock, mut agent) = open(&find, huge, &cli.socket)?;
                serve_until_stopped(&mut agent, &cli.socket)
            }
            Cmd::Alloc { pages, align, hold } => {
                let cmd = Command::Alloc {
                    nr_pages: pages,
                    align_pages: align,
                };
                if !(pages >= 1 && align.is_power_of_two()) {
                    return Err("--pages must be ≥ 1 and --align a power of two".into());
                }
                if let Some(r) = via_server(&cli.socket, cmd)? {
                    println!("{}", reply_text(&r));
                    return Ok(());
                }
                let (_lock, mut agent) = open(&find, huge, &cli.socket)?;
                let g = agent
                    .driver()
                    .alloc_contig(pages, align)
                    .map_err(|e| e.to_string())?;
                println!("gpa={:#x} pages={}", g.gpa, g.nr_pages);
                if hold {
                    info!("holding the grant until SIGINT/SIGTERM; `guest-agent free/alloc/stats` reach this process");
                    serve_until_stopped(&mut agent, &cli.socket)?;
                    match agent.driver().free_contig(g) {
                        Ok(n) => info!("freed the grant at {:#x} ({n} pages)", g.gpa),
                        Err(e) => info!("grant at {:#x} not freed here: {e}", g.gpa),
                    }
                } else {
                    info!(
                        "the grant is released when guest-agent exits (the device is reset); \
                         use --hold or `guest-agent serve` to keep it"
                    );
                }
                Ok(())
            }
            Cmd::Free { gpa } => match via_server(&cli.socket, Command::Free { gpa })? {
                Some(r) => {
                    println!("{}", reply_text(&r));
                    Ok(())
                }
                None => Err(format!(
                    "no guest-agent server at {}: a grant lives only as long as the agent \
                     process that made it (starting a driver resets the device), so there is \
                     nothing to free; use `guest-agent serve` or `alloc --hold`",
                    cli.socket.display()
                )),
            },
            Cmd::Stats => {
                let r = match via_server(&cli.socket, Command::Stats)? {
                    Some(r) => r,
                    None => {
                        let (_lock, mut agent) = open(&find, huge, &cli.socket)?;
                        agent.execute(Command::Stats).map_err(|e| e.to_string())?
                    }
                };
                if let Reply::Stats(v) = r {
                    for (tag, value) in v {
                        println!("{:<24} {value}", stat_name(tag));
                    }
                }
                Ok(())
            }
            Cmd::Bench { pages } => {
                if via_server(&cli.socket, Command::Stats)?.is_some() {
                    return Err(format!(
                        "a guest-agent server at {} owns the device; stop it before `bench`",
                        cli.socket.display()
                    ));
                }
                let (_lock, mut agent) = open(&find, huge, &cli.socket)?;
                let r = bench(agent.driver(), pages).map_err(|e| e.to_string())?;
                print!("{}", r.table());
                if r.corrupted != 0 {
                    return Err(format!(
                        "{} pages came back with different bytes",
                        r.corrupted
                    ));
                }
                Ok(())
            }
        }
    }

    fn reply_text(r: &Reply) -> String {
        match r {
            Reply::Granted { gpa, nr_pages } => format!("gpa={gpa:#x} pages={nr_pages}"),
            Reply::Freed { nr_pages } => format!("freed pages={nr_pages}"),
            Reply::Stats(_) => r.to_string(),
        }
    }

    /// Sends `cmd` to a running server; `None` when no server listens.
    fn via_server(socket: &Path, cmd: Command) -> Result<Option<Reply>, Failure> {
        match request(socket, cmd) {
            Ok(r) => Ok(Some(r)),
            Err(ClientError::Connect { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// An exclusive lock next to the socket: one agent drives the device at a time.
    struct Lock {
        _file: std::fs::File,
    }

    fn lock(socket: &Path) -> Result<Lock, Failure> {
        let mut p = socket.as_os_str().to_owned();
        p.push(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| format!("cannot open lock file {}: {e}", Path::new(&p).display()))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(format!(
                "another guest-agent process drives the device (lock {} is held)",
                Path::new(&p).display()
            ));
        }
        Ok(Lock { _file: f })
    }

    fn open(
        find: &FindOptions,
        huge: HugePages,
        socket: &Path,
    ) -> Result<(Lock, LinuxAgent), Failure> {
        let l = lock(socket)?;
        let agent = open_agent(find, huge).map_err(|e| e.to_string())?;
        // Callers bind `(_lock, agent)`: the agent (declared later) is dropped first, so the
        // device is reset before another agent can take the lock.
        Ok((l, agent))
    }

    /// Serves the control socket until SIGINT/SIGTERM. Only here are those signals caught (the
    /// caller then frees and resets); elsewhere they end the process at once, and the next
    /// agent's setup reset releases what it held.
    fn serve_until_stopped(agent: &mut LinuxAgent, socket: &Path) -> Result<(), Failure> {
        install_signal_handlers();
        // The lock is held, so a socket file left behind is stale.
        if socket.exists() {
            let _ = std::fs::remove_file(socket);
        }
        let listener = UnixListener::bind(socket)
            .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
        // Only root may drive the device through the socket.
        std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| format!("cannot restrict {}: {e}", socket.display()))?;
        info!("serving on {}", socket.display());
        let r = serve(agent, &listener, &STOP);
        let _ = std::fs::remove_file(socket);
        r.map_err(|e| format!("control socket {}: {e}", socket.display()))
    }

    fn cmd_scan(find: &FindOptions) -> Result<(), Failure> {
        let mut found = candidates(find);
        // With --unbind the gcma device is released from the kernel's virtio-mmio driver
        // first, so that /dev/mem maps it under CONFIG_IO_STRICT_DEVMEM.
        release_gcma(find, &mut found).map_err(|e| e.to_string())?;
        let list: Vec<Candidate> = found.candidates.clone();
        if list.is_empty() {
            return Err(format!(
                "no virtio-mmio devices found in /proc/cmdline, /proc/iomem or \
                 /sys/bus/platform/devices{}",
                if found.notes.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", found.notes.join("; "))
                }
            ));
        }
        for c in &list {
            let what = match DevMemWindow::open(c.base, c.len_bytes) {
                Ok(mut w) => {
                    let (id, r) = probe(&mut w);
                    match r {
                        Ok(()) => format!("{id}  <- virtio-gcma"),
                        Err(e) => format!("{id}: {e}"),
                    }
                }
                Err(e) => format!("not mapped: {e}"),
            };
            let bound = match (&c.bound_driver, c.kernel_device_id) {
                (Some(d), Some(id)) => format!(" [bound to {d}, kernel says device id {id}]"),
                (Some(d), None) => format!(" [bound to {d}]"),
                _ => String::new(),
            };
            println!("{c}{bound}: {what}");
        }
        for u in &found.unlocated {
            warn!("virtio-mmio device {u}: address unknown");
        }
        Ok(())
    }
}
