//! Pool metrics: lock-free counters bumped on every operation, a grant-latency histogram, a
//! [`PoolStats`] snapshot, and a `prometheus-client` [`Collector`] that encodes a snapshot on each
//! scrape (so metrics cost the hot paths nothing but relaxed atomic adds, or a plain load and store
//! for counters written only under the pool lock).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::Inner;
use crate::api::{FrontswapPolicy, RejectReason};

/// Upper bounds of the grant-latency histogram buckets, in microseconds (the last bucket, +Inf,
/// is implicit).
pub const GRANT_LATENCY_BUCKETS_US: [u64; 20] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
    200_000, 500_000, 1_000_000, 5_000_000,
];

/// Why second-class pages were evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictReason {
    /// The page lay in the range chosen for a contiguous grant.
    Grant = 0,
    /// A put or store needed a pool page and none was free (LRU eviction).
    Pressure = 1,
}

/// Live counters. Monotonic unless said otherwise.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub grants: AtomicU64,
    pub grant_pages: AtomicU64,
    pub grant_fail_exhausted: AtomicU64,
    pub grant_fail_fragmented: AtomicU64,
    pub frees: AtomicU64,
    pub zeroed_pages: AtomicU64,
    pub idle_zeroed_pages: AtomicU64,
    pub cc_puts: AtomicU64,
    pub cc_puts_dropped: AtomicU64,
    pub cc_hits: AtomicU64,
    pub cc_misses: AtomicU64,
    pub cc_flushes: AtomicU64,
    pub fs_stores: AtomicU64,
    pub fs_rejects: [AtomicU64; 4],
    pub fs_loads_pool: AtomicU64,
    pub fs_loads_host: AtomicU64,
    pub fs_loads_backing: AtomicU64,
    pub fs_load_misses: AtomicU64,
    pub fs_invalidates: AtomicU64,
    pub backing_writes: AtomicU64,
    pub backing_write_errors: AtomicU64,
    pub file_writes: AtomicU64,
    pub writeback_retries: AtomicU64,
    pub fs_cap_hits: AtomicU64,
    pub cc_cap_drops: AtomicU64,
    pub written_back_pages: AtomicU64,
    pub put_back_pages: AtomicU64,
    /// `[reason][0 = cleancache, 1 = frontswap]`.
    pub evictions: [[AtomicU64; 2]; 2],
    pub grant_latency_buckets: [AtomicU64; GRANT_LATENCY_BUCKETS_US.len() + 1],
    pub grant_latency_sum_ns: AtomicU64,
    pub grant_latency_max_ns: AtomicU64,
    pub grant_locked_ns: AtomicU64,
    pub grant_lock_wait_ns: AtomicU64,
    pub grant_zero_ns: AtomicU64,
}

pub(crate) fn reject_index(r: RejectReason) -> usize {
    match r {
        RejectReason::PoolFull => 0,
        RejectReason::PutBackLimit => 1,
        RejectReason::BackingIo => 2,
        RejectReason::ClientLimit => 3,
    }
}

const REJECT_NAMES: [&str; 4] = ["pool_full", "put_back_limit", "backing_io", "client_limit"];

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        if n != 0 {
            c.fetch_add(n, Relaxed);
        }
    }

    /// Adds `n` to a counter that is only ever written with the pool lock held: a plain load and
    /// store (no locked read-modify-write, whose full fence would wait for the page copy just
    /// done under the lock). Readers still see whole values, since the accesses are atomic.
    pub fn add_locked(c: &AtomicU64, n: u64) {
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub fn evicted(&self, reason: EvictReason, frontswap: bool, n: u64) {
        Self::add(&self.evictions[reason as usize][frontswap as usize], n);
    }

    pub fn observe_grant(&self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        // Prometheus buckets are "less than or equal".
        let i = GRANT_LATENCY_BUCKETS_US
            .iter()
            .position(|&b| ns <= b * 1000)
            .unwrap_or(GRANT_LATENCY_BUCKETS_US.len());
        self.grant_latency_buckets[i].fetch_add(1, Relaxed);
        self.grant_latency_sum_ns.fetch_add(ns, Relaxed);
        self.grant_latency_max_ns.fetch_max(ns, Relaxed);
    }
}

