//! Device events under KVM: the balloon payload's queue notifications go through ioeventfds to the
//! device event loop thread instead of exiting to the vCPU thread; irqfd lines need the in-kernel
//! irqchip and are unregistered on drop; a guest spinning without exits can be stopped.

mod support;

use support::ping::{elf, host_driver_setup, ping_code, NullDevice};

use std::sync::{Arc, Mutex};

use balloon::error::DeviceError;
use balloon::transport::mmio::{regs, MmioTransport};
use balloon::transport::{Activation, Drained, IrqLine, VirtioDevice};
use balloon::virtio_balloon::{Balloon, BalloonConfig};
use kvm_ioctls::IoEventAddress;
use vmm::abi::{VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use vmm::devices::PolledIrq;
use vmm::kvm::events::{DeviceEventLoop, EventsError, IrqfdLine, QueueNotifier};
use vmm::kvm::vm::SharedBuffer;
use vmm::payloads::BuiltinPayload;
use vmm::{Hypervisor, MicroVm, MmioDevice, SerialOutput, VmConfig, VmOutcome};
use vmm_sys_util::eventfd::EventFd;

const TARGET: u32 = 600; // three inflate buffers: 256 + 256 + 88 PFNs
const KICKS: u64 = 3;

/// A device wrapper that records which threads (by name) processed its queues.
struct Recording<D> {
    inner: D,
    threads: Arc<Mutex<Vec<String>>>,
}

impl<D: VirtioDevice> VirtioDevice for Recording<D> {
    fn device_id(&self) -> u32 {
        self.inner.device_id()
    }
    fn device_features(&self) -> u64 {
        self.inner.device_features()
    }
    fn features_negotiated(&mut self, features: u64) -> bool {
        self.inner.features_negotiated(features)
    }
    fn queue_max_sizes(&self, features: u64) -> Vec<u16> {
        self.inner.queue_max_sizes(features)
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.inner.read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.inner.write_config(offset, data)
    }
    fn activate(&mut self, activation: Activation) -> Result<(), DeviceError> {
        self.inner.activate(activation)
    }
    fn process_queue(&mut self, index: u16, budget: u32) -> Result<Drained, DeviceError> {
        self.threads
            .lock()
            .unwrap()
            .push(std::thread::current().name().unwrap_or("?").to_string());
        self.inner.process_queue(index, budget)
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
}

type Transport = Arc<Mutex<MmioTransport<Recording<Balloon>>>>;

/// The transport's register window on the bus, counting `QueueNotify` writes that reached the
/// VMM (i.e. exited to userspace).
struct CountingWindow {
    transport: Transport,
    notify_exits: Arc<Mutex<u64>>,
}

impl MmioDevice for CountingWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.transport.lock().unwrap().read(offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == regs::QUEUE_NOTIFY {
            *self.notify_exits.lock().unwrap() += 1;
        }
        self.transport.lock().unwrap().write(offset, data);
    }
}

struct BalloonVm {
    vm: MicroVm,
    transport: Transport,
    notify_exits: Arc<Mutex<u64>>,
    threads: Arc<Mutex<Vec<String>>>,
    out: SharedBuffer,
}

fn polled(_: &MicroVm) -> Arc<dyn IrqLine> {
    Arc::new(PolledIrq::new(5))
}

/// A microVM with the balloon payload and a balloon device in virtio slot 0 whose interrupt line
/// `irq` makes.
fn balloon_vm(
    hv: &Hypervisor,
    irqchip: bool,
    irq: &dyn Fn(&MicroVm) -> Arc<dyn IrqLine>,
) -> BalloonVm {
    let out = SharedBuffer::default();
    let mut vm = MicroVm::new(
        hv,
        &VmConfig {
            mem_bytes: 64 << 20,
            serial: SerialOutput::Buffer(out.clone()),
            irqchip,
            ..VmConfig::default()
        },
    )
    .unwrap();
    let threads = Arc::new(Mutex::new(Vec::new()));
    let device = Recording {
        inner: Balloon::new(BalloonConfig {
            deflate_on_oom: false,
            stats: false,
            free_page_reporting: false,
            page_poison: false,
            queue_size: 256,
            target_pages: TARGET,
        }),
        threads: threads.clone(),
    };
    let irq = irq(&vm);
    let mem = Arc::new(vm.ram().memory().clone());
    let transport = Arc::new(Mutex::new(MmioTransport::new(device, mem, irq)));
    let notify_exits = Arc::new(Mutex::new(0));
    let window = CountingWindow {
        transport: transport.clone(),
        notify_exits: notify_exits.clone(),
    };
    vm.bus_mut()
        .insert(
            VIRTIO_MMIO_BASE,
            VIRTIO_MMIO_SIZE,
            Arc::new(Mutex::new(window)),
        )
        .unwrap();
    vm.load_payload(BuiltinPayload::Balloon.elf()).unwrap();
    BalloonVm {
        vm,
        transport,
        notify_exits,
        threads,
        out,
    }
}

/// Runs the payload and checks the host-side effects every path must produce.
fn run_and_check(b: &mut BalloonVm) {
    assert_eq!(
        support::run_vcpu(&mut b.vm).unwrap(),
        VmOutcome::Exited { code: 0 }
    );
    let text = String::from_utf8(b.out.contents()).unwrap();
    assert!(
        text.starts_with(&format!("balloon: inflated {TARGET} pages at 0x")),
        "{text:?}"
    );
    let t = b.transport.lock().unwrap();
    let status = t.device().inner.status();
    assert!(status.activated);
    assert_eq!(status.actual_pages, TARGET);
    assert_eq!(status.inflated_pages, u64::from(TARGET));
    assert_eq!(t.counters().notifications, KICKS);
    assert_eq!(b.threads.lock().unwrap().len() as u64, KICKS);
}

#[test]
fn ioeventfd_moves_queue_processing_to_the_event_loop_thread() {
    let Some(hv) = support::hypervisor_or_skip("ioeventfd balloon") else {
        return;
    };
    // Baseline: the synchronous path, every kick is an MMIO exit handled on the vCPU thread.
    let mut sync = balloon_vm(&hv, false, &polled);
    run_and_check(&mut sync);
    assert_eq!(*sync.notify_exits.lock().unwrap(), KICKS);
    let threads = sync.threads.lock().unwrap().clone();
    assert!(threads.iter().all(|t| t == "vcpu0"), "{threads:?}");

    // ioeventfd path: no QueueNotify reaches the VMM, the loop thread processes the queue.
    let mut evt = balloon_vm(&hv, false, &polled);
    let notifier = QueueNotifier::new(
        evt.vm.shared_vm_fd(),
        VIRTIO_MMIO_BASE,
        evt.transport.clone(),
    )
    .unwrap();
    assert_eq!(notifier.nr_queues(), 2); // inflate, deflate with these features
    let stats = notifier.stats();
    let events = DeviceEventLoop::start(vec![Box::new(notifier)]).unwrap();
    run_and_check(&mut evt);
    events.stop().unwrap();
    assert_eq!(*evt.notify_exits.lock().unwrap(), 0);
    assert_eq!(stats.delivered(), KICKS);
    let threads = evt.threads.lock().unwrap().clone();
    assert!(
        threads.iter().all(|t| t == "vmm-devices"),
        "not processed on the device thread: {threads:?}"
    );
    // Same payload, same MMIO traffic, minus the kicks that no longer exit.
    assert_eq!(
        evt.vm.stats().mmio_writes + KICKS,
        sync.vm.stats().mmio_writes
    );
}

#[test]
fn stopping_the_loop_unregisters_the_ioeventfds() {
    let Some(hv) = support::hypervisor_or_skip("ioeventfd unregister") else {
        return;
    };
    let mut b = balloon_vm(&hv, false, &polled);
    let vm_fd = b.vm.shared_vm_fd();
    let notifier =
        QueueNotifier::new(vm_fd.clone(), VIRTIO_MMIO_BASE, b.transport.clone()).unwrap();
    let events = DeviceEventLoop::start(vec![Box::new(notifier)]).unwrap();
    let addr = IoEventAddress::Mmio(VIRTIO_MMIO_BASE + regs::QUEUE_NOTIFY);
    let other = EventFd::new(0).unwrap();
    // While registered, the same address and datamatch is taken.
    assert!(vm_fd.register_ioevent(&other, &addr, 1u32).is_err());
    events.stop().unwrap();
    vm_fd.register_ioevent(&other, &addr, 1u32).unwrap();
    vm_fd.unregister_ioevent(&other, &addr, 1u32).unwrap();
    // And the guest's kicks exit to the VMM again: the synchronous path still works.
    run_and_check(&mut b);
    assert_eq!(*b.notify_exits.lock().unwrap(), KICKS);
}

#[test]
fn irqfd_needs_the_irqchip_and_is_unregistered_on_drop() {
    let Some(hv) = support::hypervisor_or_skip("irqfd") else {
        return;
    };
    let plain = MicroVm::new(&hv, &VmConfig::default()).unwrap();
    assert!(matches!(
        IrqfdLine::new(plain.shared_vm_fd(), 5),
        Err(EventsError::NoIrqchip { gsi: 5 })
    ));
    drop(plain);

    let irqchip = MicroVm::new(
        &hv,
        &VmConfig {
            irqchip: true,
            ..VmConfig::default()
        },
    )
    .unwrap();
    let vm_fd = irqchip.shared_vm_fd();
    let line = IrqfdLine::new(vm_fd.clone(), 5).unwrap();
    let same = line.eventfd().unwrap();
    // KVM refuses a second irqfd on the same eventfd while the first is registered.
    assert!(vm_fd.register_irqfd(&same, 5).is_err());
    line.raise().unwrap();
    assert_eq!(line.raised(), 1);
    drop(line);
    vm_fd.register_irqfd(&same, 5).unwrap();
    vm_fd.unregister_irqfd(&same, 5).unwrap();
}

#[test]
fn balloon_with_irqchip_irqfd_and_ioeventfds_completes() {
    let Some(hv) = support::hypervisor_or_skip("irqfd + ioeventfd balloon") else {
        return;
    };
    let line = Mutex::new(None);
    let mut with_irqfd = balloon_vm(&hv, true, &|vm| {
        let l = Arc::new(IrqfdLine::new(vm.shared_vm_fd(), 5).unwrap());
        *line.lock().unwrap() = Some(l.clone());
        l
    });
    let line = line.into_inner().unwrap().unwrap();
    let notifier = QueueNotifier::new(
        with_irqfd.vm.shared_vm_fd(),
        VIRTIO_MMIO_BASE,
        with_irqfd.transport.clone(),
    )
    .unwrap();
    let events = DeviceEventLoop::start(vec![Box::new(notifier)]).unwrap();
    run_and_check(&mut with_irqfd);
    events.stop().unwrap();
    assert_eq!(*with_irqfd.notify_exits.lock().unwrap(), 0);
    // One used-buffer interrupt per processed buffer went out through the irqfd.
    assert_eq!(line.raised(), KICKS);
    assert_eq!(
        with_irqfd.transport.lock().unwrap().counters().interrupts,
        KICKS
    );
}

/// A minimal static ELF whose code is `jmp $` at the entry: a guest that never exits.
fn spin_elf() -> Vec<u8> {
    elf(&[0xeb, 0xfe])
}

#[test]
fn a_guest_spinning_without_exits_is_stopped_from_another_thread() {
    let Some(hv) = support::hypervisor_or_skip("stop a spinning guest") else {
        return;
    };
    let mut vm = MicroVm::new(&hv, &VmConfig::default()).unwrap();
    vm.load_payload(&spin_elf()).unwrap();
    let stop = vm.stop_handle();
    let (tx, rx) = std::sync::mpsc::channel();
    let runner = std::thread::spawn(move || {
        let outcome = support::run_vcpu(&mut vm);
        tx.send(()).unwrap();
        (vm, outcome)
    });
    // The guest is spinning: nothing comes back on its own.
    assert!(rx
        .recv_timeout(std::time::Duration::from_millis(100))
        .is_err());
    stop.stop();
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("the vCPU did not stop");
    let (vm, outcome) = runner.join().unwrap();
    let rip = match outcome.unwrap() {
        VmOutcome::Stopped { rip } => rip,
        other => panic!("unexpected outcome {other:?}"),
    };
    assert!(vm.image().unwrap().code_contains(rip), "rip {rip:#x}");
    assert_eq!(vm.stats().mmio_writes, 0);
}

#[test]
fn back_to_back_kicks_race_the_event_loop_without_breaking_the_ring() {
    // The device drains the queue on the loop thread while the guest publishes the next buffer:
    // an "empty" decision taken on two different reads of avail.idx used to flag the ring as
    // broken here.
    let Some(hv) = support::hypervisor_or_skip("ioeventfd ping") else {
        return;
    };
    const KICKS: u64 = 3000;
    let mut vm = MicroVm::new(
        &hv,
        &VmConfig {
            mem_bytes: 32 << 20,
            payload_arg: KICKS,
            serial: SerialOutput::Sink,
            ..VmConfig::default()
        },
    )
    .unwrap();
    let slot = vm.add_virtio_device(NullDevice::default()).unwrap();
    host_driver_setup(&mut slot.transport.lock().unwrap(), vm.ram().memory());
    vm.load_payload(&elf(&ping_code(slot.base + regs::QUEUE_NOTIFY)))
        .unwrap();
    let notifier =
        QueueNotifier::new(vm.shared_vm_fd(), slot.base, slot.transport.clone()).unwrap();
    let events = DeviceEventLoop::start(vec![Box::new(notifier)]).unwrap();
    // A broken ring leaves the guest spinning forever: stop it after a generous time instead.
    let stop = vm.stop_handle();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished
            .recv_timeout(std::time::Duration::from_secs(30))
            .is_err()
        {
            stop.stop();
        }
    });
    let outcome = support::run_vcpu(&mut vm).unwrap();
    drop(done);
    watchdog.join().unwrap();
    events.stop().unwrap();
    assert_eq!(
        outcome,
        VmOutcome::Exited { code: 0 },
        "{:?}",
        slot.transport
    );
    let t = slot.transport.lock().unwrap();
    assert_eq!(t.counters().needs_reset, 0);
    assert!((1..=KICKS).contains(&t.counters().notifications));
    // Only the exit write reached the VMM: every kick completed in the kernel.
    assert_eq!(vm.stats().mmio_writes, 1);
}
