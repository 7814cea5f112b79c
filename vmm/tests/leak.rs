//! Creating and destroying many microVMs leaks no file descriptors, mappings or memory.
//!
//! Kept alone in its own test binary so that no other test opens descriptors meanwhile.

mod support;

use vm_memory::{Bytes, GuestAddress};
use vmm::kvm::vm::SharedBuffer;
use vmm::payloads::BuiltinPayload;
use vmm::{MicroVm, SerialOutput, VmConfig, VmOutcome};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Each VM gets this much of its RAM written by the host, so a leaked mapping would show in RSS.
const TOUCHED_BYTES: usize = 1 << 20;

fn one_vm(hv: &vmm::Hypervisor) {
    let out = SharedBuffer::default();
    let config = VmConfig {
        mem_bytes: 32 << 20,
        payload_arg: 0,
        serial: SerialOutput::Buffer(out.clone()),
        ..VmConfig::default()
    };
    let mut vm = MicroVm::new(hv, &config).unwrap();
    vm.load_payload(BuiltinPayload::Hello.elf()).unwrap();
    vm.ram()
        .memory()
        .write_slice(&vec![0x5a; TOUCHED_BYTES], GuestAddress(16 << 20))
        .unwrap();
    assert_eq!(
        support::run(&mut vm).unwrap(),
        VmOutcome::Exited { code: 0 }
    );
    assert!(!out.contents().is_empty());
}

#[test]
fn hundred_microvms_leave_no_fds_mappings_or_memory_behind() {
    let Some(hv) = support::hypervisor_or_skip("leak test") else {
        return;
    };
    // Warm up lazily initialised process state (allocator arenas, test harness buffers).
    one_vm(&hv);
    let (fds, maps, rss) = (open_fds(), mappings(), rss_kib());
    for _ in 0..100 {
        one_vm(&hv);
    }
    let (fds_after, maps_after, rss_after) = (open_fds(), mappings(), rss_kib());
    assert_eq!(fds_after, fds, "file descriptors leaked");
    assert!(
        maps_after <= maps + 4,
        "mappings grew from {maps} to {maps_after}"
    );
    // 100 leaked VMs would hold at least 100 MiB; allow 24 MiB of allocator noise.
    assert!(
        rss_after <= rss + 24 * 1024,
        "RSS grew from {rss} KiB to {rss_after} KiB"
    );
}
