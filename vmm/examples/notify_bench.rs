//! Queue-notification round trip (guest kick → used buffer seen by the guest) under KVM, through
//! the synchronous path (the `QueueNotify` write exits to the VMM and the vCPU thread processes
//! the queue) against ioeventfd (the write completes in the kernel, the device event loop thread
//! processes the queue while the guest polls the used ring). Both in the same run, interleaved.
//!
//! Two workloads:
//! * `ping`: a minimal ring-3 guest (hand-assembled here) that kicks a null device's queue and
//!   spins on the used index, `--kicks` times; the host completes each buffer at once. This is
//!   the notification cost alone.
//! * `balloon`: the built-in balloon payload inflating `--balloon-pages` pages (one kick per 256
//!   pages, plus the guest's page writes and the host's hole punching).
//!
//! `cargo run --release -p vmm --example notify_bench -- --kicks 20000 --rounds 5`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use balloon::transport::mmio::{regs, MmioTransport};
use balloon::transport::VirtioDevice;
use balloon::virtio_balloon::{Balloon, BalloonConfig};
use clap::Parser;
use vmm::kvm::events::{DeviceEventLoop, QueueNotifier};
use vmm::payloads::BuiltinPayload;
use vmm::{Hypervisor, MicroVm, SerialOutput, VmConfig, VmOutcome};

#[path = "../tests/support/ping.rs"]
#[allow(dead_code)] // shared with the tests, which use more of it
mod ping;
use ping::{elf, host_driver_setup, ping_code, NullDevice};

#[derive(Parser, Debug)]
#[command(about = "Queue-notification round trip: synchronous MMIO exit vs ioeventfd")]
struct Args {
    /// Kicks per ping run.
    #[arg(long, default_value_t = 20_000)]
    kicks: u64,
    /// Pages the balloon payload inflates per run (one kick per 256).
    #[arg(long, default_value_t = 8192)]
    balloon_pages: u32,
    /// Runs per path and workload (alternating paths); the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Sync,
    Ioeventfd,
}

/// One measured run: the guest's wall time, its MMIO writes that reached the VMM, notifications
/// the device processed.
struct Run {
    elapsed: Duration,
    mmio_writes: u64,
    notifications: u64,
}

fn run_vm<D: VirtioDevice + 'static>(
    mut vm: MicroVm,
    base: u64,
    transport: Arc<Mutex<MmioTransport<D>>>,
    path: Path,
) -> Run {
    let events = (path == Path::Ioeventfd).then(|| {
        let n = QueueNotifier::new(vm.shared_vm_fd(), base, transport.clone()).unwrap();
        DeviceEventLoop::start(vec![Box::new(n)]).unwrap()
    });
    let start = Instant::now();
    let outcome = vm.run().unwrap();
    let elapsed = start.elapsed();
    assert_eq!(outcome, VmOutcome::Exited { code: 0 }, "{path:?}");
    if let Some(e) = events {
        e.stop().unwrap();
    }
    let notifications = transport.lock().unwrap().counters().notifications;
    Run {
        elapsed,
        mmio_writes: vm.stats().mmio_writes,
        notifications,
    }
}

fn ping(hv: &Hypervisor, kicks: u64, path: Path) -> Run {
    let config = VmConfig {
        mem_bytes: 32 << 20,
        payload_arg: kicks,
        serial: SerialOutput::Sink,
        ..VmConfig::default()
    };
    let mut vm = MicroVm::new(hv, &config).unwrap();
    let slot = vm.add_virtio_device(NullDevice::default()).unwrap();
    host_driver_setup(&mut slot.transport.lock().unwrap(), vm.ram().memory());
    vm.load_payload(&elf(&ping_code(slot.base + regs::QUEUE_NOTIFY)))
        .unwrap();
    let run = run_vm(vm, slot.base, slot.transport.clone(), path);
    // The guest finishing proves every buffer came back. On the ioeventfd path a kick that lands
    // while the device is still draining the queue is served in the same pass, so the device may
    // see fewer notifications than kicks; on the exit path it sees each one.
    match path {
        Path::Sync => assert_eq!(run.notifications, kicks),
        Path::Ioeventfd => assert!((1..=kicks).contains(&run.notifications)),
    }
    run
}

fn balloon(hv: &Hypervisor, pages: u32, path: Path) -> Run {
    let config = VmConfig {
        mem_bytes: 64 << 20,
        serial: SerialOutput::Sink,
        ..VmConfig::default()
    };
    let mut vm = MicroVm::new(hv, &config).unwrap();
    let slot = vm
        .add_virtio_device(Balloon::new(BalloonConfig {
            deflate_on_oom: false,
            stats: false,
            free_page_reporting: false,
            page_poison: false,
            queue_size: 256,
            target_pages: pages,
        }))
        .unwrap();
    vm.load_payload(BuiltinPayload::Balloon.elf()).unwrap();
    let run = run_vm(vm, slot.base, slot.transport.clone(), path);
    let status = slot.transport.lock().unwrap().device().status();
    assert_eq!(status.actual_pages, pages, "{path:?}");
    run
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    env_logger::init();
    let args = Args::parse();
    let hv = match Hypervisor::open() {
        Ok(hv) => hv,
        Err(e) => {
            println!("SKIPPED: /dev/kvm unusable: {e}");
            return;
        }
    };
    let rounds = args.rounds.max(1);
    println!(
        "{:<10} {:<10} {:>6} {:>12} {:>14} {:>12}",
        "workload", "path", "kicks", "median ms", "per kick µs", "VMM writes"
    );
    let mut ratios = Vec::new();
    for (name, kicks) in [
        ("ping", args.kicks),
        ("balloon", u64::from(args.balloon_pages).div_ceil(256)),
    ] {
        let mut times = [Vec::new(), Vec::new()];
        let mut writes = [0, 0];
        for _ in 0..rounds {
            for (i, path) in [Path::Sync, Path::Ioeventfd].into_iter().enumerate() {
                let r = match name {
                    "ping" => ping(&hv, kicks, path),
                    _ => balloon(&hv, args.balloon_pages, path),
                };
                times[i].push(r.elapsed);
                writes[i] = r.mmio_writes;
            }
        }
        let med: Vec<Duration> = times.into_iter().map(median).collect();
        for (i, path) in ["sync exit", "ioeventfd"].into_iter().enumerate() {
            println!(
                "{:<10} {:<10} {:>6} {:>12.3} {:>14.2} {:>12}",
                name,
                path,
                kicks,
                med[i].as_secs_f64() * 1e3,
                med[i].as_secs_f64() * 1e6 / kicks as f64,
                writes[i]
            );
        }
        let ratio = med[1].as_secs_f64() / med[0].as_secs_f64();
        println!("{name}: ioeventfd / sync = {ratio:.3} (below 1: ioeventfd is faster)");
        ratios.push((name, ratio));
    }
    for (name, ratio) in ratios {
        println!("RESULT notify_{name}_ioeventfd_over_sync={ratio:.3}");
    }
}
