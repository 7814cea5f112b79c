//! Range allocator benchmark: the test_vmalloc.ko scenarios against our allocator, rust-vmm's
//! `vm-allocator` 0.1.4, Dragonball's `dbs-allocator` 0.1.1 and a pre-2019-vmalloc-style busy list,
//! all driven by the same seeded operation stream, all measured in this run.
//!
//! ```text
//! cargo run --release -p gcma-host --example range_bench
//! ```
//!
//! Units are 4 KiB pages (page numbers) for every allocator. Each timed cell runs its scenario in
//! growing chunks until it has spent about [`CELL_BUDGET`] or done [`MAX_PAIRS`] alloc attempts
//! (test_vmalloc's default loop count), so slow baselines run fewer loops; the loop count of every
//! cell is printed. Before timing, an untimed pass runs every scenario through a checking wrapper
//! (bounds, alignment, no overlap with live blocks, `free` returns the allocated length) and
//! compares each allocator's answers op for op with the busy list's, which is simple enough to
//! trust. The output ends with three `RESULT` lines that scripts read.

#[path = "range_bench/adapters.rs"]
mod adapters;
#[path = "range_bench/scenarios.rs"]
mod scenarios;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use adapters::{BusyList, Checked, DbsAllocator, Ours, RangeAlloc, VmAllocator};
use scenarios::{human, Rng, Scenario, Stats, BASE, SEED, SPAN};

/// Wall-clock budget of one timed cell.
const CELL_BUDGET: Duration = Duration::from_millis(250);
/// Upper bound of alloc attempts per cell (test_vmalloc's `test_loop_count`).
const MAX_PAIRS: u64 = 1_000_000;
/// Busy-block counts of the scaling table.
const SCALING_SIZES: [u64; 4] = [1_000, 15_000, 100_000, 1_000_000];
/// Skip a scaling cell when its single loop is estimated to take longer than this.
const SCALING_MAX_LOOP: Duration = Duration::from_secs(2);
/// Skip a scaling cell when its setup is estimated to take longer than this.
const SCALING_MAX_SETUP: Duration = Duration::from_secs(6);
/// A batch scenario (pcpu-like) stops allocating after this long and frees what it got.
const BATCH_LIMIT: Duration = Duration::from_secs(1);
/// Duration of each threaded run.
const THREAD_RUN: Duration = Duration::from_millis(500);

/// CPU time this thread has used. Timings are CPU time, not wall time: these machines are shared
/// and a descheduled benchmark thread would otherwise be charged for other people's builds.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_THREAD_CPUTIME_ID is supported on Linux;
    // clock_gettime writes only into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One timed cell.
#[derive(Clone)]
struct Cell {
    /// CPU ns per alloc attempt.
    ns_per_pair: f64,
    /// CPU time / wall time while timing (below 1 when other work shared the core).
    cpu_share: f64,
    loops: u64,
    stats: Stats,
    setup: Duration,
    /// Anything that went wrong (setup failure, unexpected alloc failures, leaks).
    problems: Vec<String>,
}

impl Cell {
    fn broken(why: String) -> Self {
        Cell {
            ns_per_pair: f64::NAN,
            cpu_share: f64::NAN,
            loops: 0,
            stats: Stats::default(),
            setup: Duration::ZERO,
            problems: vec![why],
        }
    }
}

