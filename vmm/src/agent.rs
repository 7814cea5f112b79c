//! `vmm agent`: one microVM running the demo's `agent` payload in this process, its mailbox
//! events printed on standard output. It is how `vmm demo --daemon`, the multi-process tests and
//! the benchmarks run one VMM process per guest against `gcma-hostd`.
//!
//! Output, one line each, flushed at once: `event <tag> <value>` for every mailbox event (tags in
//! `vmm::abi`, `EV_*`), then `outcome <exit code or fault>`. A line `stop` on standard input (or
//! its end) sets the mailbox's stop bit: a tenant then checks every frontswap page it holds and
//! reports. The exit status is the payload's exit code, 125 for a guest fault.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use crossbeam::channel::bounded;
use vmm::abi::*;
use vmm::devices::mailbox;
use vmm::devices::vhost_gcma::GcmaKick;
use vmm::launch::{BuiltVm, VmBuilder};
use vmm::payloads::BuiltinPayload;
use vmm::{Hypervisor, SerialOutput, VmConfig, VmOutcome};

/// The agent's role.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Role {
    /// Cleancache and frontswap traffic until stopped, every frontswap page checked at the end.
    Tenant,
    /// Contiguous grants of the listed sizes, each checked zeroed and writable.
    Grants,
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// What the guest does.
    #[arg(long, value_enum)]
    role: Role,
    /// The VM's index (names its cleancache objects and page contents; tenants of one pool need
    /// different ones).
    #[arg(long, default_value_t = 0)]
    vm: u64,
    /// The gcma device: gcma-hostd's vhost-user socket.
    #[arg(long, value_name = "PATH", required_unless_present = "gcma_pool_mib")]
    gcma_socket: Option<PathBuf>,
    /// The gcma device: an in-process pool of this many MiB instead of gcma-hostd.
    #[arg(long, conflicts_with = "gcma_socket",
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    gcma_pool_mib: Option<u64>,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(16..=3328))]
    mem_mib: u64,
    /// Tenant: cleancache pages put per round.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    cc_pages: u64,
    /// Tenant: frontswap offsets in use.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    fs_pages: u64,
    /// Tenant: pause after each round, in milliseconds (the vCPU sleeps in the host; 0: none).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pause_ms: u64,
    /// Grants: grants per size.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    reps: u64,
    /// Grants: sizes in 4 KiB pages, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 512])]
    sizes: Vec<u64>,
    /// Serve the embedded pool's queue notifications through ioeventfds on a device thread
    /// instead of the MMIO exit path.
    #[arg(long)]
    ioeventfd: bool,
    /// With --gcma-socket: how a queue notification reaches gcma-hostd (`ioeventfd`: from KVM
    /// directly; `exit`: through the vCPU thread).
    #[arg(long, value_enum, default_value_t = GcmaKick::Ioeventfd, requires = "gcma_socket")]
    gcma_kick: GcmaKick,
    /// Run without seccomp filters (as `vmm run --no-seccomp`; for debugging only).
    #[arg(long)]
    no_seccomp: bool,
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Vmm(#[from] vmm::Error),
    #[error("creating the in-process pool")]
    Pool(#[source] gcma_host::api::PoolError),
    #[error("grant sizes must be non-empty and non-zero")]
    Sizes,
    #[error("the vCPU thread panicked")]
    Panicked,
    #[error("installing the seccomp filters (--no-seccomp runs without them)")]
    Seccomp(#[source] gcma_seccomp::SeccompError),
}

pub fn run(args: AgentArgs) -> Result<ExitCode, AgentError> {
    if args.sizes.is_empty() || args.sizes.contains(&0) {
        return Err(AgentError::Sizes);
    }
    // Before any thread starts: the vCPU, device, zeroer and vhost-user frontend threads enter
    // their filters as `vmm run`'s do.
    if args.no_seccomp {
        log::warn!("seccomp filters are off (--no-seccomp)");
    } else {
        vmm::seccomp::install("vmm agent").map_err(AgentError::Seccomp)?;
    }
    let hv = Hypervisor::open()?;
    let max_pages = args.sizes.iter().copied().max().unwrap_or(1);
    let config = VmConfig {
        mem_bytes: args.mem_mib << 20,
        serial: SerialOutput::Stdout,
        // Embedded: room for the largest grant (the daemon's window sets its own size).
        grant_window_bytes: (max_pages * 4096).div_ceil(2 << 20) * (2 << 20) + (2 << 20),
        ..VmConfig::default()
    };
    let name = format!("agent{}", args.vm);
    let mut builder = VmBuilder::new(&name, config, BuiltinPayload::Agent.name())
        .ioeventfd(args.ioeventfd)
        .gcma_kick(args.gcma_kick);
    let mut _zeroer = None;
    if let Some(path) = &args.gcma_socket {
        builder = builder.gcma_socket(path);
    } else if let Some(mib) = args.gcma_pool_mib {
        let pages = mib << 8;
        let pool = gcma_host::pool::Pool::new(gcma_host::pool::PoolConfig {
            client_frontswap_limit_pages: Some(pages),
            ..gcma_host::pool::PoolConfig::new(pages)
        })
        .map_err(AgentError::Pool)?;
        _zeroer = Some(
            gcma_host::pool::Zeroer::start(
                &pool,
                gcma_host::pool::ZeroerConfig::new(gcma_host::pool::DEFAULT_ZEROER_CPU_PCT),
            )
            .map_err(AgentError::Pool)?,
        );
        builder = builder.gcma(pool);
    }
    let BuiltVm { mut vm, events, .. } = builder.build(&hv)?;
    let params = match args.role {
        Role::Tenant => vec![
            DEMO_ROLE_TENANT,
            args.vm,
            args.cc_pages,
            args.fs_pages,
            args.pause_ms * 1000,
        ],
        Role::Grants => {
            let mut p = vec![
                DEMO_ROLE_GRANTS,
                args.vm,
                args.reps,
                args.sizes.len() as u64,
            ];
            p.extend(&args.sizes);
            p
        }
    };
    let (tx, rx) = bounded(mailbox::EVENT_QUEUE_LEN);
    let control = mailbox::attach(&mut vm, 0, params, tx)?;
    vm.load_payload(BuiltinPayload::Agent.elf())?;
    // Standard input: `stop` (or its end) asks the guest to finish.
    let stdin_control = control.clone();
    std::thread::Builder::new()
        .name("agent-stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(l) if l.trim() == "stop" => break,
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
            stdin_control.store(MAILBOX_CONTROL_STOP, Ordering::Release);
        })
        .map_err(|source| vmm::Error::Io {
            op: "starting the standard-input thread",
            source,
        })?;
    let printer = std::thread::Builder::new()
        .name("agent-events".into())
        .spawn(move || {
            let out = std::io::stdout();
            for ev in rx {
                let mut o = out.lock();
                let _ = writeln!(o, "event {} {}", ev.tag, ev.value);
                let _ = o.flush();
            }
        })
        .map_err(|source| vmm::Error::Io {
            op: "starting the event printer",
            source,
        })?;
    let vcpu = std::thread::Builder::new()
        .name(format!("vcpu-{name}"))
        .spawn(move || {
            gcma_seccomp::enter_or_exit(gcma_seccomp::ThreadKind::Vcpu);
            let r = vm.run();
            drop(vm);
            r
        })
        .map_err(|source| vmm::Error::Io {
            op: "starting the vCPU thread",
            source,
        })?;
    let outcome = vcpu.join().map_err(|_| AgentError::Panicked)?;
    if let Some(events) = events {
        if let Err(e) = events.stop() {
            log::warn!("stopping the device event loop: {e}");
        }
    }
    // The mailbox (the channel's sender) went with the VM: the printer drains and ends.
    let _ = printer.join();
    let outcome = outcome?;
    let (line, code) = match outcome {
        VmOutcome::Exited { code } => (format!("exited {code}"), code as u8),
        other => (format!("{other:?}"), 125),
    };
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "outcome {line}");
    let _ = o.flush();
    Ok(ExitCode::from(code))
}