/// A consistent snapshot of the pool's page states and counters ([`super::Pool::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Pages in the pool.
    pub nr_pages: u64,
    /// Free pages known to read as zero.
    pub free_zero_pages: u64,
    /// Free pages that may hold old bytes (zeroed when granted).
    pub free_dirty_pages: u64,
    /// Pool pages holding cleancache data.
    pub cleancache_pages: u64,
    /// Pool pages holding frontswap data.
    pub frontswap_pages: u64,
    /// Pages granted to clients.
    pub granted_pages: u64,
    /// Accepted frontswap pages whose only copy is in the backing file.
    pub frontswap_backing_only_pages: u64,
    /// Accepted frontswap pages held in host memory outside the pool (put-back, or write-back
    /// waiting for its write).
    pub frontswap_host_pages: u64,
    /// Accepted, not invalidated frontswap pages, wherever they are.
    pub frontswap_stored_pages: u64,
    /// Registered clients.
    pub clients: u64,
    /// Live grants.
    pub live_grants: u64,
    /// Successful grants.
    pub grants: u64,
    /// Pages granted in total.
    pub granted_pages_total: u64,
    /// Grants refused because too few pages were not granted.
    pub grant_failures_exhausted: u64,
    /// Grants refused because grants fragment the pool.
    pub grant_failures_fragmented: u64,
    /// Grants returned.
    pub frees: u64,
    /// Pages zeroed before being granted.
    pub zeroed_pages: u64,
    /// Free pages zeroed ahead of time by [`super::Pool::zero_idle_pages`].
    pub idle_zeroed_pages: u64,
    /// Cleancache puts (kept or not).
    pub cleancache_puts: u64,
    /// Cleancache puts that were dropped (no page could be had).
    pub cleancache_puts_dropped: u64,
    /// Cleancache gets that hit.
    pub cleancache_hits: u64,
    /// Cleancache gets that missed.
    pub cleancache_misses: u64,
    /// Cleancache pages dropped by flushes and pool destruction.
    pub cleancache_flushes: u64,
    /// Accepted frontswap stores.
    pub frontswap_stores: u64,
    /// Rejected frontswap stores, by reason: pool full, put-back limit, backing I/O, client limit.
    pub frontswap_rejects: [u64; 4],
    /// Frontswap loads served from the pool.
    pub frontswap_loads_pool: u64,
    /// Frontswap loads served from host memory outside the pool.
    pub frontswap_loads_host: u64,
    /// Frontswap loads served from the backing file.
    pub frontswap_loads_backing: u64,
    /// Frontswap loads of keys not stored.
    pub frontswap_load_misses: u64,
    /// Frontswap pages invalidated.
    pub frontswap_invalidates: u64,
    /// Pages written to the backing file by write-through stores.
    pub backing_writes: u64,
    /// Failed writes to the backing file.
    pub backing_write_errors: u64,
    /// Pages written to clients' own backing files (write-through, stores the pool could not
    /// keep, write-backs, flushes).
    pub file_writes: u64,
    /// Failed write-backs retried.
    pub writeback_retries: u64,
    /// Failed write-backs waiting for their next attempt.
    pub writebacks_waiting: u64,
    /// Frontswap stores that found their client at its pool-page cap.
    pub frontswap_cap_hits: u64,
    /// Cleancache puts dropped because their client was at its pool-page cap.
    pub cleancache_cap_drops: u64,
    /// Pages written to the backing file on eviction (write-back).
    pub written_back_pages: u64,
    /// Pages copied to host memory on eviction (put-back).
    pub put_back_pages: u64,
    /// Evictions for grants: cleancache pages, frontswap pages.
    pub evictions_grant: [u64; 2],
    /// Evictions under pressure (LRU): cleancache pages, frontswap pages.
    pub evictions_pressure: [u64; 2],
    /// Grant latency histogram: counts per bucket of [`GRANT_LATENCY_BUCKETS_US`], then +Inf.
    pub grant_latency_buckets: Vec<u64>,
    /// Sum of grant latencies in nanoseconds.
    pub grant_latency_sum_ns: u64,
    /// Largest grant latency in nanoseconds.
    pub grant_latency_max_ns: u64,
    /// Time grants spent holding the pool lock (range choice, eviction, small zeroing), in ns.
    pub grant_locked_ns: u64,
    /// Time grants spent waiting for the pool lock, in ns.
    pub grant_lock_wait_ns: u64,
    /// Time grants spent zeroing with the lock released, in ns.
    pub grant_zero_unlocked_ns: u64,
}