/// Runs `sc` on a fresh `A` for about `budget` and reports ns per alloc attempt.
fn measure<A: RangeAlloc>(sc: Scenario, budget: Duration) -> Cell {
    let mut a = A::create(BASE, SPAN);
    let t = Instant::now();
    let kept = match sc.setup(&mut a) {
        Ok(k) => k,
        Err(e) => return Cell::broken(format!("setup: {e}")),
    };
    let setup = t.elapsed();
    let mut rng = Rng::new(SEED);
    let mut stats = Stats::default();
    let mut buf = Vec::new();
    let max_loops = (MAX_PAIRS / sc.pairs_per_loop()).max(1);
    let mut chunk = 1u64;
    let mut loops = 0u64;
    let start = Instant::now();
    let cpu_start = thread_cpu_time();
    stats.deadline = Some(start + BATCH_LIMIT);
    let (wall, cpu) = loop {
        sc.run(&mut a, &mut rng, chunk, &mut stats, &mut buf);
        loops += chunk;
        let el = start.elapsed();
        if el >= budget.mul_f64(0.95) || loops >= max_loops {
            break (el, thread_cpu_time() - cpu_start);
        }
        // Aim the next chunk at the remaining budget, growing at most 4x at a time.
        let per_loop = el.as_secs_f64() / loops as f64;
        let want = ((budget - el).as_secs_f64() / per_loop.max(1e-12)) as u64;
        chunk = want
            .clamp(1, chunk.saturating_mul(4))
            .min(max_loops - loops);
    };
    let mut problems = Vec::new();
    let expected = sc.expected_failures_per_loop() * loops;
    if stats.truncated {
        problems.push(format!(
            "batch cut short after {} s: timed {} of {} allocs (the cheap start of the batch, \
             so this flatters it)",
            BATCH_LIMIT.as_secs(),
            stats.pairs,
            sc.pairs_per_loop()
        ));
    }
    if stats.failed != expected {
        problems.push(format!(
            "{} failed allocs, {} expected",
            stats.failed, expected
        ));
    }
    let leaked = sc.teardown(&mut a, &kept);
    if leaked != 0 {
        problems.push(format!("{leaked} setup blocks not freed"));
    }
    if let Some(free) = a.free_units() {
        if free != SPAN {
            problems.push(format!(
                "{} units free after teardown, {SPAN} expected",
                free
            ));
        }
    }
    Cell {
        ns_per_pair: cpu.as_nanos() as f64 / stats.pairs.max(1) as f64,
        cpu_share: cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
        loops,
        stats,
        setup,
        problems,
    }
}

/// Outcome of the untimed checking pass of one allocator on one scenario.
struct CheckOutcome {
    violations: u64,
    first_violation: Option<String>,
    trace: Vec<u64>,
    failed: u64,
    expected_failed: u64,
}

fn check<A: RangeAlloc>(sc: Scenario, loops: u64) -> CheckOutcome {
    let mut a = Checked::<A>::create(BASE, SPAN);
    let mut setup_problem = None;
    let kept = sc.setup(&mut a).unwrap_or_else(|e| {
        setup_problem = Some(format!("setup: {e}"));
        Vec::new()
    });
    let mut rng = Rng::new(SEED);
    let mut stats = Stats::default();
    let mut buf = Vec::new();
    sc.run(&mut a, &mut rng, loops, &mut stats, &mut buf);
    sc.teardown(&mut a, &kept);
    let mut violations = a.violations;
    let mut first_violation = a.first_violation.clone().or(setup_problem);
    if a.live_units() != 0 {
        violations += 1;
        first_violation.get_or_insert(format!("{} units still live", a.live_units()));
    }
    if let Some(free) = a.inner().free_units() {
        if free != SPAN {
            violations += 1;
            first_violation.get_or_insert(format!("{free} units free at the end, {SPAN} expected"));
        }
    }
    CheckOutcome {
        violations,
        first_violation,
        trace: std::mem::take(&mut a.trace),
        failed: stats.failed,
        expected_failed: sc.expected_failures_per_loop() * loops,
    }
}

/// The scenario rows of the main table, with the smaller variant and loop count the check pass
/// uses.
fn scenarios(junk: u64) -> Vec<(Scenario, Scenario, u64)> {
    vec![
        (Scenario::FixSize, Scenario::FixSize, 2000),
        (Scenario::FullFit { junk }, Scenario::FullFit { junk }, 2000),
        (
            Scenario::LongBusyList {
                busy: 15_000,
                holey: false,
            },
            Scenario::LongBusyList {
                busy: 15_000,
                holey: false,
            },
            50,
        ),
        (Scenario::RandomSize, Scenario::RandomSize, 2000),
        (Scenario::FixAlign, Scenario::FixAlign, 2000),
        (Scenario::RandomSizeAlign, Scenario::RandomSizeAlign, 2000),
        (Scenario::AlignShift, Scenario::AlignShift, 50),
        (
            Scenario::Pcpu { batch: 35_000 },
            Scenario::Pcpu { batch: 3_000 },
            2,
        ),
    ]
}

