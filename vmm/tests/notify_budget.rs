//! Under KVM: a notification serves at most a queue's worth (or the configured number) of
//! requests and the rest on later turns. On the synchronous path the vCPU thread comes back to the
//! leftovers by itself (the guest kicks once per batch); on the ioeventfd path a guest that keeps
//! its queue full cannot keep the shared device thread from other devices.

mod support;

use std::sync::mpsc;
use std::time::Duration;

use balloon::transport::mmio::regs;
use support::ping::{
    elf, flood_once_code, host_driver_setup, ping_batch_code, ping_code, NullDevice,
};
use vmm::kvm::events::{DeviceEventLoop, QueueNotifier};
use vmm::limits::GuestLimits;
use vmm::{MicroVm, SerialOutput, VmConfig, VmOutcome};

fn config(payload_arg: u64, limits: GuestLimits) -> VmConfig {
    VmConfig {
        mem_bytes: 32 << 20,
        payload_arg,
        serial: SerialOutput::Sink,
        limits,
        ..VmConfig::default()
    }
}

#[test]
fn a_batch_posted_with_one_kick_is_served_in_turns_on_the_vcpu_thread() {
    let Some(hv) = support::hypervisor_or_skip("notify budget, synchronous path") else {
        return;
    };
    const ROUNDS: u64 = 200;
    const BATCH: u8 = 16;
    let limits = GuestLimits {
        requests_per_notify: Some(1),
        ..GuestLimits::default()
    };
    let mut vm = MicroVm::new(&hv, &config(ROUNDS, limits)).unwrap();
    let slot = vm.add_virtio_device(NullDevice::default()).unwrap();
    host_driver_setup(&mut slot.transport.lock().unwrap(), vm.ram().memory());
    vm.load_payload(&elf(&ping_batch_code(
        slot.base + regs::QUEUE_NOTIFY,
        BATCH,
    )))
    .unwrap();
    // Without the turns served between guest runs the guest would wait forever for its batch.
    assert_eq!(
        support::run(&mut vm).unwrap(),
        VmOutcome::Exited { code: 0 }
    );
    let c = slot.transport.lock().unwrap().counters();
    assert_eq!(c.needs_reset, 0);
    assert_eq!(
        c.notifications - c.deferred_rounds,
        ROUNDS,
        "one kick per batch"
    );
    assert_eq!(
        c.notifications,
        ROUNDS * u64::from(BATCH),
        "one request per turn"
    );
    assert_eq!(vm.stats().mmio_writes, ROUNDS + 1, "the kicks and the exit");
    assert!(vm.stats().interrupted >= c.deferred_rounds / 2);
}

#[test]
fn a_guest_keeping_its_queue_full_does_not_starve_another_device_on_the_loop() {
    let Some(hv) = support::hypervisor_or_skip("notify budget, ioeventfd path") else {
        return;
    };
    // VM A posts once and kicks once; its device re-posts every buffer it serves, so A's ring
    // never empties. Serving until the ring is empty would keep the device thread on A forever.
    let mut flood = MicroVm::new(&hv, &config(0, GuestLimits::default())).unwrap();
    let a = flood.add_virtio_device(NullDevice::reposting()).unwrap();
    host_driver_setup(&mut a.transport.lock().unwrap(), flood.ram().memory());
    flood
        .load_payload(&elf(&flood_once_code(a.base + regs::QUEUE_NOTIFY)))
        .unwrap();
    // VM B pings its own device, served by the same device thread.
    const PINGS: u64 = 300;
    let mut pinger = MicroVm::new(&hv, &config(PINGS, GuestLimits::default())).unwrap();
    let b = pinger.add_virtio_device(NullDevice::default()).unwrap();
    host_driver_setup(&mut b.transport.lock().unwrap(), pinger.ram().memory());
    pinger
        .load_payload(&elf(&ping_code(b.base + regs::QUEUE_NOTIFY)))
        .unwrap();
    let na = QueueNotifier::new(flood.shared_vm_fd(), a.base, a.transport.clone()).unwrap();
    let a_stats = na.stats();
    let nb = QueueNotifier::new(pinger.shared_vm_fd(), b.base, b.transport.clone()).unwrap();
    let events = DeviceEventLoop::start(vec![Box::new(na), Box::new(nb)]).unwrap();

    let stop_flood = flood.stop_handle();
    let flood_thread = std::thread::spawn(move || support::run_vcpu(&mut flood));
    // B must finish while A floods; if the device thread never leaves A's queue, B spins until
    // the watchdog stops it.
    let stop_pinger = pinger.stop_handle();
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(Duration::from_secs(60)).is_err() {
            stop_pinger.stop();
        }
    });
    let pinged = support::run_vcpu(&mut pinger).unwrap();
    drop(done);
    watchdog.join().unwrap();
    let flood_rearmed = a_stats.rearmed();
    stop_flood.stop();
    let flooded = flood_thread.join().unwrap().unwrap();
    events.stop().unwrap();
    assert_eq!(
        pinged,
        VmOutcome::Exited { code: 0 },
        "the pinging guest was starved"
    );
    assert!(matches!(flooded, VmOutcome::Stopped { .. }), "{flooded:?}");
    assert!(
        flood_rearmed > 0,
        "the flooding queue was served in turns and re-armed"
    );
    let ta = a.transport.lock().unwrap().counters();
    assert_eq!(ta.needs_reset, 0);
    assert!(ta.notifications > 1);
}
