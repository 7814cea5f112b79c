//! virtio-gcma served by `gcma-hostd` over vhost-user, with one `vmm` process per guest: grants
//! evicting another process's tenant pages, a VMM killed mid-traffic, the daemon killed under a
//! VMM. Needs `/dev/kvm` (skipped without it, failing under `CI=true`).

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use balloon::transport::STATUS_DEVICE_NEEDS_RESET;
use crossbeam::channel::bounded;
use support::hostd::{self, VMM};
use vmm::abi::*;
use vmm::devices::mailbox;
use vmm::launch::{BuiltVm, VmBuilder};
use vmm::multiproc::{metric, AgentLine, AgentProcess, Hostd};
use vmm::payloads::BuiltinPayload;
use vmm::{SerialOutput, VmConfig, VmOutcome};

fn agent(
    dir: &std::path::Path,
    name: &str,
    socket: &std::path::Path,
    args: &[&str],
) -> AgentProcess {
    let mut all: Vec<String> = vec!["--gcma-socket".into(), socket.display().to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    AgentProcess::spawn(
        std::path::Path::new(VMM),
        &all,
        &dir.join(format!("{name}.log")),
    )
    .expect("vmm agent starts")
}

/// Reads `p`'s lines until `until` says stop or `timeout`; returns the events seen.
fn read_until(
    p: &AgentProcess,
    timeout: Duration,
    mut until: impl FnMut(&AgentLine) -> bool,
) -> Vec<AgentLine> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match p.lines.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let stop = until(&l);
                seen.push(l);
                if stop {
                    return seen;
                }
            }
            Err(crossbeam::channel::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    seen
}

/// An in-process microVM attached to a fresh `gcma-hostd` (`None` after `SKIPPED` when KVM or
/// the daemon is not available here).
struct Attached {
    dir: std::path::PathBuf,
    d: Hostd,
    vm: vmm::MicroVm,
    slot: vmm::devices::VirtioSlot<vmm::devices::vhost_gcma::VhostGcma>,
    link: vmm::devices::vhost_gcma::VhostGcmaLink,
}

fn attached(test: &str, tag: &str, pool_mib: u64) -> Option<Attached> {
    let hv = support::hypervisor_or_skip(test)?;
    let (dir, d) = daemon(test, tag, pool_mib)?;
    let config = VmConfig {
        mem_bytes: 64 << 20,
        serial: SerialOutput::Sink,
        ..VmConfig::default()
    };
    let BuiltVm { vm, vhost_gcma, .. } = VmBuilder::new(tag, config, "agent")
        .gcma_socket(&d.socket)
        .build(&hv)
        .expect("the VM attaches to gcma-hostd");
    let (slot, link) = vhost_gcma.expect("a vhost-user gcma device");
    Some(Attached {
        dir,
        d,
        vm,
        slot,
        link,
    })
}

/// Gives `vm` the agent payload and a mailbox offering `params`; returns its events and control
/// word.
fn load_agent(
    vm: &mut vmm::MicroVm,
    params: Vec<u64>,
) -> (
    crossbeam::channel::Receiver<vmm::devices::mailbox::MailboxEvent>,
    Arc<std::sync::atomic::AtomicU64>,
) {
    let (tx, rx) = bounded(4096);
    let control = mailbox::attach(vm, 0, params, tx).unwrap();
    vm.load_payload(BuiltinPayload::Agent.elf()).unwrap();
    (rx, control)
}

/// A fresh `gcma-hostd` with a `pool_mib` pool in a scratch directory `tag`; `None` after
/// `SKIPPED` when KVM or the daemon is not available here.
fn daemon(test: &str, tag: &str, pool_mib: u64) -> Option<(std::path::PathBuf, Hostd)> {
    support::hypervisor_or_skip(test)?;
    let dir = hostd::scratch(tag);
    let d = hostd::start(test, &dir, pool_mib)?;
    Some((dir, d))
}