impl PoolStats {
    pub(crate) fn fill_counters(&mut self, c: &Counters) {
        let g = |a: &AtomicU64| a.load(Relaxed);
        self.grants = g(&c.grants);
        self.granted_pages_total = g(&c.grant_pages);
        self.grant_failures_exhausted = g(&c.grant_fail_exhausted);
        self.grant_failures_fragmented = g(&c.grant_fail_fragmented);
        self.frees = g(&c.frees);
        self.zeroed_pages = g(&c.zeroed_pages);
        self.idle_zeroed_pages = g(&c.idle_zeroed_pages);
        self.cleancache_puts = g(&c.cc_puts);
        self.cleancache_puts_dropped = g(&c.cc_puts_dropped);
        self.cleancache_hits = g(&c.cc_hits);
        self.cleancache_misses = g(&c.cc_misses);
        self.cleancache_flushes = g(&c.cc_flushes);
        self.frontswap_stores = g(&c.fs_stores);
        self.frontswap_rejects = std::array::from_fn(|i| g(&c.fs_rejects[i]));
        self.frontswap_loads_pool = g(&c.fs_loads_pool);
        self.frontswap_loads_host = g(&c.fs_loads_host);
        self.frontswap_loads_backing = g(&c.fs_loads_backing);
        self.frontswap_load_misses = g(&c.fs_load_misses);
        self.frontswap_invalidates = g(&c.fs_invalidates);
        self.backing_writes = g(&c.backing_writes);
        self.backing_write_errors = g(&c.backing_write_errors);
        self.file_writes = g(&c.file_writes);
        self.writeback_retries = g(&c.writeback_retries);
        self.frontswap_cap_hits = g(&c.fs_cap_hits);
        self.cleancache_cap_drops = g(&c.cc_cap_drops);
        self.written_back_pages = g(&c.written_back_pages);
        self.put_back_pages = g(&c.put_back_pages);
        self.evictions_grant = std::array::from_fn(|i| g(&c.evictions[0][i]));
        self.evictions_pressure = std::array::from_fn(|i| g(&c.evictions[1][i]));
        self.grant_latency_buckets = c.grant_latency_buckets.iter().map(g).collect();
        self.grant_latency_sum_ns = g(&c.grant_latency_sum_ns);
        self.grant_latency_max_ns = g(&c.grant_latency_max_ns);
        self.grant_locked_ns = g(&c.grant_locked_ns);
        self.grant_lock_wait_ns = g(&c.grant_lock_wait_ns);
        self.grant_zero_unlocked_ns = g(&c.grant_zero_ns);
    }
}

/// What one client holds and what it did ([`super::Pool::client_stats`]). Counters are monotonic
/// over the client's life.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientStats {
    /// The name it registered with.
    pub name: String,
    /// Whether it has its own backing file.
    pub own_file: bool,
    /// Its cap on frontswap pool pages.
    pub frontswap_cap_pages: Option<u64>,
    /// Its cap on cleancache pool pages.
    pub cleancache_cap_pages: Option<u64>,
    /// Its own put-back limit.
    pub put_back_limit_pages: Option<u64>,
    /// Frontswap pages the pool keeps track of (in the pool, in host memory, in a backing file).
    pub frontswap_stored_pages: u64,
    /// Of those, in pool pages.
    pub frontswap_pool_pages: u64,
    /// Of those, in host memory outside the pool.
    pub frontswap_host_pages: u64,
    /// Cleancache pages in the pool.
    pub cleancache_pages: u64,
    /// Accepted frontswap stores.
    pub frontswap_stores: u64,
    /// Refused frontswap stores.
    pub frontswap_rejects: u64,
    /// Stores that found the client at its frontswap cap.
    pub frontswap_cap_hits: u64,
    /// Loads served from the pool.
    pub frontswap_loads_pool: u64,
    /// Loads served from host memory.
    pub frontswap_loads_host: u64,
    /// Loads served from a backing file.
    pub frontswap_loads_backing: u64,
    /// Pages written to its own backing file.
    pub file_writes: u64,
    /// Pages written back on eviction.
    pub written_back_pages: u64,
    /// Pages put back to host memory on eviction.
    pub put_back_pages: u64,
    /// Failed write-backs retried.
    pub writeback_retries: u64,
    /// Failed writes to a backing file.
    pub backing_write_errors: u64,
    /// Cleancache puts (kept or not).
    pub cleancache_puts: u64,
    /// Cleancache puts dropped at the cap.
    pub cleancache_cap_drops: u64,
    /// Cleancache gets that hit.
    pub cleancache_hits: u64,
    /// Cleancache gets that missed.
    pub cleancache_misses: u64,
}

