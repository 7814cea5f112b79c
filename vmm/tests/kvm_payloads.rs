//! End-to-end: built-in payloads run under KVM; assertions are on host-side effects (serial
//! output, exit codes, the reported fault address).

mod support;

use vmm::kvm::vm::SharedBuffer;
use vmm::payloads::BuiltinPayload;
use vmm::{Error, MicroVm, SerialOutput, VmConfig, VmOutcome};

fn config(mem_mib: u64, arg: u64, out: &SharedBuffer) -> VmConfig {
    VmConfig {
        mem_bytes: mem_mib << 20,
        payload_arg: arg,
        serial: SerialOutput::Buffer(out.clone()),
        ..VmConfig::default()
    }
}

#[test]
fn hello_prints_its_entry_registers_and_exits_zero() {
    let Some(hv) = support::hypervisor_or_skip("hello") else {
        return;
    };
    for (mem_mib, arg) in [(64, 42), (8, u64::MAX)] {
        let out = SharedBuffer::default();
        let mut vm = MicroVm::new(&hv, &config(mem_mib, arg, &out)).unwrap();
        vm.load_payload(BuiltinPayload::Hello.elf()).unwrap();
        assert_eq!(
            support::run(&mut vm).unwrap(),
            VmOutcome::Exited { code: 0 }
        );
        let greeting = format!("hello from a ring-3 payload: ram={mem_mib} MiB arg={arg}\n");
        let uart = "via uart\n";
        assert_eq!(
            String::from_utf8_lossy(&out.contents()),
            format!("{greeting}{uart}")
        );
        let stats = vm.stats();
        // The UART costs one exit per byte, the batched console one per formatted piece, plus
        // one for the exit register.
        let most = (greeting.len() / 4 + uart.len() + 1) as u64;
        assert!(
            stats.mmio_writes > uart.len() as u64 + 1 && stats.mmio_writes < most,
            "{stats:?}"
        );
        assert_eq!(stats.mmio_unclaimed, 0);
    }
}

#[test]
fn exit_code_reaches_the_host() {
    let Some(hv) = support::hypervisor_or_skip("exit codes") else {
        return;
    };
    for code in [0u32, 1, 7, 0xdead_beef] {
        let out = SharedBuffer::default();
        let mut vm = MicroVm::new(&hv, &config(16, u64::from(code), &out)).unwrap();
        vm.load_payload(BuiltinPayload::Exit.elf()).unwrap();
        assert_eq!(support::run(&mut vm).unwrap(), VmOutcome::Exited { code });
        assert!(out.contents().is_empty());
        assert_eq!(vm.stats().mmio_writes, 1);
    }
}

#[test]
fn crash_is_reported_with_the_faulting_rip_inside_the_payload() {
    let Some(hv) = support::hypervisor_or_skip("crash") else {
        return;
    };
    let out = SharedBuffer::default();
    let mut vm = MicroVm::new(&hv, &config(16, 0, &out)).unwrap();
    vm.load_payload(BuiltinPayload::Crash.elf()).unwrap();
    let outcome = support::run(&mut vm).unwrap();
    let text = String::from_utf8(out.contents()).unwrap();
    let printed = text
        .trim()
        .strip_prefix("crash: faulting at 0x")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or_else(|| panic!("unexpected console output {text:?}"));
    assert_eq!(outcome, VmOutcome::Shutdown { rip: printed });
    assert!(vm.image().unwrap().code_contains(printed));
}

