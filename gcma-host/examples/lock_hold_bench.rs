//! Pool-lock hold per contiguous-grant request under the hostile pattern of ARCHITECTURE.md's
//! limits section: a guest fragments the pool with one-page grants (every other page freed
//! again), then asks for alignments no hole has, a kick's worth of requests at a time.
//!
//! `cargo run --release -p gcma-host --example lock_hold_bench`
//!
//! Two pools side by side, fragmented the same way: one with the default search limit
//! (`PoolConfig::max_search_nodes`, 256 tree nodes per request) and one unlimited (the search
//! walks every hole, as before the limit existed). Requests alternate between them in rounds so
//! both see the same machine noise. A refused request does all its work under the lock (the
//! search), so the time of the whole call is an upper bound of its lock hold; the pool's own
//! `grant_locked_ns` (which counts refused searches too) gives the mean hold. Prints p50 / p99 /
//! max per request and per kick of 256 requests, and the ratio unlimited / limited (goal: p99
//! lock hold ≤ 50 µs with the limit).

use std::sync::Arc;
use std::time::Instant;

use gcma_host::api::{GcmaBackend, PoolError};
use gcma_host::pool::{Pool, PoolConfig};
use gcma_host::range::DEFAULT_MAX_VISITS;

const POOL_PAGES: u64 = 65_536; // 256 MiB: the demo's pool
const KICK: usize = 256; // requests per notification (one queue's worth)
const ROUNDS: usize = 40;
/// The misaligned requests a hostile guest cycles through: (pages, alignment).
const REQUESTS: [(u64, u64); 4] = [(1, 2), (1, 4), (1, 64), (1, 1024)];

fn fragmented(max_search_nodes: u32) -> (Arc<Pool>, gcma_host::api::ClientId) {
    let pool = Pool::new(PoolConfig {
        max_search_nodes,
        ..PoolConfig::new(POOL_PAGES)
    })
    .expect("pool");
    let c = pool.register_client("fragmenter");
    let grants: Vec<u64> = (0..POOL_PAGES)
        .map(|_| pool.alloc_contig(c, 1, 1).expect("grant").first_page)
        .collect();
    for p in grants.into_iter().filter(|p| p % 2 == 1) {
        pool.free_contig(c, p).expect("free");
    }
    (pool, c)
}

struct Run {
    per_request_ns: Vec<u64>,
    per_kick_ns: Vec<u64>,
}

fn kick(pool: &Pool, c: gcma_host::api::ClientId, run: &mut Run) {
    let k0 = Instant::now();
    for i in 0..KICK {
        let (n, align) = REQUESTS[i % REQUESTS.len()];
        let t0 = Instant::now();
        let r = pool.alloc_contig(c, n, align);
        run.per_request_ns.push(t0.elapsed().as_nanos() as u64);
        assert!(matches!(r, Err(PoolError::Fragmented { .. })), "{r:?}");
    }
    run.per_kick_ns.push(k0.elapsed().as_nanos() as u64);
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

fn main() {
    let (limited, lc) = fragmented(DEFAULT_MAX_VISITS);
    let (unlimited, uc) = fragmented(u32::MAX);
    let mut l = Run {
        per_request_ns: Vec::new(),
        per_kick_ns: Vec::new(),
    };
    let mut u = Run {
        per_request_ns: Vec::new(),
        per_kick_ns: Vec::new(),
    };
    // Warm-up round for both, not counted.
    kick(
        &limited,
        lc,
        &mut Run {
            per_request_ns: vec![],
            per_kick_ns: vec![],
        },
    );
    kick(
        &unlimited,
        uc,
        &mut Run {
            per_request_ns: vec![],
            per_kick_ns: vec![],
        },
    );
    let (l0, u0) = (limited.stats(), unlimited.stats());
    for _ in 0..ROUNDS {
        kick(&limited, lc, &mut l);
        kick(&unlimited, uc, &mut u);
    }
    let (l1, u1) = (limited.stats(), unlimited.stats());
    let n = (ROUNDS * KICK) as f64;
    let mean_locked = |a: u64, b: u64| (b - a) as f64 / n / 1000.0;
    println!(
        "pool of {POOL_PAGES} pages, {} one-page holes; {ROUNDS} kicks of {KICK} misaligned requests each",
        POOL_PAGES / 2
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12}",
        "search", "p50 µs", "p99 µs", "max µs", "locked µs", "kick p50 ms", "kick max ms"
    );
    let mut rows = Vec::new();
    for (name, run, locked) in [
        (
            format!("limited ({DEFAULT_MAX_VISITS} nodes)"),
            &mut l,
            mean_locked(l0.grant_locked_ns, l1.grant_locked_ns),
        ),
        (
            "unlimited (every hole)".to_string(),
            &mut u,
            mean_locked(u0.grant_locked_ns, u1.grant_locked_ns),
        ),
    ] {
        let p50 = pct(&mut run.per_request_ns, 0.5);
        let p99 = pct(&mut run.per_request_ns, 0.99);
        let max = pct(&mut run.per_request_ns, 1.0);
        let k50 = pct(&mut run.per_kick_ns, 0.5) / 1000.0;
        let kmax = pct(&mut run.per_kick_ns, 1.0) / 1000.0;
        println!(
            "{name:<28} {p50:>10.2} {p99:>10.2} {max:>10.2} {locked:>12.2} {k50:>12.3} {kmax:>12.3}"
        );
        rows.push((p99, k50));
    }
    println!(
        "refused as search_limit: limited {}, unlimited {}",
        l1.grant_failures_search_limit - l0.grant_failures_search_limit,
        u1.grant_failures_search_limit - u0.grant_failures_search_limit
    );
    println!(
        "ratio unlimited / limited: p99 per request {:.1}x, p50 per kick {:.1}x",
        rows[1].0 / rows[0].0,
        rows[1].1 / rows[0].1
    );
    println!("RESULT lock_hold_p99_us={:.2}", rows[0].0);
    println!(
        "RESULT lock_hold_p99_unlimited_over_limited={:.1}",
        rows[1].0 / rows[0].0
    );
}