const NAMES: [&str; 4] = [
    Ours::NAME,
    VmAllocator::NAME,
    DbsAllocator::NAME,
    BusyList::NAME,
];

fn measure_all(sc: Scenario) -> [Cell; 4] {
    [
        measure::<Ours>(sc, CELL_BUDGET),
        measure::<VmAllocator>(sc, CELL_BUDGET),
        measure::<DbsAllocator>(sc, CELL_BUDGET),
        measure::<BusyList>(sc, CELL_BUDGET),
    ]
}

fn check_all(sc: Scenario, loops: u64) -> [CheckOutcome; 4] {
    [
        check::<Ours>(sc, loops),
        check::<VmAllocator>(sc, loops),
        check::<DbsAllocator>(sc, loops),
        check::<BusyList>(sc, loops),
    ]
}

fn fmt_ns(ns: f64) -> String {
    if ns.is_nan() {
        "-".into()
    } else if ns >= 100_000.0 {
        format!("{:.0}", ns)
    } else if ns >= 100.0 {
        format!("{:.1}", ns)
    } else {
        format!("{:.2}", ns)
    }
}

fn fmt_cell(c: &Cell, ours: &Cell) -> String {
    if c.ns_per_pair.is_nan() {
        return "broken".into();
    }
    if std::ptr::eq(c, ours) {
        return fmt_ns(c.ns_per_pair);
    }
    format!(
        "{} ({:.1}x)",
        fmt_ns(c.ns_per_pair),
        c.ns_per_pair / ours.ns_per_pair
    )
}

/// Prints how much of the wall time the timed cells got on their core.
fn print_cpu_share<'a>(cells: impl Iterator<Item = &'a Cell>) {
    let mut shares: Vec<f64> = cells.map(|c| c.cpu_share).filter(|s| !s.is_nan()).collect();
    if shares.is_empty() {
        return;
    }
    shares.sort_by(f64::total_cmp);
    println!(
        "  CPU share of the timed cells (CPU time / wall time): min {:.0}%, median {:.0}% \
         (timings are thread CPU time; a low share means a shared, busy machine and noisier numbers)",
        shares[0] * 100.0,
        shares[shares.len() / 2] * 100.0
    );
}

/// One timed scaling cell, or why it was skipped.
enum ScaleCell {
    Ran(Cell),
    Skipped(String),
}

/// long_busy_list at every size in [`SCALING_SIZES`] for `A`, skipping sizes whose loop or setup
/// would take too long, judged from the previous size.
fn scaling_column<A: RangeAlloc>(holey: bool) -> Vec<ScaleCell> {
    let mut out = Vec::new();
    let mut prev: Option<(u64, f64, Duration)> = None;
    for &busy in &SCALING_SIZES {
        if let Some((pn, pns, psetup)) = prev {
            let grow = busy as f64 / pn as f64;
            let est_loop = Duration::from_secs_f64(pns * 2.0 * grow / 1e9);
            let est_setup = psetup.mul_f64(grow * 1.2);
            if est_loop > SCALING_MAX_LOOP || est_setup > SCALING_MAX_SETUP {
                out.push(ScaleCell::Skipped(format!(
                    "skipped (est. {:.1} s/loop, {:.1} s setup)",
                    est_loop.as_secs_f64(),
                    est_setup.as_secs_f64()
                )));
                prev = None;
                continue;
            }
        } else if !out.is_empty() {
            out.push(ScaleCell::Skipped("skipped".into()));
            continue;
        }
        let c = measure::<A>(Scenario::LongBusyList { busy, holey }, CELL_BUDGET);
        prev = Some((busy, c.ns_per_pair, c.setup));
        out.push(ScaleCell::Ran(c));
    }
    out
}

