//! 10,000 grant map/unmap cycles leak nothing: no descriptors, mappings, window space or memory
//! slots. Alone in its own test binary so that no other test opens descriptors meanwhile.

mod support;

use support::{grant, pool_memfd};

use std::os::fd::AsFd;

use balloon::gcma::GrantMapper;
use gcma_host::api::ContigGrant;
use vmm::abi::PAGE_SIZE;
use vmm::kvm::vm::SharedBuffer;
use vmm::{MicroVm, SerialOutput, VmConfig};

fn count(dir_or_file: &str) -> usize {
    if dir_or_file.ends_with("maps") {
        std::fs::read_to_string(dir_or_file)
            .unwrap()
            .lines()
            .count()
    } else {
        std::fs::read_dir(dir_or_file).unwrap().count()
    }
}

#[test]
fn ten_thousand_grant_cycles_leak_nothing() {
    let Some(hv) = support::hypervisor_or_skip("grant cycles") else {
        return;
    };
    let pool = pool_memfd(64 << 20);
    let out = SharedBuffer::default();
    let config = VmConfig {
        mem_bytes: 16 << 20,
        serial: SerialOutput::Buffer(out.clone()),
        grant_window_bytes: 1 << 30,
        ..VmConfig::default()
    };
    let vm = MicroVm::new(&hv, &config).unwrap();
    let mapper = vm.grant_mapper().unwrap();
    let window = mapper.usage().free_bytes;
    // Warm up (hash map and allocator growth), then measure.
    let warm = mapper.map(pool.as_fd(), &grant(0, 1), 1).unwrap();
    mapper.unmap(warm, &grant(0, 1)).unwrap();
    let (fds, maps) = (count("/proc/self/fd"), count("/proc/self/maps"));

    let mut live: Vec<(u64, ContigGrant)> = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..10_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let nr_pages = 1 + seed % 64;
        let first_page = (seed >> 8) % (16384 - nr_pages);
        let align = 1 << ((seed >> 40) % 5);
        let g = grant(first_page, nr_pages);
        let gpa = mapper.map(pool.as_fd(), &g, align).unwrap();
        assert_eq!(gpa % (align * PAGE_SIZE), 0);
        live.push((gpa, g));
        // Keep up to 8 grants live, freeing a pseudo-random one.
        if live.len() > 8 || seed & 1 == 0 {
            let (gpa, g) = live.swap_remove((seed >> 20) as usize % live.len());
            mapper.unmap(gpa, &g).unwrap();
        }
    }
    for (gpa, g) in live.drain(..) {
        mapper.unmap(gpa, &g).unwrap();
    }
    let usage = mapper.usage();
    assert_eq!(usage.mapped, 0);
    assert_eq!(usage.free_bytes, window, "window space leaked");
    assert!(usage.slots_used <= 10, "slots not recycled: {usage:?}");
    assert_eq!(count("/proc/self/fd"), fds, "file descriptors leaked");
    assert_eq!(count("/proc/self/maps"), maps, "mappings leaked");
}
