//! Launch latency of a microVM: create → first guest exit → shutdown, over 100 launches.
//!
//! Three variants run interleaved in the same process so that machine noise hits all alike:
//! * `vmm`: `MicroVm::new` + `load_payload(exit)` + `run` until the payload's first MMIO exit
//!   (the `exit` payload's first and only exit), then drop.
//! * `bare`: the same KVM calls made by hand with no vmm abstraction — memfd + mmap, copy a
//!   pre-rendered image of the boot pages and payload, `KVM_CREATE_VM`,
//!   `KVM_SET_USER_MEMORY_REGION`, `KVM_CREATE_VCPU`, `KVM_SET_SREGS`/`KVM_SET_REGS`, `KVM_RUN` to
//!   the first MMIO exit. The floor our abstractions are measured against.
//! * `create_vm`: `KVM_CREATE_VM` and close alone: the part no VMM can avoid.
//!
//! Grants are measured by `grant_bench`.
//!
//! Run: `cargo run --release -p vmm --example launch_bench`. Ends with
//! `RESULT launch_to_first_exit_ms_p50=<x>`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VcpuExit;
use vm_memory::{Bytes, GuestAddress};
use vmm::kvm::x86;
use vmm::payloads::BuiltinPayload;
use vmm::{Hypervisor, MicroVm, SerialOutput, VmConfig, VmOutcome};

const LAUNCHES: usize = 100;
const WARMUP: usize = 5;
const MEM_BYTES: u64 = 64 << 20;
const PAGE: usize = 4096;

/// Pages of guest RAM (offset, bytes) that the bare sequence copies into each new VM.
struct Snapshot {
    pages: Vec<(usize, Vec<u8>)>,
    regs: kvm_bindings::kvm_regs,
}

/// Renders the boot structures and payload once with the vmm crate and keeps the non-zero pages.
fn snapshot(hv: &Hypervisor) -> Snapshot {
    let config = VmConfig {
        mem_bytes: MEM_BYTES,
        payload_arg: 0,
        serial: SerialOutput::Sink,
        ..VmConfig::default()
    };
    let mut vm = MicroVm::new(hv, &config).expect("create reference VM");
    let entry = vm
        .load_payload(BuiltinPayload::Exit.elf())
        .expect("load")
        .entry;
    let end = vm.image().expect("loaded").end() as usize;
    let mut pages = Vec::new();
    for offset in (0..end).step_by(PAGE) {
        let mut page = vec![0u8; PAGE];
        vm.ram()
            .memory()
            .read_slice(&mut page, GuestAddress(offset as u64))
            .expect("read reference RAM");
        if page.iter().any(|&b| b != 0) {
            pages.push((offset, page));
        }
    }
    let regs = x86::entry_regs(entry, MEM_BYTES, MEM_BYTES, 0);
    Snapshot { pages, regs }
}

fn launch_vmm(hv: &Hypervisor) -> (Duration, Duration) {
    let start = Instant::now();
    let config = VmConfig {
        mem_bytes: MEM_BYTES,
        payload_arg: 0,
        serial: SerialOutput::Sink,
        ..VmConfig::default()
    };
    let mut vm = MicroVm::new(hv, &config).expect("create VM");
    vm.load_payload(BuiltinPayload::Exit.elf()).expect("load");
    let outcome = vm.run().expect("run");
    let first_exit = start.elapsed();
    assert_eq!(outcome, VmOutcome::Exited { code: 0 });
    drop(vm);
    (first_exit, start.elapsed())
}

