//! virtio-gcma driven by guest code under KVM: the guest-agent driver core in a ring-3 payload
//! asks the device for a contiguous grant, which the VMM maps from the pool into the grant
//! window; the guest's pattern must then be in pool memory at the grant's offset.

mod support;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use balloon::gcma::{GcmaDevice, GrantWindow};
use gcma_host::api::GcmaBackend;
use gcma_host::pool::{Pool, PoolConfig};
use vmm::abi::GRANT_WINDOW_BASE;
use vmm::kvm::vm::SharedBuffer;
use vmm::payloads::{gcma_arg, BuiltinPayload, FILL_KEY};
use vmm::{MicroVm, SerialOutput, VmConfig, VmOutcome};

const POOL_PAGES: u64 = 4096;

fn setup(
    hv: &vmm::Hypervisor,
    pool: &Arc<Pool>,
    out: &SharedBuffer,
) -> (MicroVm, Arc<GrantWindow>) {
    let config = VmConfig {
        mem_bytes: 32 << 20,
        serial: SerialOutput::Buffer(out.clone()),
        grant_window_bytes: 64 << 20,
        ..VmConfig::default()
    };
    let mut vm = MicroVm::new(hv, &config).unwrap();
    let window = vm.bind_grant_window(pool.clone()).unwrap();
    vm.add_virtio_device(GcmaDevice::new(window.clone(), "test-vm"))
        .unwrap();
    (vm, window)
}

fn granted_gpa(text: &str, nr_pages: u32) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("gcma: granted {nr_pages} pages at 0x")))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or_else(|| panic!("unexpected console output {text:?}"))
}

#[test]
fn guest_pattern_in_a_contiguous_grant_lands_in_pool_memory() {
    let Some(hv) = support::hypervisor_or_skip("gcma grant") else {
        return;
    };
    let pool = Pool::new(PoolConfig::new(POOL_PAGES)).unwrap();
    let out = SharedBuffer::default();
    let (mut vm, window) = setup(&hv, &pool, &out);
    const PAGES: u32 = 300;
    vm.set_payload_arg(gcma_arg(PAGES, true));
    vm.load_payload(BuiltinPayload::Gcma.elf()).unwrap();
    let outcome = support::run(&mut vm).unwrap();
    let text = String::from_utf8(out.contents()).unwrap();
    assert_eq!(outcome, VmOutcome::Exited { code: 0 }, "{text}");

    let gpa = granted_gpa(&text, PAGES);
    assert!(gpa >= GRANT_WINDOW_BASE);
    let grants = window.grants();
    assert_eq!(grants.len(), 1, "{grants:?}");
    let (mapped_gpa, grant) = grants[0];
    assert_eq!(mapped_gpa, gpa);
    assert_eq!(grant.nr_pages, u64::from(PAGES));

    // Read the pool's memory through its memfd at the grant's offset: the guest's pattern.
    let memfd = File::from(pool.memfd().try_clone_to_owned().unwrap());
    let mut bytes = vec![0u8; grant.len_bytes() as usize];
    memfd
        .read_exact_at(&mut bytes, grant.offset_bytes())
        .unwrap();
    for (i, word) in bytes.chunks_exact(8).enumerate() {
        let a = gpa + 8 * i as u64;
        assert_eq!(
            u64::from_le_bytes(word.try_into().unwrap()),
            a ^ FILL_KEY,
            "word {i} of the grant"
        );
    }
}

#[test]
fn guest_frees_its_grant_and_the_window_is_empty_again() {
    let Some(hv) = support::hypervisor_or_skip("gcma free") else {
        return;
    };
    let pool = Pool::new(PoolConfig::new(POOL_PAGES)).unwrap();
    let out = SharedBuffer::default();
    let (mut vm, window) = setup(&hv, &pool, &out);
    vm.set_payload_arg(gcma_arg(1000, false));
    vm.load_payload(BuiltinPayload::Gcma.elf()).unwrap();
    let outcome = support::run(&mut vm).unwrap();
    let text = String::from_utf8(out.contents()).unwrap();
    assert_eq!(outcome, VmOutcome::Exited { code: 0 }, "{text}");
    granted_gpa(&text, 1000);
    assert!(text.ends_with("gcma: freed\n"), "{text:?}");
    assert_eq!(window.usage().grants, 0);
    assert_eq!(window.usage().free_bytes, 64 << 20);
}

#[test]
fn a_grant_larger_than_the_pool_is_refused_to_the_guest() {
    let Some(hv) = support::hypervisor_or_skip("gcma refusal") else {
        return;
    };
    let pool = Pool::new(PoolConfig::new(POOL_PAGES)).unwrap();
    let out = SharedBuffer::default();
    let (mut vm, window) = setup(&hv, &pool, &out);
    vm.set_payload_arg(gcma_arg(POOL_PAGES as u32 + 1, false));
    vm.load_payload(BuiltinPayload::Gcma.elf()).unwrap();
    assert_eq!(
        support::run(&mut vm).unwrap(),
        VmOutcome::Exited { code: 4 }
    );
    assert!(String::from_utf8_lossy(&out.contents()).contains("ALLOC_CONTIG of 4097 pages failed"));
    assert_eq!(window.usage().grants, 0);
}
