//! The host pool service against the embedded pool, side by side in one run, same payload (the
//! `agent`): a pool inside the `vmm` process (`VmBuilder::gcma`) vs `gcma-hostd`'s pool over
//! vhost-user (`VmBuilder::gcma_socket`), both with a 256 MiB pool and the same zeroer.
//!
//! 1. **Grant latency as the guest sees it** (`ALLOC_CONTIG` request to response, `rdtsc`) at 1,
//!    512 and 32000 pages, no tenants; modes interleaved round by round. The daemon is measured
//!    with both kick paths: a KVM ioeventfd straight to the daemon (the default), and the
//!    guest's `QueueNotify` exit turned into an eventfd write by the VMM (`--gcma-kick exit`).
//! 2. **tmem throughput**: one tenant's cleancache put+get and frontswap store+load per second
//!    over a fixed time, per mode, interleaved.
//! 3. With `--scale N` (out of CI: N `vmm` processes): 1-page grant latency p50/p99 with 1
//!    attached VMM, then with N tenant VMM processes attached (pausing between bursts) + the one
//!    taking grants; the daemon's fd count and RSS before and after.
//!
//! Run: `nice -n 10 cargo run --release -p vmm --example daemon_bench [-- --scale 100
//! [--scale-only]]` (`-- --pages N`: only the grant latency of N pages, e.g. for a profile).
//! It builds and uses `target/release/gcma-hostd`, or the one `GCMA_HOSTD` names. Ends with
//! `RESULT daemon_grant_1page_ratio=` (daemon/embedded p50; goal ≤ 1.5),
//! `RESULT daemon_grant_32000page_ratio=` (goal ≤ 1.1) and `RESULT daemon_tmem_ratio=`
//! (embedded/daemon throughput; goal ≤ 1.2), each for the default kick path, then the same for
//! kicks by exit.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::bounded;
use gcma_host::pool::{Pool, PoolConfig, Zeroer, ZeroerConfig, DEFAULT_ZEROER_CPU_PCT};
use vmm::abi::*;
use vmm::devices::mailbox::{self, MailboxEvent};
use vmm::devices::vhost_gcma::GcmaKick;
use vmm::launch::VmBuilder;
use vmm::multiproc::{find_binary, AgentLine, AgentProcess, Hostd};
use vmm::payloads::BuiltinPayload;
use vmm::{Hypervisor, SerialOutput, VmConfig, VmOutcome};

const POOL_MIB: u64 = 256;
const ROUNDS: usize = 3;
const SIZES: [(u64, u64); 3] = [(1, 200), (512, 100), (32000, 10)];
const TMEM_SECONDS: u64 = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Embedded,
    Daemon,
    DaemonExit,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Embedded => "embedded pool (in the vmm process)",
            Mode::Daemon => "gcma-hostd (kick by ioeventfd)",
            Mode::DaemonExit => "gcma-hostd, kick by MMIO exit",
        }
    }
}

const MODES: [Mode; 3] = [Mode::Embedded, Mode::Daemon, Mode::DaemonExit];

fn pct(v: &mut [f64], p: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * p / 100).min(v.len() - 1)]
}

struct Env {
    hv: Hypervisor,
    pool: Arc<Pool>,
    hostd: Hostd,
}

fn builder(env: &Env, mode: Mode, window_bytes: u64) -> VmBuilder {
    let config = VmConfig {
        mem_bytes: 128 << 20,
        serial: SerialOutput::Sink,
        grant_window_bytes: window_bytes,
        ..VmConfig::default()
    };
    let b = VmBuilder::new("bench", config, "agent");
    match mode {
        Mode::Embedded => b.gcma(env.pool.clone()),
        Mode::Daemon => b.gcma_socket(&env.hostd.socket),
        Mode::DaemonExit => b.gcma_socket(&env.hostd.socket).gcma_kick(GcmaKick::Exit),
    }
}

