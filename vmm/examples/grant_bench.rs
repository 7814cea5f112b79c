//! What a contiguous grant costs a guest, under the two ways of mapping grants, side by side in
//! one run ([`GrantMapping::OneSlot`]: one memory slot over the window, grants `mmap`ped into it;
//! [`GrantMapping::SlotPerGrant`]: a KVM memory slot added and removed per grant).
//!
//! 1. **1-page grant latency as the guest sees it**, with no tenants: the `agent` payload times
//!    `ALLOC_CONTIG` (request to response, `rdtsc`) through virtio-gcma. Baseline in the same run:
//!    the same payload timing a bare MMIO exit round trip (a mailbox register read), the floor
//!    under any request a guest makes by notification.
//! 2. **First touch of a grant**: the host grants N pages into the window (from an idle pool whose
//!    pages are all known-zero, so no zeroing is timed), then the `fill` payload writes the first
//!    word of every page. Baseline: the same payload touching as many pages of ordinary, populated
//!    guest RAM.
//!
//! 3. **First touch of a 32000-page grant by pool backing**: the same grant + touch from a pool
//!    of 4 KiB pages, of shmem THP and of 2 MiB hugetlb pages (`--hugepages`), interleaved. The
//!    grant is placed 2 MiB-aligned in pool and window, so KVM can map it with 2 MiB entries if
//!    the host's KVM does. Skipped (said so) when the host has no huge pages set up.
//!
//! Run: `cargo run --release -p vmm --example grant_bench` (`-- --huge-only` for section 3
//! alone). Ends with `RESULT grant_1page_over_exit=<x>` (one-slot design, p50 over p50; goal
//! ≤ 1.5), `RESULT grant_touch_32000_over_ram=<x>` (goal ≤ 1.1) and
//! `RESULT grant_touch_huge_over_4k=<x>` (hugetlb over 4 KiB; goal ≤ 0.2).

use std::sync::Arc;
use std::time::Instant;

use crossbeam::channel::bounded;
use gcma_host::api::GcmaBackend;
use gcma_host::pool::{Pool, PoolConfig};
use vm_memory::{Bytes, GuestAddress};
use vmm::abi::*;
use vmm::devices::mailbox;
use vmm::kvm::vm::GrantMapping;
use vmm::launch::VmBuilder;
use vmm::payloads::{fill_arg, BuiltinPayload};
use vmm::{Hypervisor, MicroVm, SerialOutput, VmConfig, VmOutcome};

const LATENCY_REPS: u64 = 400;
const ROUNDS: usize = 5;
const TOUCH_SIZES: [u64; 5] = [512, 1024, 4096, 16384, 32000];
const TOUCH_REPEATS: usize = 7;
const VM_MEM: u64 = 256 << 20;
/// Where the RAM baseline's pages start (above the payload, below the stack).
const RAM_TOUCH_BASE: u64 = 64 << 20;
const PAGE: u64 = 4096;

const DESIGNS: [(GrantMapping, &str); 2] = [
    (GrantMapping::OneSlot, "one slot, mmap per grant"),
    (GrantMapping::SlotPerGrant, "a memory slot per grant"),
];

fn config(mapping: GrantMapping) -> VmConfig {
    VmConfig {
        mem_bytes: VM_MEM,
        serial: SerialOutput::Sink,
        grant_window_bytes: 256 << 20,
        grant_mapping: mapping,
        ..VmConfig::default()
    }
}

/// Runs the agent payload in `role` with `params` and returns the values of its `tag` events.
fn agent_samples(
    hv: &Hypervisor,
    pool: &Arc<Pool>,
    mapping: GrantMapping,
    params: Vec<u64>,
    tag: u64,
) -> Vec<u64> {
    let built = VmBuilder::new("bench", config(mapping), "agent")
        .gcma(pool.clone())
        .build(hv)
        .expect("build the VM");
    let mut vm = built.vm;
    // Read only after the run: room for every sample the payload sends.
    let (tx, rx) = bounded(1 << 16);
    mailbox::attach(&mut vm, 0, params, tx).expect("mailbox");
    vm.load_payload(BuiltinPayload::Agent.elf()).expect("load");
    assert_eq!(vm.run().expect("run"), VmOutcome::Exited { code: 0 });
    rx.try_iter()
        .filter(|e| e.tag == tag)
        .map(|e| e.value)
        .collect()
}