/// Pairs per second of random_size-like traffic from `threads` threads sharing our allocator
/// behind a `Mutex` (one lock per operation; each thread keeps up to 8 blocks live so the threads'
/// blocks interleave in the space). Returns (wall pairs/s, pairs, CPU ns per pair, problems).
fn threaded(threads: usize) -> (f64, u64, f64, Vec<String>) {
    let alloc = Arc::new(Mutex::new(Ours::create(BASE, SPAN).into_inner()));
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|tid| {
            let alloc = Arc::clone(&alloc);
            let stop = Arc::clone(&stop);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut rng = Rng::new(SEED.wrapping_add(tid as u64 * 0x1234_5678_9abc));
                let mut ring: [Option<(u64, u64)>; 8] = [None; 8];
                let (mut pairs, mut bad, mut failed) = (0u64, 0u64, 0u64);
                barrier.wait();
                let cpu0 = thread_cpu_time();
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        let slot = (pairs % 8) as usize;
                        if let Some((s, l)) = ring[slot].take() {
                            let got = alloc.lock().expect("lock").free(s);
                            if got.ok() != Some(l) {
                                bad += 1;
                            }
                        }
                        let len = rng.range(1, 100);
                        match alloc.lock().expect("lock").alloc(len, 1) {
                            Ok(s) => ring[slot] = Some((s, len)),
                            Err(_) => failed += 1,
                        }
                        pairs += 1;
                    }
                }
                for (s, l) in ring.into_iter().flatten() {
                    if alloc.lock().expect("lock").free(s).ok() != Some(l) {
                        bad += 1;
                    }
                }
                (pairs, bad, failed, thread_cpu_time() - cpu0)
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    std::thread::sleep(THREAD_RUN);
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut cpu = Duration::ZERO;
    let mut problems = Vec::new();
    for h in handles {
        let (pairs, bad, failed, thread_cpu) = h.join().expect("bench thread");
        total += pairs;
        cpu += thread_cpu;
        if bad != 0 {
            problems.push(format!("{bad} frees returned a wrong length"));
        }
        if failed != 0 {
            problems.push(format!("{failed} allocs failed"));
        }
    }
    let el = t.elapsed();
    let free = alloc.lock().expect("lock").free_bytes();
    if free != SPAN {
        problems.push(format!("{free} units free at the end, {SPAN} expected"));
    }
    (
        total as f64 / el.as_secs_f64(),
        total,
        cpu.as_nanos() as f64 / total.max(1) as f64,
        problems,
    )
}

fn check_section(rows: &[(Scenario, Scenario, u64)]) {
    // Untimed checks first: every allocator, every scenario.
    println!(
        "check pass (untimed; shadow map of live blocks; answers compared op for op with {}):",
        BusyList::NAME
    );
    let mut any_violation = false;
    for &(_, csc, loops) in rows {
        let res = check_all(csc, loops);
        let reference = &res[3].trace;
        let mut line = format!("  {:<22}", csc.name());
        let mut divergences = Vec::new();
        for (name, r) in NAMES.iter().zip(res.iter()) {
            let diverge = r
                .trace
                .iter()
                .zip(reference.iter())
                .position(|(a, b)| a != b)
                .or((r.trace.len() != reference.len())
                    .then_some(r.trace.len().min(reference.len())));
            let verdict = if r.violations != 0 {
                any_violation = true;
                format!("{} VIOLATIONS", r.violations)
            } else if let Some(i) = diverge {
                let show = |t: &Vec<u64>| match t.get(i) {
                    Some(&u64::MAX) => "failed".to_string(),
                    Some(v) => format!("{v:#x}"),
                    None => "nothing".to_string(),
                };
                divergences.push(format!(
                    "      {name}: alloc #{i} returned {}, lowest fit is {}",
                    show(&r.trace),
                    show(reference)
                ));
                "valid but not lowest fit".into()
            } else {
                "ok".into()
            };
            let fails = if r.failed != r.expected_failed {
                format!(", {} failed (exp {})", r.failed, r.expected_failed)
            } else {
                String::new()
            };
            line += &format!(" {name}: {verdict}{fails};");
        }
        println!("{line}");
        for d in divergences {
            println!("{d}");
        }
        for (name, r) in NAMES.iter().zip(res.iter()) {
            if let Some(v) = &r.first_violation {
                println!("      {name}: first violation: {v}");
            }
        }
    }
    if any_violation {
        println!("  ^^^ some allocator broke a promise; its timings below are not comparable");
    }
    println!();
}

