//! The grant window: pool pages mapped into a running guest's address space, written by guest
//! code, visible in the pool memfd; and 10,000 map/unmap cycles that leak nothing.

mod support;

use support::{grant, pool_memfd};

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use balloon::gcma::{GrantMapper, MapError};
use vmm::abi::{GRANT_WINDOW_BASE, PAGE_SIZE};
use vmm::kvm::vm::SharedBuffer;
use vmm::payloads::{fill_arg, BuiltinPayload, FILL_KEY};
use vmm::{MicroVm, SerialOutput, VmConfig, VmOutcome};

fn vm_with_window(hv: &vmm::Hypervisor, window: u64, out: &SharedBuffer) -> MicroVm {
    let config = VmConfig {
        mem_bytes: 16 << 20,
        serial: SerialOutput::Buffer(out.clone()),
        grant_window_bytes: window,
        ..VmConfig::default()
    };
    MicroVm::new(hv, &config).unwrap()
}

#[test]
fn guest_writes_to_a_grant_land_in_pool_memory_at_the_grant_offset() {
    let Some(hv) = support::hypervisor_or_skip("grant window") else {
        return;
    };
    let pool = pool_memfd(16 << 20);
    let g = grant(100, 8);
    let out = SharedBuffer::default();
    let mut vm = vm_with_window(&hv, 1 << 30, &out);
    let mapper = vm.grant_mapper().unwrap();
    // A first grant pushes the second one off the window's base.
    let other = mapper.map(pool.as_fd(), &grant(0, 3), 1).unwrap();
    assert_eq!(other, GRANT_WINDOW_BASE);
    let gpa = mapper.map(pool.as_fd(), &g, 4).unwrap();
    assert_eq!(gpa % (4 * PAGE_SIZE), 0, "alignment in pages is honoured");
    assert_eq!(gpa, GRANT_WINDOW_BASE + 4 * PAGE_SIZE);
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

    // Host side: the pattern is in the pool memfd at the grant's offset, nowhere else.
    let mut bytes = vec![0u8; g.len_bytes() as usize];
    pool.read_exact_at(&mut bytes, g.offset_bytes()).unwrap();
    for (i, word) in bytes.chunks_exact(8).enumerate() {
        let a = gpa + 8 * i as u64;
        assert_eq!(u64::from_le_bytes(word.try_into().unwrap()), a ^ FILL_KEY);
    }
    let mut before = vec![0u8; PAGE_SIZE as usize];
    pool.read_exact_at(&mut before, g.offset_bytes() - PAGE_SIZE)
        .unwrap();
    assert!(before.iter().all(|&b| b == 0));

    let mapper = vm.grant_mapper().unwrap();
    mapper.unmap(gpa, &g).unwrap();
    assert_eq!(mapper.usage().mapped, 1);
    mapper.unmap(other, &grant(0, 3)).unwrap();
    assert_eq!(mapper.usage().mapped, 0);
}

#[test]
fn unmapping_errors_and_a_full_window_are_reported() {
    let Some(hv) = support::hypervisor_or_skip("grant window errors") else {
        return;
    };
    let pool = pool_memfd(1 << 20);
    let out = SharedBuffer::default();
    let vm = vm_with_window(&hv, 2 << 20, &out);
    let mapper = vm.grant_mapper().unwrap();
    let g = grant(0, 256);
    assert!(matches!(
        mapper.unmap(GRANT_WINDOW_BASE, &g),
        Err(MapError::NotMapped(_))
    ));
    let a = mapper.map(pool.as_fd(), &g, 1).unwrap();
    let b = mapper.map(pool.as_fd(), &g, 1).unwrap();
    assert!(matches!(
        mapper.map(pool.as_fd(), &grant(0, 1), 1),
        Err(MapError::WindowFull { .. })
    ));
    // Wrong length for the address: refused, nothing changes.
    assert!(matches!(
        mapper.unmap(a, &grant(0, 1)),
        Err(MapError::NotMapped(_))
    ));
    mapper.unmap(a, &g).unwrap();
    assert!(matches!(mapper.unmap(a, &g), Err(MapError::NotMapped(_))));
    // Freed space is reused, lowest address first.
    assert_eq!(mapper.map(pool.as_fd(), &g, 1).unwrap(), a);
    mapper.unmap(b, &g).unwrap();
    mapper.unmap(a, &g).unwrap();
    assert_eq!(mapper.usage().free_bytes, 2 << 20);
}
