//! The grant window: pool pages mapped into a running guest's address space, written by guest
//! code, visible in the pool's memory; window errors reported; and a guest that touches a part of
//! the window where no grant is mapped gets a reported fault, not host memory.

mod support;

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use balloon::gcma::{GrantError, GrantWindow};
use gcma_host::api::GcmaBackend;
use gcma_host::pool::{Pool, PoolConfig};
use vmm::abi::{GRANT_WINDOW_BASE, PAGE_SIZE};
use vmm::kvm::vm::{GrantMapping, SharedBuffer};
use vmm::payloads::{fill_arg, BuiltinPayload, FILL_KEY};
use vmm::{MicroVm, SerialOutput, VmConfig, VmOutcome};

fn vm_with_window(
    hv: &vmm::Hypervisor,
    window: u64,
    mapping: GrantMapping,
    out: &SharedBuffer,
) -> MicroVm {
    let config = VmConfig {
        mem_bytes: 16 << 20,
        serial: SerialOutput::Buffer(out.clone()),
        grant_window_bytes: window,
        grant_mapping: mapping,
        ..VmConfig::default()
    };
    MicroVm::new(hv, &config).unwrap()
}

fn pool_file(pool: &Pool) -> std::fs::File {
    std::fs::File::from(pool.memfd().try_clone_to_owned().unwrap())
}

fn guest_writes_land_in_pool_memory(mapping: GrantMapping) {
    let Some(hv) = support::hypervisor_or_skip("grant window") else {
        return;
    };
    let pool = Pool::new(PoolConfig::new(4096)).unwrap();
    let client = pool.register_client("vm");
    let out = SharedBuffer::default();
    let mut vm = vm_with_window(&hv, 1 << 30, mapping, &out);
    let window: Arc<GrantWindow> = vm.bind_grant_window(pool.clone()).unwrap();
    // A first grant pushes the second one off the window's base.
    let (other, _) = window.alloc(client, 3, 1).unwrap();
    assert_eq!(other, GRANT_WINDOW_BASE);
    let (gpa, g) = window.alloc(client, 8, 4).unwrap();
    assert_eq!(gpa % (4 * PAGE_SIZE), 0, "alignment in pages is honoured");
    assert_eq!(gpa, GRANT_WINDOW_BASE + 4 * PAGE_SIZE);
    assert_eq!(g.first_page % 4, 0, "the pool run is aligned too");
    vm.set_payload_arg(fill_arg(gpa, g.nr_pages, false));
    vm.load_payload(BuiltinPayload::Fill.elf()).unwrap();
    assert_eq!(
        support::run(&mut vm).unwrap(),
        VmOutcome::Exited { code: 0 }
    );
    assert_eq!(
        String::from_utf8(out.contents()).unwrap(),
        format!("fill: wrote 8 pages at {gpa:#x}\n")
    );

    // Host side: the pattern is in the pool's memory at the grant's offset, nowhere else.
    let file = pool_file(&pool);
    let mut bytes = vec![0u8; g.len_bytes() as usize];
    file.read_exact_at(&mut bytes, g.offset_bytes()).unwrap();
    for (i, word) in bytes.chunks_exact(8).enumerate() {
        let a = gpa + 8 * i as u64;
        assert_eq!(u64::from_le_bytes(word.try_into().unwrap()), a ^ FILL_KEY);
    }
    let mut before = vec![0u8; PAGE_SIZE as usize];
    file.read_exact_at(&mut before, g.offset_bytes() - PAGE_SIZE)
        .unwrap();
    assert!(before.iter().all(|&b| b == 0));

    window.free(client, gpa).unwrap();
    assert_eq!(window.usage().grants, 1);
    window.free(client, other).unwrap();
    assert_eq!(window.usage().grants, 0);
    assert_eq!(pool.stats().granted_pages, 0);
}

#[test]
fn guest_writes_to_a_grant_land_in_pool_memory_at_the_grant_offset() {
    guest_writes_land_in_pool_memory(GrantMapping::OneSlot);
}