/// Runs the agent with `params` in an in-process VM of `mode`; `stop_after` sets the mailbox's
/// stop bit after that long. Returns every event and the wall time of the run.
fn run_agent(
    env: &Env,
    mode: Mode,
    params: Vec<u64>,
    stop_after: Option<Duration>,
) -> (Vec<(MailboxEvent, Instant)>, Duration) {
    let built = builder(env, mode, (POOL_MIB << 20) + (2 << 20))
        .build(&env.hv)
        .expect("build the VM");
    let mut vm = built.vm;
    let (tx, rx) = bounded(1 << 16);
    let control = mailbox::attach(&mut vm, 0, params, tx).expect("mailbox");
    vm.load_payload(BuiltinPayload::Agent.elf()).expect("load");
    let t0 = Instant::now();
    let vcpu = std::thread::spawn(move || vm.run());
    let mut events = Vec::new();
    let mut stopped = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(e) => events.push((e, Instant::now())),
            Err(crossbeam::channel::RecvTimeoutError::Disconnected) => break,
            Err(_) => {}
        }
        if let Some(after) = stop_after {
            if !stopped && t0.elapsed() >= after {
                control.store(MAILBOX_CONTROL_STOP, Ordering::Release);
                stopped = true;
            }
        }
        if vcpu.is_finished() && rx.is_empty() {
            break;
        }
    }
    let outcome = vcpu.join().expect("vcpu thread").expect("run");
    let wall = t0.elapsed();
    events.extend(rx.try_iter().map(|e| (e, Instant::now())));
    assert_eq!(
        outcome,
        VmOutcome::Exited { code: 0 },
        "{}: agent failed",
        mode.name()
    );
    (events, wall)
}

fn grant_section(env: &Env, per_us: f64) -> Vec<Vec<f64>> {
    // p50[size][mode]
    let mut samples = vec![vec![Vec::<f64>::new(); MODES.len()]; SIZES.len()];
    for _ in 0..ROUNDS {
        for (mi, &mode) in MODES.iter().enumerate() {
            for (si, &(pages, reps)) in SIZES.iter().enumerate() {
                if arg_value("--pages").is_some_and(|p| p != pages as usize) {
                    continue;
                }
                let params = vec![DEMO_ROLE_GRANTS, 0, reps, 1, pages];
                let (ev, _) = run_agent(env, mode, params, None);
                samples[si][mi].extend(
                    ev.iter()
                        .filter(|(e, _)| e.tag == EV_GRANT_CYCLES)
                        .map(|(e, _)| e.value as f64 / per_us),
                );
            }
        }
    }
    println!("Grant latency as the guest sees it (ALLOC_CONTIG request to response), no tenants, modes interleaved, {ROUNDS} rounds");
    println!(
        "{:>6} {:<36} {:>8} {:>12} {:>12} {:>10}",
        "pages", "mode", "grants", "p50 µs", "p99 µs", "/embedded"
    );
    let mut p50s = vec![vec![0.0; MODES.len()]; SIZES.len()];
    for (si, &(pages, _)) in SIZES.iter().enumerate() {
        for (mi, &mode) in MODES.iter().enumerate() {
            let v = &mut samples[si][mi];
            if v.is_empty() {
                continue;
            }
            let (n, p50, p99) = (v.len(), pct(v, 50), pct(v, 99));
            p50s[si][mi] = p50;
            println!(
                "{pages:>6} {:<36} {n:>8} {p50:>12.1} {p99:>12.1} {:>9.2}x",
                mode.name(),
                p50 / p50s[si][0]
            );
        }
    }
    p50s
}

/// tmem operations (cleancache puts + gets, frontswap stores + loads) per second of one tenant.
fn tmem_rate(events: &[(MailboxEvent, Instant)]) -> f64 {
    let ops = |round_end: usize| -> u64 {
        // The counters are cumulative; the events of one round come in a fixed order after
        // EV_TENANT_ROUND.
        let mut total = 0;
        for tag in [
            EV_CC_PUTS,
            EV_CC_HITS,
            EV_CC_MISSES,
            EV_FS_STORES,
            EV_FS_REJECTS,
            EV_FS_LOADS,
        ] {
            total += events[..round_end]
                .iter()
                .rev()
                .find(|(e, _)| e.tag == tag)
                .map_or(0, |(e, _)| e.value);
        }
        total
    };
    let rounds: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, (e, _))| e.tag == EV_TENANT_ROUND)
        .map(|(i, _)| i)
        .collect();
    // From the end of the first round to the end of the last full one (all its counters sent).
    let (Some(&first), Some(&last)) = (rounds.first(), rounds.get(rounds.len().saturating_sub(2)))
    else {
        return 0.0;
    };
    if last <= first {
        return 0.0;
    }
    let end = |i: usize| (i + 7).min(events.len());
    let dt = events[end(last) - 1].1 - events[end(first) - 1].1;
    (ops(end(last)) - ops(end(first))) as f64 / dt.as_secs_f64()
}

