//! Swap-storm benchmark: the same stock Linux guest (Debian's cloud kernel under QEMU with
//! software emulation) and the same checker swap to several block backends, side by side in one
//! run. Defaults: a 128 MiB guest writes and twice verifies 256 MiB of anonymous memory.
//!
//! Backends, in table order (the first is the baseline of the ratios):
//! * `qsd`: qemu-storage-daemon's vhost-user-blk export of a sparse file (the peer a QEMU user
//!   would pick);
//! * `virtio-blk`: QEMU's own virtio-blk over a sparse file;
//! * `gcma-wt`, `gcma-wb`, `gcma-pb`: a swap disk of `gcma-hostd` (default 256 MiB pool, the
//!   disk's file in the run's directory) under write-through, write-back and put-back. The bench
//!   builds the daemon with `cargo build --release -p gcma-hostd` (or takes `$GCMA_HOSTD`).
//!
//! Each backend is a `SwapBackend` in `backends()`. For the daemon's disks the bench also prints
//! the daemon's host-side cost per 4 KiB read and write, from its own counters (host time
//! answering requests / pages moved), beside a `pread`/`pwrite` of 4 KiB in a file on the same
//! filesystem, measured in the same run. Runs are interleaved (run 1 of every backend, then
//! run 2, ...) so machine noise hits all alike; the table shows medians. Software emulation makes
//! the guest's CPU slow and noisy, so compare ratios, not absolute times.
//!
//! Run: `cargo run --release -p e2e-tests --example swap_bench [-- --help]`. Ends with one
//! `RESULT swap_storm_<backend>_vs_<baseline>=<ratio>` line per other backend, and
//! `RESULT swap_storm_vs_qsd=<ratio>` for the daemon under write-through.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use e2e_tests::linux_guest::{
    AttachedDisk, Disk, DiskGuard, FileBackend, GuestError, GuestRun, Kit, Mode, QemuGuest,
    QsdBackend, QsdExport, SwapArgs, SwapBackend,
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
fn backends(hostd: Option<&Path>) -> Vec<Box<dyn SwapBackend>> {
    let mut list: Vec<Box<dyn SwapBackend>> =
        vec![Box::new(QsdBackend::default()), Box::new(FileBackend)];
    if let Some(bin) = hostd {
        for (name, policy) in [
            ("gcma-wt", "write-through"),
            ("gcma-wb", "write-back"),
            ("gcma-pb", "put-back"),
        ] {
            list.push(Box::new(HostdBackend {
                bin: bin.to_path_buf(),
                name,
                policy,
            }));
        }
    }
    list
}

/// A swap disk of `gcma-hostd` under one policy.
struct HostdBackend {
    bin: PathBuf,
    name: &'static str,
    policy: &'static str,
}

impl SwapBackend for HostdBackend {
    fn name(&self) -> String {
        self.name.into()
    }