#[test]
fn guest_writes_land_in_pool_memory_with_a_slot_per_grant() {
    guest_writes_land_in_pool_memory(GrantMapping::SlotPerGrant);
}

#[test]
fn unmapping_errors_and_a_full_window_are_reported() {
    let Some(hv) = support::hypervisor_or_skip("grant window errors") else {
        return;
    };
    let pool = Pool::new(PoolConfig::new(1024)).unwrap();
    let client = pool.register_client("vm");
    let stranger = pool.register_client("another vm");
    let out = SharedBuffer::default();
    let vm = vm_with_window(&hv, 2 << 20, GrantMapping::OneSlot, &out);
    let window = vm.bind_grant_window(pool.clone()).unwrap();
    assert!(matches!(
        window.free(client, GRANT_WINDOW_BASE),
        Err(GrantError::UnknownGrant(_))
    ));
    let (a, _) = window.alloc(client, 256, 1).unwrap();
    let (b, _) = window.alloc(client, 256, 1).unwrap();
    assert!(matches!(
        window.alloc(client, 1, 1),
        Err(GrantError::WindowFull { .. })
    ));
    // Another client cannot free it; nothing changes.
    assert!(matches!(
        window.free(stranger, a),
        Err(GrantError::UnknownGrant(_))
    ));
    window.free(client, a).unwrap();
    assert!(matches!(
        window.free(client, a),
        Err(GrantError::UnknownGrant(_))
    ));
    // Freed space is reused, lowest address first.
    assert_eq!(window.alloc(client, 256, 1).unwrap().0, a);
    window.free(client, b).unwrap();
    window.free(client, a).unwrap();
    assert_eq!(window.usage().free_bytes, 2 << 20);
    assert_eq!(pool.stats().granted_pages, 0);
}

/// A guest touching a part of its window where no grant is mapped (never mapped, or freed) gets a
/// fault the VMM reports (with the address where KVM gives it); it never reaches host memory, and
/// the VMM neither crashes nor hangs.
#[test]
fn touching_an_unmapped_window_page_is_a_reported_fault() {
    let Some(hv) = support::hypervisor_or_skip("grant window fault") else {
        return;
    };
    let pool = Pool::new(PoolConfig::new(1024)).unwrap();
    let client = pool.register_client("vm");
    for (mapping, freed) in [
        (GrantMapping::OneSlot, false),
        (GrantMapping::OneSlot, true),
        (GrantMapping::SlotPerGrant, true),
    ] {
        let out = SharedBuffer::default();
        let mut vm = vm_with_window(&hv, 2 << 20, mapping, &out);
        let window = vm.bind_grant_window(pool.clone()).unwrap();
        let target = if freed {
            let (gpa, _) = window.alloc(client, 4, 1).unwrap();
            window.free(client, gpa).unwrap();
            gpa
        } else {
            // Beyond the one grant mapped.
            let (gpa, _) = window.alloc(client, 4, 1).unwrap();
            gpa + 4 * PAGE_SIZE
        };
        vm.set_payload_arg(fill_arg(target, 1, true));
        vm.load_payload(BuiltinPayload::Fill.elf()).unwrap();
        match support::run(&mut vm).unwrap() {
            VmOutcome::MemoryFault { gpa, .. } => {
                // KVM reports the address when it knows it (an MMIO exit with no slot there,
                // KVM_EXIT_MEMORY_FAULT); EFAULT alone (kvm-pvm, older KVM) carries none.
                if let Some(gpa) = gpa {
                    assert_eq!(gpa, target, "{mapping:?} freed={freed}");
                }
            }
            other => panic!("{mapping:?} freed={freed}: expected a memory fault, got {other:?}"),
        }
        for (gpa, _) in window.grants() {
            window.free(client, gpa).unwrap();
        }
    }
    assert_eq!(pool.stats().granted_pages, 0);
}