fn p50(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn p99(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

fn latency_section(hv: &Hypervisor, pool: &Arc<Pool>) -> Vec<f64> {
    let per_us = vmm::payloads::tsc_hz() / 1e6;
    let mut grant: Vec<Vec<f64>> = vec![Vec::new(); DESIGNS.len()];
    let mut exit: Vec<Vec<f64>> = vec![Vec::new(); DESIGNS.len()];
    for _ in 0..ROUNDS {
        for (i, (mapping, _)) in DESIGNS.iter().enumerate() {
            let g = vec![DEMO_ROLE_GRANTS, 0, LATENCY_REPS, 1, 1];
            grant[i].extend(
                agent_samples(hv, pool, *mapping, g, EV_GRANT_CYCLES)
                    .into_iter()
                    .map(|c| c as f64 / per_us),
            );
            let e = vec![DEMO_ROLE_EXITS, 0, LATENCY_REPS];
            exit[i].extend(
                agent_samples(hv, pool, *mapping, e, EV_EXIT_CYCLES)
                    .into_iter()
                    .map(|c| c as f64 / per_us),
            );
        }
    }
    println!(
        "1-page grant as the guest sees it (ALLOC_CONTIG request to response), no tenants, \
         {} grants per design, interleaved",
        ROUNDS as u64 * LATENCY_REPS
    );
    println!(
        "{:<28} {:>12} {:>12} {:>12} {:>12} {:>10}",
        "design", "grant p50 µs", "grant p99 µs", "exit p50 µs", "exit p99 µs", "grant/exit"
    );
    let mut ratios = Vec::new();
    for (i, (_, name)) in DESIGNS.iter().enumerate() {
        let (g50, g99) = (p50(&mut grant[i]), p99(&mut grant[i]));
        let (e50, e99) = (p50(&mut exit[i]), p99(&mut exit[i]));
        println!(
            "{name:<28} {g50:>12.1} {g99:>12.1} {e50:>12.1} {e99:>12.1} {:>9.2}x",
            g50 / e50
        );
        ratios.push(g50 / e50);
    }
    ratios
}

/// Grants `nr_pages` into a fresh VM's window (pool pages known-zero, so the pool does not zero)
/// and lets the guest write the first word of each page. Times grant + touch.
fn grant_touch(hv: &Hypervisor, pool: &Arc<Pool>, mapping: GrantMapping, nr_pages: u64) -> f64 {
    pool.zero_idle_pages(u64::MAX);
    let mut vm = MicroVm::new(hv, &config(mapping)).expect("create VM");
    let window = vm.bind_grant_window(pool.clone()).expect("grant window");
    let client = pool.register_client("touch");
    let start = Instant::now();
    let (gpa, _) = window.alloc(client, nr_pages, 1).expect("grant");
    vm.set_payload_arg(fill_arg(gpa, nr_pages, true));
    vm.load_payload(BuiltinPayload::Fill.elf()).expect("load");
    assert_eq!(vm.run().expect("run"), VmOutcome::Exited { code: 0 });
    let elapsed = start.elapsed();
    window.free(client, gpa).expect("free");
    pool.unregister_client(client).expect("unregister");
    elapsed.as_secs_f64() * 1e3
}

/// The same payload touching as many pages of ordinary (populated) guest RAM.
fn ram_touch(hv: &Hypervisor, nr_pages: u64) -> f64 {
    let mut vm = MicroVm::new(hv, &config(GrantMapping::OneSlot)).expect("create VM");
    let chunk = vec![1u8; 1 << 20];
    let len = nr_pages * PAGE;
    for off in (0..len).step_by(chunk.len()) {
        let n = (len - off).min(chunk.len() as u64) as usize;
        vm.ram()
            .memory()
            .write_slice(&chunk[..n], GuestAddress(RAM_TOUCH_BASE + off))
            .expect("populate RAM");
    }
    let start = Instant::now();
    vm.set_payload_arg(fill_arg(RAM_TOUCH_BASE, nr_pages, true));
    vm.load_payload(BuiltinPayload::Fill.elf()).expect("load");
    assert_eq!(vm.run().expect("run"), VmOutcome::Exited { code: 0 });
    start.elapsed().as_secs_f64() * 1e3
}

fn touch_section(hv: &Hypervisor, pool: &Arc<Pool>) -> f64 {
    println!();
    println!(
        "grant + guest first write of every page, {TOUCH_REPEATS} runs per size, interleaved \
         (ms, p50; ratio = grant / ordinary RAM)"
    );
    print!("{:>7} {:>10}", "pages", "RAM");
    for (_, name) in DESIGNS {
        print!(" {name:>28} {:>7}", "ratio");
    }
    println!();
    let mut at_max = 0.0;
    for nr_pages in TOUCH_SIZES {
        let mut ram = Vec::new();
        let mut grant: Vec<Vec<f64>> = vec![Vec::new(); DESIGNS.len()];
        for _ in 0..TOUCH_REPEATS {
            ram.push(ram_touch(hv, nr_pages));
            for (i, (mapping, _)) in DESIGNS.iter().enumerate() {
                grant[i].push(grant_touch(hv, pool, *mapping, nr_pages));
            }
        }
        let r = p50(&mut ram);
        print!("{nr_pages:>7} {r:>10.3}");
        for (i, g) in grant.iter_mut().enumerate() {
            let g = p50(g);
            print!(" {g:>28.3} {:>6.2}x", g / r);
            if i == 0 && nr_pages == *TOUCH_SIZES.last().expect("sizes") {
                at_max = g / r;
            }
        }
        println!();
    }
    at_max
}

/// Section 3: grant + first touch of 32000 pages from 4 KiB, THP and hugetlb pools. Returns
/// hugetlb over 4 KiB (p50 over p50), if the host has hugetlb pages.
fn huge_section(hv: &Hypervisor) -> Option<f64> {
    use gcma_host::huge::{self, HugePages};
    const NR: u64 = 32000;
    const POOL_PAGES: u64 = 32768;
    println!();
    println!(
        "grant + guest first write of every page of a {NR}-page grant, by pool backing, \
         {TOUCH_REPEATS} runs interleaved (ms, p50; ratio = over 4 KiB)"
    );
    let mut pools = Vec::new();
    for backing in [HugePages::Off, HugePages::Thp, HugePages::Hugetlb] {
        if let Err(why) = huge::available(backing, POOL_PAGES * PAGE) {
            println!("{backing:>8}: not measured: {why}");
            continue;
        }
        let pool = Pool::new(PoolConfig {
            huge_pages: backing,
            ..PoolConfig::new(POOL_PAGES)
        })
        .expect("pool");
        pools.push((backing, pool, Vec::new()));
    }
    for _ in 0..TOUCH_REPEATS {
        for (_, pool, times) in &mut pools {
            times.push(grant_touch(hv, pool, GrantMapping::OneSlot, NR));
        }
    }
    let base = p50(&mut pools[0].2);
    let mut huge_over_4k = None;
    for (backing, _, times) in &mut pools {
        let t = p50(times);
        println!(
            "{backing:>8}: {t:>9.3} ms  {:>6.1} µs per 2 MiB  {:>6.2}x",
            t * 1e3 / (NR as f64 / 512.0),
            t / base
        );
        if *backing == HugePages::Hugetlb {
            huge_over_4k = Some(t / base);
        }
    }
    huge_over_4k
}

fn main() {
    let hv = match Hypervisor::open() {
        Ok(hv) => hv,
        Err(e) => {
            eprintln!("grant_bench: /dev/kvm unusable: {e}");
            std::process::exit(1);
        }
    };
    if std::env::args().any(|a| a == "--huge-only") {
        let huge = huge_section(&hv);
        println!();
        if let Some(h) = huge {
            println!("RESULT grant_touch_huge_over_4k={h:.2}");
        }
        return;
    }
    let pool = Pool::new(PoolConfig::new(32768)).expect("pool");
    let ratios = latency_section(&hv, &pool);
    let touch = touch_section(&hv, &pool);
    drop(pool);
    let huge = huge_section(&hv);
    println!();
    println!("RESULT grant_1page_over_exit={:.2}", ratios[0]);
    println!(
        "RESULT grant_1page_over_exit_slot_per_grant={:.2}",
        ratios[1]
    );
    println!("RESULT grant_touch_32000_over_ram={touch:.2}");
    if let Some(h) = huge {
        println!("RESULT grant_touch_huge_over_4k={h:.2}");
    }
}
