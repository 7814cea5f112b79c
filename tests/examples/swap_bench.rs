//! Swap-storm benchmark: the same stock Linux guest (Debian's cloud kernel under QEMU with
//! software emulation) and the same checker swap to several block backends, side by side in one
//! run. Defaults: a 128 MiB guest writes and twice verifies 256 MiB of anonymous memory.
//!
//! Backends, in table order (the first is the baseline of the ratios):
//! * `qsd`: qemu-storage-daemon's vhost-user-blk export of a sparse file (the peer a QEMU user
//!   would pick);
//! * `virtio-blk`: QEMU's own virtio-blk over a sparse file.
//!
//! Each backend is a `SwapBackend` in `backends()`: another one (a daemon's swap disk under each
//! of its policies) is one more entry there. Runs are interleaved (run 1 of every backend, then
//! run 2, ...) so machine noise hits all alike; the table shows medians. Software emulation makes
//! the guest's CPU slow and noisy, so compare ratios, not absolute times.
//!
//! Run: `cargo run --release -p e2e-tests --example swap_bench [-- --help]`. Ends with one
//! `RESULT swap_storm_<backend>_vs_<baseline>=<ratio>` line per other backend.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use e2e_tests::linux_guest::{
    FileBackend, GuestError, GuestRun, Kit, Mode, QemuGuest, QsdBackend, QsdExport, SwapArgs,
    SwapBackend,
};

/// Swap storms of a stock Linux guest against several block backends.
#[derive(Debug, Parser)]
struct Args {
    /// Runs per backend; the table shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 128)]
    guest_mib: u64,
    /// Anonymous memory the checker writes and verifies, in MiB (more than the guest's RAM).
    #[arg(long, default_value_t = 256)]
    storm_mib: u64,
    /// Swap disk size in MiB (default: the storm plus half).
    #[arg(long)]
    disk_mib: Option<u64>,
    /// Seed of the page pattern.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Wall-clock budget of one guest, in seconds; QEMU is killed past it and the bench fails.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
    /// Only these backends (comma-separated names from the table), in this order.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// The backends compared, baseline first.
fn backends() -> Vec<Box<dyn SwapBackend>> {
    vec![Box::new(QsdBackend::default()), Box::new(FileBackend)]
}

/// Figures of one run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    storm_ms: f64,
    write_ms: f64,
    verify1_ms: f64,
    verify2_ms: f64,
    wall_s: f64,
    boot_s: f64,
    pswpout: f64,
}

fn one_run(
    kit: &Kit,
    backend: &dyn SwapBackend,
    args: &Args,
    run: usize,
) -> Result<Sample, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let disk_mib = args.disk_mib.unwrap_or(args.storm_mib * 3 / 2);
    let attached = backend
        .attach(dir.path(), disk_mib << 20)
        .map_err(|e| e.to_string())?;
    let result = QemuGuest::new(kit)
        .name(&format!("{}-{run}", backend.name()))
        .memory_mib(args.guest_mib)
        .disk(attached.disk)
        .checker(Mode::Swap(SwapArgs {
            mib: args.storm_mib,
            seed: args.seed,
            ..SwapArgs::default()
        }))
        .timeout(Duration::from_secs(args.timeout_s))
        .run();
    let stopped = attached.guard.stop();
    let run = result.map_err(|e| e.to_string())?;
    stopped.map_err(|e| format!("stopping {}: {e}", backend.name()))?;
    sample(&run)
}

fn sample(run: &GuestRun) -> Result<Sample, String> {
    let s = run
        .summary()
        .filter(|s| run.clean_exit() && s.ok() && s.get_u64("corrupt") == Some(0))
        .ok_or_else(|| format!("run failed\n{}", run.diagnostics()))?;
    let f = |k: &str| {
        s.get_u64(k)
            .map(|v| v as f64)
            .ok_or_else(|| format!("summary has no {k}: {s}"))
    };
    Ok(Sample {
        storm_ms: f("total_ms")?,
        write_ms: f("write_ms")?,
        verify1_ms: f("verify1_ms")?,
        verify2_ms: f("verify2_ms")?,
        wall_s: run.wall.as_secs_f64(),
        boot_s: run.userspace_at().map_or(f64::NAN, |d| d.as_secs_f64()),
        pswpout: f("pswpout")?,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.runs == 0 || args.storm_mib == 0 || args.guest_mib == 0 {
        eprintln!("swap_bench: --runs, --guest-mib and --storm-mib must be positive");
        return ExitCode::from(2);
    }
    let mut list = backends();
    if !args.only.is_empty() {
        let mut chosen = Vec::new();
        for name in &args.only {
            match list.iter().position(|b| &b.name() == name) {
                Some(i) => chosen.push(list.remove(i)),
                None => {
                    eprintln!("swap_bench: unknown backend {name:?} in --only");
                    return ExitCode::from(2);
                }
            }
        }
        list = chosen;
    }
    let prereq = Kit::ensure()
        .and_then(|kit| QemuGuest::qemu_binary().map(|_| kit))
        .and_then(|kit| QsdExport::binary().map(|_| kit));
    let kit = match prereq {
        Ok(kit) => kit,
        Err(e @ GuestError::Unavailable(_)) => {
            eprintln!("swap_bench: cannot run here: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("swap_bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "swap storm: {} MiB guest, {} MiB of anonymous memory written once and verified twice, \
         {} runs per backend (interleaved), kernel {}",
        args.guest_mib, args.storm_mib, args.runs, kit.release
    );

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); list.len()];
    for run in 1..=args.runs {
        for (i, backend) in list.iter().enumerate() {
            match one_run(&kit, backend.as_ref(), &args, run) {
                Ok(s) => {
                    eprintln!(
                        "  run {run} {:<12} storm {:>7.0} ms  wall {:>5.1} s",
                        backend.name(),
                        s.storm_ms,
                        s.wall_s
                    );
                    samples[i].push(s);
                }
                Err(e) => {
                    eprintln!("swap_bench: {} run {run}: {e}", backend.name());
                    return ExitCode::FAILURE;
                }
            }
        }
    }

    let med = |i: usize, f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
    let base_name = list[0].name();
    let base = med(0, |s| s.storm_ms);
    println!();
    println!(
        "{:<12} {:>9} {:>9} {:>10} {:>10} {:>7} {:>7} {:>9} {:>9}",
        "backend",
        "storm_ms",
        "write_ms",
        "verify1_ms",
        "verify2_ms",
        "wall_s",
        "boot_s",
        "pswpout",
        format!("vs {base_name}")
    );
    for (i, b) in list.iter().enumerate() {
        println!(
            "{:<12} {:>9.0} {:>9.0} {:>10.0} {:>10.0} {:>7.1} {:>7.1} {:>9.0} {:>9.2}",
            b.name(),
            med(i, |s| s.storm_ms),
            med(i, |s| s.write_ms),
            med(i, |s| s.verify1_ms),
            med(i, |s| s.verify2_ms),
            med(i, |s| s.wall_s),
            med(i, |s| s.boot_s),
            med(i, |s| s.pswpout),
            med(i, |s| s.storm_ms) / base
        );
    }
    println!(
        "(medians of {} runs; storm_ms = the guest's mkswap..swapoff time; ratio = storm_ms / {base_name}'s)",
        args.runs
    );
    for (i, b) in list.iter().enumerate().skip(1) {
        println!(
            "RESULT swap_storm_{}_vs_{base_name}={:.3}",
            b.name().replace('-', "_"),
            med(i, |s| s.storm_ms) / base
        );
    }
    ExitCode::SUCCESS
}