    fn attach(&self, dir: &Path, size_bytes: u64) -> Result<AttachedDisk, GuestError> {
        let sock = dir.join("hostd-swap.sock");
        let api = dir.join("hostd-api.sock");
        let log = dir.join("hostd.log");
        let io = |what: &str| {
            let what = what.to_string();
            move |source| GuestError::Io { what, source }
        };
        // Under `nice -n 10`, as the harness runs QEMU and qemu-storage-daemon.
        let child = Command::new("nice")
            .args(["-n", "10"])
            .arg(&self.bin)
            .arg("--frontswap-policy")
            .arg(self.policy)
            .arg("--backing-dir")
            .arg(dir)
            .arg("--swap-disk")
            .arg(format!("{},size={size_bytes},queues=1", sock.display()))
            .arg("--api-sock")
            .arg(&api)
            .stderr(std::fs::File::create(&log).map_err(io("create the daemon log"))?)
            .stdout(Stdio::null())
            .spawn()
            .map_err(io("start gcma-hostd"))?;
        let mut guard = HostdGuard { child, api, log };
        let t0 = Instant::now();
        while !(sock.exists() && guard.api.exists()) {
            if let Ok(Some(status)) = guard.child.try_wait() {
                return Err(GuestError::Tool {
                    tool: "gcma-hostd".into(),
                    detail: format!("exited {status}: {}", guard.log_text()),
                });
            }
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(GuestError::Timeout {
                    what: "gcma-hostd's sockets".into(),
                    after: Duration::from_secs(30),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(AttachedDisk {
            disk: Disk::vhost_user_blk(sock),
            guard: Box::new(guard),
        })
    }
}

/// The running daemon; stopping it reads its counters, then sends SIGTERM.
struct HostdGuard {
    child: Child,
    api: PathBuf,
    log: PathBuf,
}

impl HostdGuard {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// GET `path` over HTTP on a Unix socket; the body.
fn http_get(sock: &Path, path: &str) -> std::io::Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: gcma\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string())
}

/// Sum of the samples of `name` whose labels contain `filter`.
fn metric(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(filter)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl DiskGuard for HostdGuard {
    fn stop(mut self: Box<Self>) -> Result<Vec<(String, String)>, GuestError> {
        let m = http_get(&self.api, "/metrics").map_err(|source| GuestError::Io {
            what: "read gcma-hostd's metrics".into(),
            source,
        })?;
        let per_4k = |ty: &str, op: &str| {
            let secs = metric(
                &m,
                "gcma_disk_request_seconds_total",
                &format!("type=\"{ty}\""),
            );
            let bytes = metric(&m, "gcma_disk_bytes_total", &format!("op=\"{op}\""));
            secs * 1e6 / (bytes / 4096.0)
        };
        let figures = vec![
            (
                "read_us_per_4k".to_string(),
                format!("{:.2}", per_4k("in", "read")),
            ),
            (
                "write_us_per_4k".to_string(),
                format!("{:.2}", per_4k("out", "write")),
            ),
            (
                "read_kib_per_req".to_string(),
                format!(
                    "{:.1}",
                    metric(&m, "gcma_disk_bytes_total", "op=\"read\"")
                        / 1024.0
                        / metric(&m, "gcma_disk_requests_total", "type=\"in\",status=\"ok\"")
                ),
            ),
            (
                "write_kib_per_req".to_string(),
                format!(
                    "{:.1}",
                    metric(&m, "gcma_disk_bytes_total", "op=\"write\"")
                        / 1024.0
                        / metric(&m, "gcma_disk_requests_total", "type=\"out\",status=\"ok\"")
                ),
            ),
            (
                "pool_hits".to_string(),
                metric(&m, "gcma_disk_pool_hits_total", "").to_string(),
            ),
            (
                "pool_misses".to_string(),
                metric(&m, "gcma_disk_pool_misses_total", "").to_string(),
            ),
        ];
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().map_err(|source| GuestError::Io {
            what: "wait for gcma-hostd".into(),
            source,
        })?;
        if !status.success() {
            return Err(GuestError::Tool {
                tool: "gcma-hostd".into(),
                detail: format!("SIGTERM: exited {status}: {}", self.log_text()),
            });
        }
        Ok(figures)
    }
}

impl Drop for HostdGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon binary: `$GCMA_HOSTD`, or built now with the cargo running this bench.
fn hostd_binary() -> Result<Option<PathBuf>, String> {
    if let Some(p) = std::env::var_os("GCMA_HOSTD") {
        return Ok(Some(PathBuf::from(p)));
    }
    let Some(cargo) = std::env::var_os("CARGO") else {
        eprintln!(
            "swap_bench: not run by cargo and no $GCMA_HOSTD: the gcma-hostd disks are left out"
        );
        return Ok(None);
    };
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "gcma-hostd",
            "--message-format=short",
        ])
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("cargo build -p gcma-hostd: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build -p gcma-hostd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // This example runs from target/release/examples/.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("gcma-hostd"))
        .filter(|p| p.exists())
        .ok_or("gcma-hostd was built but not found next to this example's directory")?;
    Ok(Some(bin))
}

/// Median µs of a 4 KiB `pread` and of a 4 KiB `pwrite` at random page offsets of a 256 MiB
/// file in `dir` (written first, so that both hit the page cache, as the daemon's file does).
fn file_baseline(dir: &Path) -> std::io::Result<(f64, f64)> {
    const PAGES: u64 = 65536;
    const OPS: usize = 20000;
    let path = dir.join("baseline.img");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let page = [0x5au8; 4096];
    for p in 0..PAGES {
        f.write_all_at(&page, p * 4096)?;
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % PAGES) * 4096
    };
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    for _ in 0..OPS {
        f.read_exact_at(&mut buf, next())?;
    }
    let read = t.elapsed().as_secs_f64() * 1e6 / OPS as f64;
    let t = Instant::now();
    for _ in 0..OPS {
        f.write_all_at(&buf, next())?;
    }
    let write = t.elapsed().as_secs_f64() * 1e6 / OPS as f64;
    let _ = std::fs::remove_file(&path);
    Ok((read, write))
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
) -> Result<(Sample, Vec<(String, String)>), String> {
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
    let figures = stopped.map_err(|e| format!("stopping {}: {e}", backend.name()))?;
    Ok((sample(&run)?, figures))
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
    let hostd = match hostd_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("swap_bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut list = backends(hostd.as_deref());
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
    let mut figures: Vec<Vec<Vec<(String, String)>>> = vec![Vec::new(); list.len()];
    for run in 1..=args.runs {
        for (i, backend) in list.iter().enumerate() {
            match one_run(&kit, backend.as_ref(), &args, run) {
                Ok((s, f)) => {
                    figures[i].push(f);
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
    // The daemon's own cost per request, beside the file system's.
    let figure = |i: usize, key: &str| {
        median(
            figures[i]
                .iter()
                .filter_map(|f| f.iter().find(|(k, _)| k == key)?.1.parse().ok())
                .collect(),
        )
    };
    let ours: Vec<usize> = (0..list.len())
        .filter(|&i| list[i].name().starts_with("gcma-"))
        .collect();
    if !ours.is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        match file_baseline(dir.path()) {
            Ok((pread, pwrite)) => {
                println!();
                println!(
                    "host-side cost per 4 KiB (daemon: its request time / pages moved, medians):"
                );
                println!(
                    "{:<12} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12}",
                    "backend",
                    "read_us",
                    "write_us",
                    "pool_hits",
                    "pool_miss",
                    "KiB/read_rq",
                    "KiB/write_rq"
                );
                for &i in &ours {
                    println!(
                        "{:<12} {:>10.2} {:>10.2} {:>10.0} {:>10.0} {:>12.1} {:>12.1}",
                        list[i].name(),
                        figure(i, "read_us_per_4k"),
                        figure(i, "write_us_per_4k"),
                        figure(i, "pool_hits"),
                        figure(i, "pool_misses"),
                        figure(i, "read_kib_per_req"),
                        figure(i, "write_kib_per_req")
                    );
                }
                println!(
                    "{:<12} {:>10.2} {:>10.2}   (4 KiB pread / pwrite at random offsets of a 256 MiB file, page cache)",
                    "file", pread, pwrite
                );
            }
            Err(e) => eprintln!("swap_bench: file baseline: {e}"),
        }
    }
    for (i, b) in list.iter().enumerate().skip(1) {
        println!(
            "RESULT swap_storm_{}_vs_{base_name}={:.3}",
            b.name().replace('-', "_"),
            med(i, |s| s.storm_ms) / base
        );
    }
    if let Some(i) = list.iter().position(|b| b.name() == "gcma-wt") {
        if base_name == "qsd" {
            println!(
                "RESULT swap_storm_vs_qsd={:.3}",
                med(i, |s| s.storm_ms) / base
            );
        }
    }
    ExitCode::SUCCESS
}