fn launch_bare(hv: &Hypervisor, snap: &Snapshot) -> (Duration, Duration) {
    let start = Instant::now();
    // SAFETY: plain syscalls on a fresh descriptor; every result is checked.
    let fd = unsafe { libc::memfd_create(c"bench-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: `fd` is fresh and owned only here.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sizing our own memfd.
    assert_eq!(
        unsafe { libc::ftruncate(memfd.as_raw_fd(), MEM_BYTES as i64) },
        0
    );
    // SAFETY: a new shared mapping of the whole memfd; unmapped below.
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_BYTES as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
            memfd.as_raw_fd(),
            0,
        )
    };
    assert_ne!(host, libc::MAP_FAILED, "mmap");
    for (offset, page) in &snap.pages {
        // SAFETY: `offset + PAGE` is inside the mapping (the snapshot came from a VM of this size).
        unsafe {
            std::ptr::copy_nonoverlapping(page.as_ptr(), (host as *mut u8).add(*offset), PAGE)
        };
    }
    let vm = hv.kvm().create_vm().expect("KVM_CREATE_VM");
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_BYTES,
        userspace_addr: host as u64,
    };
    // SAFETY: the mapping outlives the VM (unmapped after the VM is dropped below).
    unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    vcpu.set_sregs(&x86::long_mode_sregs(sregs))
        .expect("KVM_SET_SREGS");
    vcpu.set_regs(&snap.regs).expect("KVM_SET_REGS");
    match vcpu.run().expect("KVM_RUN") {
        VcpuExit::MmioWrite(addr, _) => assert_eq!(addr, vmm::abi::EXIT_BASE),
        other => panic!("unexpected first exit {other:?}"),
    }
    let first_exit = start.elapsed();
    drop(vcpu);
    drop(vm);
    // SAFETY: unmapping the mapping made above; nothing refers to it any more.
    unsafe { libc::munmap(host, MEM_BYTES as usize) };
    drop(memfd);
    (first_exit, start.elapsed())
}

fn create_vm_only(hv: &Hypervisor) -> (Duration, Duration) {
    let start = Instant::now();
    let vm = hv.kvm().create_vm().expect("KVM_CREATE_VM");
    let created = start.elapsed();
    drop(vm);
    (created, start.elapsed())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct Summary {
    p50: f64,
    p99: f64,
    mean: f64,
}

fn summarize(samples: &[Duration]) -> Summary {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    Summary {
        p50: percentile(&ms, 0.5),
        p99: percentile(&ms, 0.99),
        mean: ms.iter().sum::<f64>() / ms.len() as f64,
    }
}

fn main() {
    let hv = match Hypervisor::open() {
        Ok(hv) => hv,
        Err(e) => {
            eprintln!("launch_bench: /dev/kvm unusable: {e}");
            std::process::exit(1);
        }
    };
    let snap = snapshot(&hv);
    let mut results: [(Vec<Duration>, Vec<Duration>); 3] = Default::default();
    for i in 0..WARMUP + LAUNCHES {
        let samples = [
            launch_vmm(&hv),
            launch_bare(&hv, &snap),
            create_vm_only(&hv),
        ];
        if i >= WARMUP {
            for (slot, (first, total)) in results.iter_mut().zip(samples) {
                slot.0.push(first);
                slot.1.push(total);
            }
        }
    }
    let names = [
        "vmm (MicroVm::new+load+run)",
        "bare KVM ioctl sequence",
        "KVM_CREATE_VM alone",
    ];
    println!(
        "microVM launch, {LAUNCHES} launches each (after {WARMUP} warm-up), {} MiB RAM, interleaved",
        MEM_BYTES >> 20
    );
    println!(
        "{:<30} {:>12} {:>12} {:>12} {:>14} {:>14}",
        "variant", "first p50 ms", "first p99 ms", "first mean", "+shutdown p50", "+shutdown p99"
    );
    let mut summaries = Vec::new();
    for (name, (first, total)) in names.iter().zip(&results) {
        let f = summarize(first);
        let t = summarize(total);
        println!(
            "{name:<30} {:>12.3} {:>12.3} {:>12.3} {:>14.3} {:>14.3}",
            f.p50, f.p99, f.mean, t.p50, t.p99
        );
        summaries.push((f, t));
    }
    let (ours, bare, create) = (&summaries[0].0, &summaries[1].0, &summaries[2].0);
    println!(
        "ratio vmm / bare KVM sequence (p50, create -> first exit): {:.2}x",
        ours.p50 / bare.p50
    );
    println!(
        "ratio vmm / KVM_CREATE_VM alone (p50): {:.2}x",
        ours.p50 / create.p50
    );
    println!("RESULT launch_to_first_exit_ms_p50={:.3}", ours.p50);
}