/// Waits (up to 2 minutes) until tenant `t` reports round `round`; fails with its log if not.
fn wait_for_round(t: &AgentProcess, round: u64) {
    let seen = read_until(
        t,
        Duration::from_secs(120),
        |l| matches!(l, AgentLine::Event { tag: EV_TENANT_ROUND, value } if *value >= round),
    );
    assert!(
        last(&seen, EV_TENANT_ROUND).is_some_and(|r| r >= round),
        "the tenant did not get to round {round}: {seen:?}\n{}",
        t.log_text()
    );
}

/// Reads a stopped tenant's final report and checks it lost and corrupted no frontswap page and
/// passed its checks; returns the events for further checks.
fn tenant_kept_every_page(t: &mut AgentProcess) -> Vec<AgentLine> {
    let seen = read_until(t, Duration::from_secs(120), |l| {
        matches!(l, AgentLine::Outcome(_))
    });
    assert_eq!(last(&seen, EV_FS_LOST), Some(0), "{seen:?}");
    assert_eq!(last(&seen, EV_FS_CORRUPT), Some(0), "{seen:?}");
    assert_eq!(last(&seen, EV_DONE), Some(1), "{seen:?}\n{}", t.log_text());
    assert!(t.wait(Duration::from_secs(30)).is_some_and(|s| s.success()));
    seen
}

fn last(events: &[AgentLine], tag: u64) -> Option<u64> {
    events.iter().rev().find_map(|l| match l {
        AgentLine::Event { tag: t, value } if *t == tag => Some(*value),
        _ => None,
    })
}