fn tmem_section(env: &Env) -> Vec<f64> {
    let mut rates = vec![Vec::new(); MODES.len()];
    for _ in 0..2 {
        for (mi, &mode) in MODES.iter().enumerate() {
            let params = vec![DEMO_ROLE_TENANT, 0, 1024, 2048, 0];
            let (ev, _) = run_agent(env, mode, params, Some(Duration::from_secs(TMEM_SECONDS)));
            rates[mi].push(tmem_rate(&ev));
        }
    }
    println!("\ntmem throughput of one tenant (cleancache put+get, frontswap store+load), {TMEM_SECONDS} s per run, 2 runs per mode");
    println!("{:<36} {:>14} {:>12}", "mode", "ops/s (best)", "embedded/x");
    let best: Vec<f64> = rates
        .iter()
        .map(|r| r.iter().copied().fold(0.0, f64::max))
        .collect();
    for (mi, &mode) in MODES.iter().enumerate() {
        println!(
            "{:<36} {:>14.0} {:>11.2}x",
            mode.name(),
            best[mi],
            best[0] / best[mi]
        );
    }
    best
}

/// 1-page grant latencies (µs) of a `vmm agent` process attached to `hostd`.
fn process_grants(vmm: &Path, hostd: &Hostd, dir: &Path, reps: u64, per_us: f64) -> Vec<f64> {
    let args: Vec<String> = [
        "--role",
        "grants",
        "--vm",
        "100000",
        "--reps",
        &reps.to_string(),
        "--sizes",
        "1",
        "--gcma-socket",
        &hostd.socket.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut p = AgentProcess::spawn(vmm, &args, &dir.join("grants.log")).expect("agent");
    let mut v = Vec::new();
    for l in p.lines.iter() {
        match l {
            AgentLine::Event {
                tag: EV_GRANT_CYCLES,
                value,
            } => v.push(value as f64 / per_us),
            AgentLine::Outcome(_) => break,
            _ => {}
        }
    }
    assert!(
        p.wait(Duration::from_secs(60)).is_some_and(|s| s.success()),
        "{}",
        p.log_text()
    );
    v
}

fn scale_section(hostd_bin: &Path, n: usize, per_us: f64) {
    let vmm = find_binary("vmm").expect("target/release/vmm (cargo build --release -p vmm)");
    let dir = std::env::temp_dir().join(format!("daemon-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let extra = vec!["--backing-dir".to_string(), dir.display().to_string()];
    let hostd = Hostd::start(hostd_bin, &dir, POOL_MIB, &extra).expect("gcma-hostd");
    let (fd0, rss0) = (
        hostd.fd_count().unwrap_or(0),
        hostd.rss_bytes().unwrap_or(0),
    );
    let mut one = process_grants(&vmm, &hostd, &dir, 400, per_us);
    let mut tenants = Vec::new();
    let t0 = Instant::now();
    for i in 0..n {
        let args: Vec<String> = [
            "--role",
            "tenant",
            "--vm",
            &i.to_string(),
            "--cc-pages",
            "64",
            "--fs-pages",
            "128",
            "--pause-ms",
            "200",
            "--mem-mib",
            "32",
            "--gcma-socket",
            &hostd.socket.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        tenants.push(
            AgentProcess::spawn(&vmm, &args, &dir.join(format!("tenant{i}.log"))).expect("agent"),
        );
    }
    // Every tenant through its first round.
    for t in &tenants {
        let _ = t.lines.iter().find(|l| {
            matches!(
                l,
                AgentLine::Event {
                    tag: EV_TENANT_ROUND,
                    ..
                }
            )
        });
    }
    println!(
        "\n{n} tenant vmm processes attached and through a round in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let mut many = process_grants(&vmm, &hostd, &dir, 400, per_us);
    let mut lost = 0;
    let mut failed = 0;
    for t in &mut tenants {
        t.stop();
    }
    for t in &mut tenants {
        for l in t.lines.iter() {
            match l {
                AgentLine::Event {
                    tag: EV_FS_LOST,
                    value,
                } => lost += value,
                AgentLine::Outcome(o) if o != "exited 0" => failed += 1,
                AgentLine::Outcome(_) => break,
                _ => {}
            }
        }
        let _ = t.wait(Duration::from_secs(60));
    }
    drop(tenants);
    std::thread::sleep(Duration::from_secs(2));
    let (fd1, rss1) = (
        hostd.fd_count().unwrap_or(0),
        hostd.rss_bytes().unwrap_or(0),
    );
    println!("1-page grant latency of one guest, p50 / p99 µs: {:.1} / {:.1} with 1 attached VMM, {:.1} / {:.1} with {} attached",
        pct(&mut one, 50), pct(&mut one, 99), pct(&mut many, 50), pct(&mut many, 99), n + 1);
    println!(
        "tenants: {failed} failed, {lost} frontswap pages lost; daemon fds {fd0} -> {fd1}, RSS {:.1} -> {:.1} MiB",
        rss0 as f64 / (1 << 20) as f64,
        rss1 as f64 / (1 << 20) as f64
    );
    println!(
        "RESULT daemon_scale_p99_ratio={:.2}",
        pct(&mut many, 99) / pct(&mut one, 99)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Builds the release `gcma-hostd` and `vmm` (`GCMA_HOSTD` names another daemon build to use).
fn hostd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("GCMA_HOSTD") {
        return PathBuf::from(p);
    }
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "gcma-hostd",
            "-p",
            "vmm",
            "--bin",
            "gcma-hostd",
            "--bin",
            "vmm",
        ])
        .status()
        .expect("cargo build");
    assert!(status.success(), "cargo build of gcma-hostd");
    find_binary("gcma-hostd").expect("target/release/gcma-hostd")
}

/// The number after `flag` on the command line.
fn arg_value(flag: &str) -> Option<usize> {
    std::env::args()
        .skip_while(|a| a != flag)
        .nth(1)
        .and_then(|n| n.parse::<usize>().ok())
}

fn main() {
    let scale = arg_value("--scale");
    let hv = match Hypervisor::open() {
        Ok(hv) => hv,
        Err(e) => {
            eprintln!("daemon_bench: /dev/kvm unusable: {e}");
            std::process::exit(1);
        }
    };
    let hostd_bin = hostd_binary();
    if let (Some(n), true) = (scale, std::env::args().any(|a| a == "--scale-only")) {
        scale_section(&hostd_bin, n, vmm::payloads::tsc_hz() / 1e6);
        return;
    }
    let dir = std::env::temp_dir().join(format!("daemon-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let extra = vec!["--backing-dir".to_string(), dir.display().to_string()];
    let hostd = Hostd::start(&hostd_bin, &dir, POOL_MIB, &extra).expect("gcma-hostd");
    let pool = Pool::new(PoolConfig {
        client_frontswap_limit_pages: Some(POOL_MIB << 8),
        ..PoolConfig::new(POOL_MIB << 8)
    })
    .expect("pool");
    let _zeroer = Zeroer::start(&pool, ZeroerConfig::new(DEFAULT_ZEROER_CPU_PCT)).expect("zeroer");
    let env = Env { hv, pool, hostd };
    let per_us = vmm::payloads::tsc_hz() / 1e6;
    let p50 = grant_section(&env, per_us);
    if arg_value("--pages").is_some() {
        drop(env);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let tmem = tmem_section(&env);
    println!();
    println!(
        "RESULT daemon_grant_1page_ratio={:.2}",
        p50[0][1] / p50[0][0]
    );
    println!(
        "RESULT daemon_grant_512page_ratio={:.2}",
        p50[1][1] / p50[1][0]
    );
    println!(
        "RESULT daemon_grant_32000page_ratio={:.2}",
        p50[2][1] / p50[2][0]
    );
    println!(
        "RESULT daemon_grant_1page_ratio_exit={:.2}",
        p50[0][2] / p50[0][0]
    );
    println!(
        "RESULT daemon_grant_32000page_ratio_exit={:.2}",
        p50[2][2] / p50[2][0]
    );
    println!("RESULT daemon_tmem_ratio={:.2}", tmem[0] / tmem[1]);
    println!("RESULT daemon_tmem_ratio_exit={:.2}", tmem[0] / tmem[2]);
    drop(env);
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(n) = scale {
        scale_section(&hostd_bin, n, per_us);
    }
}