#[test]
fn several_microvms_run_at_once_on_their_own_threads() {
    let Some(hv) = support::hypervisor_or_skip("concurrent VMs") else {
        return;
    };
    let hv = std::sync::Arc::new(hv);
    let handles: Vec<_> = (0..4u64)
        .map(|i| {
            let hv = hv.clone();
            std::thread::spawn(move || {
                let out = SharedBuffer::default();
                let mut vm = MicroVm::new(&hv, &config(16, i, &out)).unwrap();
                vm.load_payload(BuiltinPayload::Hello.elf()).unwrap();
                (support::run(&mut vm).unwrap(), out.contents())
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (outcome, text) = h.join().unwrap();
        assert_eq!(outcome, VmOutcome::Exited { code: 0 });
        let expected = format!("hello from a ring-3 payload: ram=16 MiB arg={i}\nvia uart\n");
        assert_eq!(String::from_utf8_lossy(&text), expected);
    }
}

#[test]
fn bad_configurations_and_images_are_typed_errors() {
    let Some(hv) = support::hypervisor_or_skip("bad configurations") else {
        return;
    };
    let out = SharedBuffer::default();
    for mem in [0, 4 << 20, (8 << 20) + 1, 1 << 40] {
        let cfg = VmConfig {
            mem_bytes: mem,
            ..config(8, 0, &out)
        };
        assert!(
            matches!(MicroVm::new(&hv, &cfg), Err(Error::Config(_))),
            "{mem}"
        );
    }
    let mut vm = MicroVm::new(&hv, &config(8, 0, &out)).unwrap();
    assert!(matches!(support::run(&mut vm), Err(Error::NoPayload)));
    assert!(matches!(
        vm.load_payload(b"not an elf"),
        Err(Error::Load(_))
    ));
    // A real ELF that is not a static executable at our load address (this test binary).
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert!(matches!(vm.load_payload(&me), Err(Error::Load(_))));
    // The VM is still usable after refused images.
    vm.load_payload(BuiltinPayload::Exit.elf()).unwrap();
    assert_eq!(
        support::run(&mut vm).unwrap(),
        VmOutcome::Exited { code: 0 }
    );
}

#[test]
fn balloon_payload_inflates_and_the_host_releases_its_pages() {
    use balloon::virtio_balloon::{Balloon, BalloonConfig};
    use vm_memory::{Bytes, GuestAddress};

    let Some(hv) = support::hypervisor_or_skip("balloon") else {
        return;
    };
    const TARGET: u32 = 600; // more than two batches of 256 PFNs
    let out = SharedBuffer::default();
    let mut vm = MicroVm::new(&hv, &config(64, 0, &out)).unwrap();
    let slot = vm
        .add_virtio_device(Balloon::new(BalloonConfig {
            deflate_on_oom: false,
            stats: false,
            free_page_reporting: false,
            page_poison: false,
            queue_size: 256,
            target_pages: TARGET,
        }))
        .unwrap();
    vm.load_payload(BuiltinPayload::Balloon.elf()).unwrap();
    assert_eq!(
        support::run(&mut vm).unwrap(),
        VmOutcome::Exited { code: 0 }
    );

    let text = String::from_utf8(out.contents()).unwrap();
    let first = text
        .trim()
        .strip_prefix(&format!("balloon: inflated {TARGET} pages at 0x"))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or_else(|| panic!("unexpected console output {text:?}"));
    let status = slot.transport.lock().unwrap().device().status();
    assert!(status.activated);
    assert_eq!(status.actual_pages, TARGET);
    assert_eq!(status.inflated_pages, u64::from(TARGET));
    // The memfd holds far less than the inflated pages would take (checked before reading them
    // back below: a read fault on a tmpfs hole allocates a page again).
    let meta = vm.ram().memfd().metadata().unwrap();
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    assert!(
        allocated < u64::from(TARGET) * 4096 / 4,
        "{allocated} bytes still allocated"
    );
    // The guest filled every page with 0xa5 before giving it up; the host punched the memfd
    // there, so the host now reads zeros.
    let mut page = vec![0xffu8; 4096];
    for i in 0..u64::from(TARGET) {
        vm.ram()
            .memory()
            .read_slice(&mut page, GuestAddress(first + i * 4096))
            .unwrap();
        assert!(page.iter().all(|&b| b == 0), "page {i} still holds data");
    }
}

#[test]
fn balloon_payload_without_a_device_says_so() {
    let Some(hv) = support::hypervisor_or_skip("balloon without device") else {
        return;
    };
    let out = SharedBuffer::default();
    let mut vm = MicroVm::new(&hv, &config(16, 0, &out)).unwrap();
    vm.load_payload(BuiltinPayload::Balloon.elf()).unwrap();
    assert_eq!(
        support::run(&mut vm).unwrap(),
        VmOutcome::Exited { code: 2 }
    );
    assert!(String::from_utf8_lossy(&out.contents()).starts_with("balloon: no device"));
}

#[test]
fn a_spinning_guest_is_stopped_from_another_thread_and_can_resume() {
    let Some(hv) = support::hypervisor_or_skip("stop handle") else {
        return;
    };
    let out = SharedBuffer::default();
    let mut vm = MicroVm::new(&hv, &config(16, 0, &out)).unwrap();
    vm.load_payload(BuiltinPayload::Spin.elf()).unwrap();
    let stop = vm.stop_handle();
    let stopper = {
        let out = out.clone();
        std::thread::spawn(move || {
            // Stop only once the guest is provably running its loop.
            while !String::from_utf8_lossy(&out.contents()).contains("spin: running") {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            stop.stop();
        })
    };
    let outcome = support::run_vcpu(&mut vm).unwrap();
    stopper.join().unwrap();
    let VmOutcome::Stopped { rip } = outcome else {
        panic!("expected Stopped, got {outcome:?}");
    };
    assert!(vm.image().unwrap().code_contains(rip), "rip {rip:#x}");

    // Resuming runs the same guest on; a stop requested while not running is reported by the
    // next run before the guest is entered.
    vm.stop_handle().stop();
    assert!(matches!(
        support::run_vcpu(&mut vm).unwrap(),
        VmOutcome::Stopped { .. }
    ));
    let stop = vm.stop_handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        stop.stop();
    });
    assert!(matches!(
        support::run_vcpu(&mut vm).unwrap(),
        VmOutcome::Stopped { .. }
    ));
    stopper.join().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.contents()),
        "spin: running\n",
        "the guest was resumed, not restarted"
    );
}

/// The guests of these tests run as under `vmm run`: on a thread in seccomp filter mode (the
/// kernel's view, `/proc/thread-self/status`), while the test's own thread is not filtered.
#[test]
fn test_guests_run_on_a_filtered_vcpu_thread() {
    support::filters_on();
    let mode = || {
        // Line by line: `fs::read_to_string` would stat the file first, which a vCPU may not.
        use std::io::BufRead;
        let status = std::fs::File::open("/proc/thread-self/status").unwrap();
        std::io::BufReader::new(status)
            .lines()
            .find_map(|l| Some(l.unwrap().strip_prefix("Seccomp:")?.trim().to_string()))
            .unwrap()
    };
    assert_eq!(mode(), "0", "the test thread is not filtered");
    let on_vcpu = vmm::seccomp::on_vcpu_thread("vcpu0", mode).unwrap();
    assert_eq!(on_vcpu, "2", "SECCOMP_MODE_FILTER on the vCPU thread");
}