/// Encodes a [`PoolStats`] snapshot on every scrape. Registered by [`super::Pool::register_metrics`].
#[derive(Debug)]
pub(crate) struct PoolCollector {
    pub inner: Arc<Mutex<Inner>>,
    pub counters: Arc<Counters>,
    pub nr_pages: u64,
    pub policy: FrontswapPolicy,
}

/// The `policy` label value of a frontswap policy.
fn policy_name(p: FrontswapPolicy) -> &'static str {
    match p {
        FrontswapPolicy::WriteThrough => "write_through",
        FrontswapPolicy::WriteBack => "write_back",
        FrontswapPolicy::PutBack => "put_back",
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    m.encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    m.encode_gauge(&(v as i64))
}

fn labelled(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    values: &[(&[(&str, &str)], u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in values {
        let labels: Vec<(&str, &str)> = labels.to_vec();
        let mut f = m.encode_family(&labels)?;
        match ty {
            MetricType::Counter => f.encode_counter::<NoLabelSet, _, u64>(v, None)?,
            _ => f.encode_gauge(&(*v as i64))?,
        }
    }
    Ok(())
}

impl Collector for PoolCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = super::snapshot(&self.inner, &self.counters, self.nr_pages);
        let e = &mut e;
        // Not `gcma_pool_pages_total`: a gauge must not end in `_total` (a counter's suffix).
        gauge(
            e,
            "gcma_pool_capacity_pages",
            "Pages in the pool, whatever their state.",
            s.nr_pages,
        )?;
        labelled(
            e,
            "gcma_pool_pages",
            "Pool pages per state.",
            MetricType::Gauge,
            &[
                (&[("state", "free_zero")], s.free_zero_pages),
                (&[("state", "free_dirty")], s.free_dirty_pages),
                (&[("state", "cleancache")], s.cleancache_pages),
                (&[("state", "frontswap")], s.frontswap_pages),
                (&[("state", "granted")], s.granted_pages),
            ],
        )?;
        let policy = policy_name(self.policy);
        labelled(
            e,
            "gcma_frontswap_stored_pages",
            "Accepted frontswap pages by where their data lives, labelled with the pool's frontswap policy.",
            MetricType::Gauge,
            &[
                (&[("location", "pool"), ("policy", policy)], s.frontswap_pages),
                (&[("location", "host"), ("policy", policy)], s.frontswap_host_pages),
                (
                    &[("location", "backing"), ("policy", policy)],
                    s.frontswap_backing_only_pages,
                ),
            ],
        )?;
        gauge(e, "gcma_clients", "Registered clients.", s.clients)?;
        gauge(
            e,
            "gcma_live_grants",
            "Contiguous grants in use.",
            s.live_grants,
        )?;
        counter(e, "gcma_grants", "Successful contiguous grants.", s.grants)?;
        counter(
            e,
            "gcma_granted_pages",
            "Pages granted.",
            s.granted_pages_total,
        )?;
        labelled(
            e,
            "gcma_grant_failures",
            "Refused contiguous grants by reason.",
            MetricType::Counter,
            &[
                (&[("reason", "exhausted")], s.grant_failures_exhausted),
                (&[("reason", "fragmented")], s.grant_failures_fragmented),
            ],
        )?;
        counter(e, "gcma_grant_frees", "Grants returned.", s.frees)?;
        counter(
            e,
            "gcma_zeroed_pages",
            "Pages zeroed before a grant.",
            s.zeroed_pages,
        )?;
        counter(
            e,
            "gcma_idle_zeroed_pages",
            "Free pages zeroed ahead of time.",
            s.idle_zeroed_pages,
        )?;
        counter(
            e,
            "gcma_cleancache_puts",
            "Cleancache puts.",
            s.cleancache_puts,
        )?;
        counter(
            e,
            "gcma_cleancache_puts_dropped",
            "Cleancache puts not kept.",
            s.cleancache_puts_dropped,
        )?;
        labelled(
            e,
            "gcma_cleancache_gets",
            "Cleancache gets by result.",
            MetricType::Counter,
            &[
                (&[("result", "hit")], s.cleancache_hits),
                (&[("result", "miss")], s.cleancache_misses),
            ],
        )?;
        counter(
            e,
            "gcma_cleancache_flushed_pages",
            "Cleancache pages flushed.",
            s.cleancache_flushes,
        )?;
        counter(
            e,
            "gcma_frontswap_stores",
            "Accepted frontswap stores.",
            s.frontswap_stores,
        )?;
        let rejects: Vec<([(&str, &str); 1], u64)> = REJECT_NAMES
            .iter()
            .zip(s.frontswap_rejects)
            .map(|(n, v)| ([("reason", *n)], v))
            .collect();
        let rejects: Vec<(&[(&str, &str)], u64)> =
            rejects.iter().map(|(l, v)| (&l[..], *v)).collect();
        labelled(
            e,
            "gcma_frontswap_rejects",
            "Rejected frontswap stores by reason.",
            MetricType::Counter,
            &rejects,
        )?;
        labelled(
            e,
            "gcma_frontswap_loads",
            "Frontswap loads by source.",
            MetricType::Counter,
            &[
                (&[("source", "pool")], s.frontswap_loads_pool),
                (&[("source", "host")], s.frontswap_loads_host),
                (&[("source", "backing")], s.frontswap_loads_backing),
                (&[("source", "miss")], s.frontswap_load_misses),
            ],
        )?;
        counter(
            e,
            "gcma_frontswap_invalidated_pages",
            "Frontswap pages invalidated.",
            s.frontswap_invalidates,
        )?;
        counter(
            e,
            "gcma_backing_writes",
            "Write-through writes to the backing file.",
            s.backing_writes,
        )?;
        counter(
            e,
            "gcma_backing_write_errors",
            "Failed writes to the backing file.",
            s.backing_write_errors,
        )?;
        counter(
            e,
            "gcma_file_written_pages",
            "Pages written to clients' own backing files.",
            s.file_writes,
        )?;
        counter(
            e,
            "gcma_writeback_retries",
            "Failed write-backs retried (the page stays in host memory meanwhile).",
            s.writeback_retries,
        )?;
        gauge(
            e,
            "gcma_writeback_waiting_pages",
            "Pages whose failed write-back waits for its next attempt.",
            s.writebacks_waiting,
        )?;
        counter(
            e,
            "gcma_frontswap_cap_hits",
            "Frontswap stores that found their client at its pool-page cap.",
            s.frontswap_cap_hits,
        )?;
        counter(
            e,
            "gcma_cleancache_cap_drops",
            "Cleancache puts dropped at their client's pool-page cap.",
            s.cleancache_cap_drops,
        )?;
        counter(
            e,
            "gcma_written_back_pages",
            "Pages written to the backing file on eviction.",
            s.written_back_pages,
        )?;
        counter(
            e,
            "gcma_put_back_pages",
            "Pages copied to host memory on eviction.",
            s.put_back_pages,
        )?;
        labelled(
            e,
            "gcma_evicted_pages",
            "Second-class pages evicted, by reason and kind.",
            MetricType::Counter,
            &[
                (
                    &[("reason", "grant"), ("kind", "cleancache")],
                    s.evictions_grant[0],
                ),
                (
                    &[("reason", "grant"), ("kind", "frontswap")],
                    s.evictions_grant[1],
                ),
                (
                    &[("reason", "pressure"), ("kind", "cleancache")],
                    s.evictions_pressure[0],
                ),
                (
                    &[("reason", "pressure"), ("kind", "frontswap")],
                    s.evictions_pressure[1],
                ),
            ],
        )?;
        let mut cum = 0u64;
        let mut buckets = Vec::with_capacity(s.grant_latency_buckets.len());
        for (i, n) in s.grant_latency_buckets.iter().enumerate() {
            cum += n;
            // The text encoder accumulates: pass per-bucket counts.
            let ub = GRANT_LATENCY_BUCKETS_US
                .get(i)
                .map_or(f64::INFINITY, |&us| us as f64 / 1e6);
            buckets.push((ub, *n));
        }
        let mut m = e.encode_descriptor(
            "gcma_grant_latency_seconds",
            "Latency of contiguous grants.",
            None,
            MetricType::Histogram,
        )?;
        m.encode_histogram::<NoLabelSet>(s.grant_latency_sum_ns as f64 / 1e9, cum, &buckets, None)
    }
}