#[test]
fn grants_in_one_vmm_process_evict_another_ones_tenant_pages_and_no_frontswap_page_is_lost() {
    let Some((dir, d)) = daemon("vhost_gcma two processes", "two", 32) else {
        return;
    };
    // 8192 pool pages; the tenant keeps ~5000 of them busy with cleancache and frontswap.
    let mut tenant = agent(
        &dir,
        "tenant",
        &d.socket,
        &[
            "--role",
            "tenant",
            "--vm",
            "0",
            "--cc-pages",
            "2048",
            "--fs-pages",
            "4096",
        ],
    );
    wait_for_round(&tenant, 2);
    let mut grants = agent(
        &dir,
        "grants",
        &d.socket,
        &[
            "--role",
            "grants",
            "--vm",
            "1",
            "--reps",
            "4",
            "--sizes",
            "1,512,4096,7000",
            // The tenant's kicks are KVM ioeventfds (the default); this one's go through the
            // VMM's vCPU thread, so both paths carry traffic.
            "--gcma-kick",
            "exit",
        ],
    );
    let g = read_until(&grants, Duration::from_secs(180), |l| {
        matches!(l, AgentLine::Outcome(_))
    });
    let status = grants.wait(Duration::from_secs(30));
    let cycles = g
        .iter()
        .filter(|l| {
            matches!(
                l,
                AgentLine::Event {
                    tag: EV_GRANT_CYCLES,
                    ..
                }
            )
        })
        .count();
    assert_eq!(
        cycles,
        16,
        "every grant succeeded: {g:?}\n{}",
        grants.log_text()
    );
    assert_eq!(
        last(&g, EV_DONE),
        Some(1),
        "every grant read as zero: {g:?}"
    );
    assert!(status.is_some_and(|s| s.success()), "{}", grants.log_text());
    let m = d.metrics().unwrap();
    let evicted = metric(&m, "gcma_evicted_pages_total", &[("reason", "grant")]);
    assert!(
        evicted > 0.0,
        "a 7000-page grant in a full 8192-page pool evicts tenant pages"
    );

    tenant.stop();
    let t = tenant_kept_every_page(&mut tenant);
    assert_eq!(last(&t, EV_CC_STALE), Some(0), "{t:?}");
    assert!(last(&t, EV_FS_VERIFIED).is_some_and(|n| n > 0), "{t:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kill_9_of_a_vmm_process_releases_its_pool_pages_and_grants() {
    let Some((dir, d)) = daemon("vhost_gcma kill -9 of a vmm", "kill9", 32) else {
        return;
    };
    let mut tenant = agent(
        &dir,
        "tenant",
        &d.socket,
        &[
            "--role",
            "tenant",
            "--vm",
            "0",
            "--cc-pages",
            "1024",
            "--fs-pages",
            "2048",
        ],
    );
    let mut grants = agent(
        &dir,
        "grants",
        &d.socket,
        &[
            "--role", "grants", "--vm", "1", "--reps", "100000", "--sizes", "2048",
        ],
    );
    wait_for_round(&tenant, 1);
    let fs = hostd::wait_metric(
        &d,
        "gcma_pool_pages",
        &[("state", "frontswap")],
        Duration::from_secs(30),
        |v| v > 0.0,
    );
    assert!(fs > 0.0, "the tenant holds frontswap pages");
    // Kill the grants VMM while it holds a grant (it keeps one most of the time: each is
    // written and checked before it is freed).
    let held = hostd::wait_metric(&d, "gcma_live_grants", &[], Duration::from_secs(60), |v| {
        v >= 1.0
    });
    assert!(
        held >= 1.0,
        "the grants VM holds a grant: {}",
        grants.log_text()
    );
    grants.kill9();
    tenant.kill9();
    let released = |name: &str, labels: &[(&str, &str)]| {
        hostd::wait_metric(&d, name, labels, Duration::from_secs(10), |v| v == 0.0)
    };
    assert_eq!(released("gcma_live_grants", &[]), 0.0, "{}", d.log_text());
    assert_eq!(released("gcma_pool_pages", &[("state", "granted")]), 0.0);
    assert_eq!(released("gcma_pool_pages", &[("state", "frontswap")]), 0.0);
    assert_eq!(released("gcma_pool_pages", &[("state", "cleancache")]), 0.0);
    // The pool serves a new VMM afterwards.
    let mut again = agent(
        &dir,
        "again",
        &d.socket,
        &[
            "--role", "grants", "--vm", "2", "--reps", "2", "--sizes", "8000",
        ],
    );
    let g = read_until(&again, Duration::from_secs(120), |l| {
        matches!(l, AgentLine::Outcome(_))
    });
    assert_eq!(last(&g, EV_DONE), Some(1), "{g:?}\n{}", again.log_text());
    assert!(again
        .wait(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_dead_daemon_puts_the_device_into_needs_reset_within_5_s_and_nothing_hangs() {
    const TEST: &str = "vhost_gcma daemon killed under a vmm";
    let Some(Attached {
        dir,
        mut d,
        mut vm,
        slot,
        link,
    }) = attached(TEST, "daemon-death", 16)
    else {
        return;
    };
    let (rx, control) = load_agent(&mut vm, vec![DEMO_ROLE_TENANT, 0, 256, 512]);
    let stop = vm.stop_handle();
    let vcpu = std::thread::spawn(move || vm.run());
    // Traffic is flowing.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if rx
            .recv_timeout(Duration::from_millis(200))
            .is_ok_and(|e| e.tag == EV_TENANT_ROUND)
        {
            break;
        }
    }
    assert!(link.stats().calls > 0 || slot.transport.lock().unwrap().is_activated());
    let before = slot.transport.lock().unwrap().counters().interrupts;
    d.kill();
    let killed = Instant::now();
    let mut status = 0;
    while killed.elapsed() < Duration::from_secs(5) {
        status = slot.transport.lock().unwrap().status();
        if status & STATUS_DEVICE_NEEDS_RESET != 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_ne!(
        status & STATUS_DEVICE_NEEDS_RESET,
        0,
        "DEVICE_NEEDS_RESET within 5 s"
    );
    let t = slot.transport.lock().unwrap();
    assert!(
        t.counters().interrupts > before,
        "a config-change interrupt was raised"
    );
    drop(t);
    assert!(link.stats().disconnected);
    assert_eq!(link.stats().mapped_bytes, 0);
    // The guest sees the status, fails its requests and reports; nothing hangs.
    control.store(MAILBOX_CONTROL_STOP, Ordering::Release);
    let done = Instant::now();
    while !vcpu.is_finished() && done.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !vcpu.is_finished() {
        stop.stop();
        panic!("the guest did not finish after the daemon died");
    }
    let outcome = vcpu.join().unwrap().unwrap();
    assert_eq!(
        outcome,
        VmOutcome::Exited { code: 1 },
        "the tenant reports its failed requests"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_guest_waiting_long_for_a_grant_sleeps_until_the_daemons_interrupt() {
    const TEST: &str = "vhost_gcma wait for interrupt";
    let Some(Attached {
        dir,
        d,
        mut vm,
        slot,
        link,
    }) = attached(TEST, "wait-irq", 32)
    else {
        return;
    };
    let doorbell = vm.irq_doorbell().clone();
    // 1-page grants answer within the agent's spin; 6000-page ones (a 23 MiB mapping in this
    // process first) do not, so the agent turns interrupts on and sleeps until one.
    let (rx, _control) = load_agent(&mut vm, vec![DEMO_ROLE_GRANTS, 0, 3, 2, 1, 6000]);
    let outcome = vm.run().expect("run");
    let events: Vec<_> = rx.try_iter().collect();
    assert_eq!(outcome, VmOutcome::Exited { code: 0 }, "{events:?}");
    assert_eq!(
        events.iter().filter(|e| e.tag == EV_GRANT_CYCLES).count(),
        6,
        "{events:?}"
    );
    // The daemon signalled only while the driver had interrupts on (waits that outlasted its
    // spin: at least the three 6000-page allocations), and each signal reached the vCPU through
    // the VM's doorbell.
    let irq_waits = events
        .iter()
        .find(|e| e.tag == EV_IRQ_WAITS)
        .map(|e| e.value)
        .expect("the agent reports its waits");
    let calls = link.stats().calls;
    assert!(irq_waits >= 3, "{irq_waits} waits slept: {events:?}");
    assert!(
        (1..=irq_waits).contains(&calls),
        "{calls} daemon calls for {irq_waits} waits with interrupts on"
    );
    assert_eq!(
        doorbell.rings(),
        slot.transport.lock().unwrap().counters().interrupts
    );
    assert!(doorbell.rings() >= calls);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_ring_the_daemon_finds_broken_puts_the_device_into_needs_reset() {
    use balloon::gcma::proto::{VIRTIO_GCMA_F_CLEANCACHE, VIRTIO_GCMA_F_CONTIG};
    use balloon::testing::Driver;
    use balloon::transport::chain::VIRTQ_DESC_F_NEXT;
    const TEST: &str = "vhost_gcma broken ring";
    let Some(Attached {
        dir,
        d,
        vm,
        slot,
        link,
    }) = attached(TEST, "broken-ring", 16)
    else {
        return;
    };
    // The test is the guest's driver, through the device's transport (no vCPU runs).
    let mem = Arc::new(vm.ram().memory().clone());
    let mut drv = Driver::new(slot.transport.clone(), mem, (32 << 20)..(36 << 20));
    drv.init(VIRTIO_GCMA_F_CONTIG | VIRTIO_GCMA_F_CLEANCACHE, 16)
        .expect("the device activates");
    assert_eq!(drv.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    // A control-queue chain whose descriptor is its own successor: a loop.
    let buf = drv.alloc(64, 64).unwrap();
    drv.write_desc_raw(0, 0, buf, 64, VIRTQ_DESC_F_NEXT, 0)
        .unwrap();
    drv.publish_raw(0, 0).unwrap();
    drv.kick(0);
    let t = Instant::now();
    while drv.status() & STATUS_DEVICE_NEEDS_RESET == 0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_ne!(
        drv.status() & STATUS_DEVICE_NEEDS_RESET,
        0,
        "the daemon's err eventfd reached the transport"
    );
    assert!(
        !link.stats().disconnected,
        "only the ring broke, not the link"
    );
    // The daemon is fine and still serves others.
    assert!(d.metrics().is_ok(), "gcma-hostd still answers");
    drop(drv);
    drop(vm);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ten_vmm_processes_share_the_daemon_and_leave_nothing_behind() {
    let Some((dir, d)) = daemon("vhost_gcma ten vmm processes", "ten", 32) else {
        return;
    };
    // What the daemon holds with nobody attached (after one connection came and went, so that
    // one-time set-up, e.g. of its allocator's arenas, is in the baseline).
    let mut warm = agent(
        &dir,
        "warm",
        &d.socket,
        &[
            "--role", "grants", "--vm", "99", "--reps", "1", "--sizes", "1",
        ],
    );
    assert!(
        warm.wait(Duration::from_secs(60))
            .is_some_and(|s| s.success()),
        "{}",
        warm.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (fd0, rss0) = (d.fd_count().unwrap(), d.rss_bytes().unwrap());

    let mut tenants: Vec<AgentProcess> = (0..10)
        .map(|i| {
            agent(
                &dir,
                &format!("tenant{i}"),
                &d.socket,
                &[
                    "--role",
                    "tenant",
                    "--vm",
                    &i.to_string(),
                    "--cc-pages",
                    "64",
                    "--fs-pages",
                    "128",
                    "--pause-ms",
                    "100",
                    "--mem-mib",
                    "32",
                ],
            )
        })
        .collect();
    for t in &tenants {
        wait_for_round(t, 0);
    }
    let mut grants = agent(
        &dir,
        "grants",
        &d.socket,
        &[
            "--role",
            "grants",
            "--vm",
            "10",
            "--reps",
            "4",
            "--sizes",
            "1,64,512,4096",
        ],
    );
    let g = read_until(&grants, Duration::from_secs(120), |l| {
        matches!(l, AgentLine::Outcome(_))
    });
    assert_eq!(
        last(&g, EV_DONE),
        Some(1),
        "every grant succeeded and read as zero: {g:?}\n{}",
        grants.log_text()
    );
    assert!(grants
        .wait(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    for t in &mut tenants {
        t.stop();
    }
    for t in &mut tenants {
        tenant_kept_every_page(t);
    }
    drop(tenants);
    // Every connection's descriptors (socket, backend channel, eventfds, pidfd) are gone again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fd1 = d.fd_count().unwrap();
    while fd1 != fd0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        fd1 = d.fd_count().unwrap();
    }
    assert_eq!(
        fd1,
        fd0,
        "daemon fds back to where they started:\n{}",
        d.log_text()
    );
    let rss1 = d.rss_bytes().unwrap();
    assert!(
        rss1 <= rss0 + (5 << 20),
        "daemon RSS {rss0} -> {rss1} bytes: more than 5 MiB kept after every VMM left"
    );
    let m = d.metrics().unwrap();
    assert_eq!(metric(&m, "gcma_live_grants", &[]), 0.0);
    assert_eq!(
        metric(&m, "gcma_pool_pages", &[("state", "frontswap")]),
        0.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_daemon_runs_every_microvm_as_a_vmm_process_and_passes_its_checks() {
    const TEST: &str = "vmm demo --daemon";
    if support::hypervisor_or_skip(TEST).is_none() {
        return;
    }
    let hostd = match hostd::hostd_binary() {
        Ok(b) => b,
        Err(e) => return e2e_tests::skip(TEST, e),
    };
    let dir = hostd::scratch("demo");
    let out = std::process::Command::new(VMM)
        .args(["demo", "--daemon", "--hostd"])
        .arg(&hostd)
        .args([
            "--pool-mib",
            "32",
            "--tenants",
            "2",
            "--sizes",
            "1,512,4096",
            "--reps",
            "2",
            "--cc-pages",
            "256",
            "--fs-pages",
            "512",
            "--warmup-rounds",
            "1",
            "--metrics-addr",
            "127.0.0.1:0",
            "--svg",
        ])
        .arg(dir.join("demo.svg"))
        .output()
        .expect("vmm demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "[ok  ] every grant succeeded (6 of 6)",
        "[ok  ] no accepted frontswap page lost or corrupted (0 bad)",
        "[ok  ] tenant1 exited 0",
        "gcma-hostd /metrics (excerpt):",
        "gcma_grants_total 6",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
