//! 10,000 grant map/unmap cycles through a VM's grant window leak nothing: no descriptors,
//! mappings, window space or pool pages. Alone in its own test binary so that no other test opens
//! descriptors meanwhile.

mod support;

use gcma_host::api::GcmaBackend;
use gcma_host::pool::{Pool, PoolConfig};
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
    let pool = Pool::new(PoolConfig::new(16384)).unwrap();
    let client = pool.register_client("leak");
    let out = SharedBuffer::default();
    let config = VmConfig {
        mem_bytes: 16 << 20,
        serial: SerialOutput::Buffer(out.clone()),
        grant_window_bytes: 1 << 30,
        ..VmConfig::default()
    };
    let vm = MicroVm::new(&hv, &config).unwrap();
    let mapper = vm.bind_grant_window(pool.clone()).unwrap();
    let window = mapper.usage().free_bytes;
    // The cycles run where a guest's grant requests are served: on a vCPU thread, under its
    // seccomp filter. Warm up (map and allocator growth, and the thread stack, which the C
    // library keeps for the next thread), then measure.
    vmm::seccomp::on_vcpu_thread("vcpu0", || {
        let (warm, _) = mapper.alloc(client, 1, 1).unwrap();
        mapper.free(client, warm).unwrap();
    })
    .unwrap();
    let (fds, maps) = (count("/proc/self/fd"), count("/proc/self/maps"));

    vmm::seccomp::on_vcpu_thread("vcpu0", || {
        let mut live: Vec<u64> = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let nr_pages = 1 + seed % 64;
            let align = 1 << ((seed >> 40) % 5);
            let (gpa, g) = mapper.alloc(client, nr_pages, align).unwrap();
            assert_eq!(gpa % (align * PAGE_SIZE), 0);
            assert_eq!(g.nr_pages, nr_pages);
            live.push(gpa);
            // Keep up to 8 grants live, freeing a pseudo-random one.
            if live.len() > 8 || seed & 1 == 0 {
                let gpa = live.swap_remove((seed >> 20) as usize % live.len());
                mapper.free(client, gpa).unwrap();
            }
        }
        for gpa in live.drain(..) {
            mapper.free(client, gpa).unwrap();
        }
    })
    .unwrap();
    let usage = mapper.usage();
    assert_eq!(usage.grants, 0);
    assert_eq!(usage.free_bytes, window, "window space leaked");
    assert_eq!(pool.stats().granted_pages, 0, "pool pages leaked");
    assert_eq!(count("/proc/self/fd"), fds, "file descriptors leaked");
    assert_eq!(count("/proc/self/maps"), maps, "mappings leaked");
}