fn table_section(rows: &[(Scenario, Scenario, u64)]) -> Vec<(Scenario, [Cell; 4])> {
    // Main table.
    println!("ns per alloc+free pair (alloc attempt; a failed alloc has no free); (Nx) = N times slower than ours");
    println!(
        "{:<22} {:>12} {:>22} {:>22} {:>22}",
        "scenario", NAMES[0], NAMES[1], NAMES[2], NAMES[3]
    );
    let mut results = Vec::new();
    for &(sc, _, _) in rows {
        let cells = measure_all(sc);
        println!(
            "{:<22} {:>12} {:>22} {:>22} {:>22}",
            sc.name(),
            fmt_cell(&cells[0], &cells[0]),
            fmt_cell(&cells[1], &cells[0]),
            fmt_cell(&cells[2], &cells[0]),
            fmt_cell(&cells[3], &cells[0]),
        );
        results.push((sc, cells));
    }
    println!();
    println!("loops run / failed allocs per cell (long_busy_list loop = 2 pairs, align_shift loop = 64 attempts, pcpu-like loop = a batch of 35000 + free all)");
    println!(
        "{:<22} {:>16} {:>16} {:>16} {:>16}",
        "scenario", NAMES[0], NAMES[1], NAMES[2], NAMES[3]
    );
    for (sc, cells) in &results {
        let f = |c: &Cell| format!("{}/{}", c.loops, c.stats.failed);
        println!(
            "{:<22} {:>16} {:>16} {:>16} {:>16}",
            sc.name(),
            f(&cells[0]),
            f(&cells[1]),
            f(&cells[2]),
            f(&cells[3])
        );
    }
    for (sc, cells) in &results {
        for (name, c) in NAMES.iter().zip(cells.iter()) {
            for p in &c.problems {
                println!("  note: {} / {name}: {p}", sc.name());
            }
        }
    }
    print_cpu_share(results.iter().flat_map(|(_, c)| c.iter()));
    println!();

    results
}

/// Returns ours' 1M/1k ratio (contiguous layout).
fn scaling_section() -> f64 {
    // Scaling.
    println!(
        "scaling: long_busy_list with N busy 1-page blocks, ns per alloc+free pair [loops run]"
    );
    println!("  contiguous = test_vmalloc's layout (busy blocks back to back: the free tree holds 1 block);");
    println!("  holey = a 1-page hole after every busy block, loop allocs 100 + 2 pages (free tree holds N+1 blocks)");
    let columns: Vec<(&str, Vec<ScaleCell>)> = vec![
        ("ours", scaling_column::<Ours>(false)),
        ("ours holey", scaling_column::<Ours>(true)),
        (VmAllocator::NAME, scaling_column::<VmAllocator>(false)),
        (DbsAllocator::NAME, scaling_column::<DbsAllocator>(false)),
        (BusyList::NAME, scaling_column::<BusyList>(false)),
        ("busy-list holey", scaling_column::<BusyList>(true)),
    ];
    print!("{:<8}", "busy");
    for (name, _) in &columns {
        print!(" {:>26}", name);
    }
    println!();
    for (i, &n) in SCALING_SIZES.iter().enumerate() {
        print!("{:<8}", human(n));
        for (_, col) in &columns {
            let s = match &col[i] {
                ScaleCell::Ran(c) if c.problems.is_empty() => {
                    format!("{} [{}]", fmt_ns(c.ns_per_pair), c.loops)
                }
                ScaleCell::Ran(c) => format!("{} [{}] !", fmt_ns(c.ns_per_pair), c.loops),
                ScaleCell::Skipped(why) => why.clone(),
            };
            print!(" {:>26}", s);
        }
        println!();
    }
    for (name, col) in &columns {
        for (i, c) in col.iter().enumerate() {
            if let ScaleCell::Ran(c) = c {
                for p in &c.problems {
                    println!("  note: {name} at {}: {p}", human(SCALING_SIZES[i]));
                }
            }
        }
    }
    let ns_at = |col: &[ScaleCell], i: usize| match &col[i] {
        ScaleCell::Ran(c) => c.ns_per_pair,
        ScaleCell::Skipped(_) => f64::NAN,
    };
    let ours_col = &columns[0].1;
    let holey_col = &columns[1].1;
    let scaling = ns_at(ours_col, 3) / ns_at(ours_col, 0);
    let scaling_holey = ns_at(holey_col, 3) / ns_at(holey_col, 0);
    print_cpu_share(columns.iter().flat_map(|(_, col)| {
        col.iter().filter_map(|c| match c {
            ScaleCell::Ran(c) => Some(c),
            ScaleCell::Skipped(_) => None,
        })
    }));
    println!("  ours 1M/1k: contiguous {scaling:.2}x, holey {scaling_holey:.2}x");
    println!();

    scaling
}

fn threads_section() {
    // Threads.
    println!("threads sharing ours through a Mutex (random_size traffic, one lock per op, 8 live blocks per thread):");
    let (one, one_pairs, one_cpu, p1) = threaded(1);
    let (two, two_pairs, two_cpu, p2) = threaded(2);
    println!(
        "  1 thread : {:>12.0} pairs/s wall ({} pairs, {:.0} CPU ns/pair)",
        one, one_pairs, one_cpu
    );
    println!(
        "  2 threads: {:>12.0} pairs/s wall ({} pairs, {:.0} CPU ns/pair), {:.2}x the 1-thread rate",
        two,
        two_pairs,
        two_cpu,
        two / one
    );
    println!(
        "  (wall-clock rates: on a loaded machine they measure the scheduler as much as the lock)"
    );
    for p in p1.iter().chain(p2.iter()) {
        println!("  note: {p}");
    }
    println!();
}

fn main() {
    let wall = Instant::now();
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    // test_vmalloc: fls(num_online_cpus()) * (32 MiB / 4 KiB) pairs.
    let junk = u64::from(usize::BITS - ncpu.leading_zeros()) * (32 * 1024 * 1024 / 4096);
    println!("range_bench: units = 4 KiB pages (page numbers); space = [{BASE:#x}, {BASE:#x} + 2^33) pages (32 TiB)");
    println!("seed {SEED:#x}; {ncpu} CPUs online; full_fit junk pairs = {junk}");
    println!(
        "timed cells: ~{} ms each or {} alloc attempts, whichever first (slow baselines run fewer loops; see the loops table)",
        CELL_BUDGET.as_millis(),
        MAX_PAIRS
    );
    println!();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let rows = scenarios(junk);
    if want("check") {
        check_section(&rows);
    }
    let results = if want("table") {
        table_section(&rows)
    } else {
        Vec::new()
    };
    let scaling = if want("scaling") {
        scaling_section()
    } else {
        f64::NAN
    };
    if want("threads") {
        threads_section();
    }

    // Goals from issue 2.
    let row = |want: fn(&Scenario) -> bool| results.iter().find(|(sc, _)| want(sc)).map(|(_, c)| c);
    let (vs_vm, vs_busy) =
        row(|sc| matches!(sc, Scenario::LongBusyList { .. })).map_or((f64::NAN, f64::NAN), |c| {
            (
                c[1].ns_per_pair / c[0].ns_per_pair,
                c[3].ns_per_pair / c[0].ns_per_pair,
            )
        });
    let fix = row(|sc| matches!(sc, Scenario::FixSize)).map_or(f64::NAN, |c| c[0].ns_per_pair);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("goals (issue 2):");
    println!(
        "  long_busy_list(15k) vs vm-allocator >= 500x: {vs_vm:.0}x ({})",
        verdict(vs_vm >= 500.0)
    );
    println!(
        "  long_busy_list(15k) vs busy-list    >= 100x: {vs_busy:.0}x ({})",
        verdict(vs_busy >= 100.0)
    );
    println!(
        "  long_busy_list 1k -> 1M growth      <= 3x:   {scaling:.2}x ({})",
        verdict(scaling <= 3.0)
    );
    println!(
        "  fix_size                       <= 100 ns:    {fix:.1} ns ({})",
        verdict(fix <= 100.0)
    );
    println!("total wall time {:.1} s", wall.elapsed().as_secs_f64());
    println!();
    println!("RESULT long_busy_list_speedup_vs_vm_allocator={vs_vm:.1}");
    println!("RESULT long_busy_list_speedup_vs_busy_list={vs_busy:.1}");
    println!("RESULT scaling_1k_to_1m={scaling:.2}");
}
