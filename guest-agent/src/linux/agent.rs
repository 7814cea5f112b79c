//! What the `guest-agent` subcommands do, over a [`GcmaDriver`] on any [`Hal`]: the Linux HAL
//! (`/dev/mem` + pagemap) in a guest, or a HAL over `balloon`'s harness in tests.

use std::time::{Duration, Instant};

use gcma_proto::gcma::PAGE_SIZE;

use crate::driver::{ContigRegion, DriverConfig, GcmaDriver};
use crate::error::Error;
use crate::hal::Hal;
use crate::mmio::STATUS;
use crate::{CleancacheClient, FrontswapClient};

use super::control::{Command, Reply};

/// A driver that resets the device when dropped, so the device stops using this process's DMA
/// memory before it is unmapped, and releases everything it held for the guest (grants,
/// cleancache pools, frontswap pages).
#[derive(Debug)]
pub struct Agent<H: Hal> {
    driver: GcmaDriver<H>,
}

impl<H: Hal> Agent<H> {
    /// Sets the device up with the default [`DriverConfig`] (all features, 64-entry queues).
    pub fn new(hal: H) -> Result<Self, Error> {
        Ok(Agent {
            driver: GcmaDriver::new(hal, DriverConfig::default())?,
        })
    }

    /// The driver.
    pub fn driver(&mut self) -> &mut GcmaDriver<H> {
        &mut self.driver
    }

    /// Runs one control request.
    pub fn execute(&mut self, cmd: Command) -> Result<Reply, Error> {
        let d = &mut self.driver;
        Ok(match cmd {
            Command::Alloc {
                nr_pages,
                align_pages,
            } => {
                let g = d.alloc_contig(nr_pages, align_pages)?;
                Reply::Granted {
                    gpa: g.gpa,
                    nr_pages: g.nr_pages,
                }
            }
            Command::Free { gpa } => Reply::Freed {
                nr_pages: d.free_contig(ContigRegion { gpa, nr_pages: 0 })?,
            },
            Command::Stats => Reply::Stats(d.stats()?.iter().map(|e| (e.tag, e.value)).collect()),
        })
    }
}

impl<H: Hal> Drop for Agent<H> {
    fn drop(&mut self) {
        self.driver.hal_mut().mmio_write32(STATUS, 0);
    }
}

/// Fills `page` with bytes derived from `seed` (distinct seeds give distinct pages).
pub fn pattern_page(seed: u64, page: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for c in page.chunks_exact_mut(8) {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
}

/// One timed phase of [`bench()`].
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    /// What was done.
    pub name: &'static str,
    /// Page operations (one page copied one way; the baseline copies each page in and out).
    pub ops: u64,
    /// Operations that succeeded (kept, hit, accepted, loaded).
    pub succeeded: u64,
    /// Device notifications sent (0 for the baseline).
    pub notifies: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Phase {
    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What [`bench()`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    /// Pages per phase.
    pub nr_pages: u64,
    /// Requests per notification.
    pub batch: usize,
    /// Baseline: the same pages copied into and out of a slab in this process, with the same
    /// byte check: the cost of keeping them in guest memory instead.
    pub baseline: Phase,
    /// cleancache put, cleancache get, frontswap store, frontswap load, in that order.
    pub phases: Vec<Phase>,
    /// Pages whose bytes came back different from what was put or stored (must be 0).
    pub corrupted: u64,
}

impl BenchReport {
    /// The report as a table: one row per phase with ops/s and the ratio to the baseline.
    pub fn table(&self) -> String {
        let base = self.baseline.ops_per_sec();
        let mut t = format!(
            "{} pages per phase, {} requests per notification\n{:<22} {:>8} {:>8} {:>9} {:>12} {:>12}\n",
            self.nr_pages, self.batch, "phase", "ops", "ok", "notifies", "ops/s", "vs baseline"
        );
        for p in std::iter::once(&self.baseline).chain(self.phases.iter()) {
            t += &format!(
                "{:<22} {:>8} {:>8} {:>9} {:>12.0} {:>11.4}x\n",
                p.name,
                p.ops,
                p.succeeded,
                p.notifies,
                p.ops_per_sec(),
                p.ops_per_sec() / base
            );
        }
        t
    }
}

/// Round trips `nr_pages` distinct pages through cleancache (put all, get all) and frontswap
/// (store all, load all, invalidate the area) in batches of [`GcmaDriver::batch_len`], checks
/// every byte that comes back, and times each phase beside a baseline of the same copies into a
/// slab in this process. Lost frontswap pages are errors ([`Error::FrontswapLost`]).
pub fn bench<H: Hal>(d: &mut GcmaDriver<H>, nr_pages: u64) -> Result<BenchReport, Error> {
    let n = usize::try_from(nr_pages).map_err(|_| Error::BadBuffer)?;
    let batch = d.batch_len().max(1);
    let pages: Vec<Vec<u8>> = (0..nr_pages)
        .map(|i| {
            let mut p = vec![0u8; PAGE_SIZE];
            pattern_page(i, &mut p);
            p
        })
        .collect();
    let mut corrupted = 0u64;
    let mut out: Vec<Vec<u8>> = vec![vec![0u8; PAGE_SIZE]; batch];
    // Per-request outcome of a batch (kept, hit, accepted).
    let mut flags = vec![false; batch];

    // Baseline: keeping the pages in guest memory instead (copy into a preallocated slab and
    // back, with the same byte check).
    let mut slab = vec![0u8; n * PAGE_SIZE];
    // Fault the slab in first: the device's pages are resident too.
    slab.fill(1);
    let t = Instant::now();
    for (slot, p) in slab.chunks_exact_mut(PAGE_SIZE).zip(&pages) {
        slot.copy_from_slice(p);
    }
    for (slot, p) in slab.chunks_exact(PAGE_SIZE).zip(&pages) {
        out[0].copy_from_slice(slot);
        corrupted += u64::from(out[0] != *p);
    }
    let baseline = Phase {
        name: "in-guest copy (base)",
        ops: 2 * nr_pages,
        succeeded: 2 * nr_pages,
        notifies: 0,
        elapsed: t.elapsed(),
    };

    let object = [0x0061_6765_6e74, 1, 0];
    let mut phases = Vec::new();
    let mut cc = CleancacheClient::new();
    let mut phase = |name, d: &mut GcmaDriver<H>, start: Instant, n0: u64, ok: u64| {
        phases.push(Phase {
            name,
            ops: nr_pages,
            succeeded: ok,
            notifies: d.counters().notifies - n0,
            elapsed: start.elapsed(),
        })
    };

    let (t, n0) = (Instant::now(), d.counters().notifies);
    let mut ok = 0;
    for (c, chunk) in pages.chunks(batch).enumerate() {
        let items: Vec<([u64; 3], u32, &[u8])> = chunk
            .iter()
            .enumerate()
            .map(|(j, p)| (object, (c * batch + j) as u32, p.as_slice()))
            .collect();
        ok += cc.put_many(d, &items, &mut flags)? as u64;
    }
    phase("cleancache put", d, t, n0, ok);

    let (t, n0) = (Instant::now(), d.counters().notifies);
    let mut ok = 0;
    for (c, chunk) in pages.chunks(batch).enumerate() {
        let mut items: Vec<([u64; 3], u32, &mut [u8])> = out
            .iter_mut()
            .zip(0..chunk.len())
            .map(|(o, j)| (object, (c * batch + j) as u32, o.as_mut_slice()))
            .collect();
        cc.get_many(d, &mut items, &mut flags)?;
        for (j, hit) in flags[..chunk.len()].iter().enumerate() {
            if *hit {
                ok += 1;
                corrupted += u64::from(out[j] != chunk[j]);
            }
        }
    }
    phase("cleancache get", d, t, n0, ok);
    cc.destroy(d)?;

    let mut fs = FrontswapClient::new(d, 0);
    let (t, n0) = (Instant::now(), d.counters().notifies);
    let mut ok = 0;
    for (c, chunk) in pages.chunks(batch).enumerate() {
        let items: Vec<(u64, &[u8])> = chunk
            .iter()
            .enumerate()
            .map(|(j, p)| ((c * batch + j) as u64, p.as_slice()))
            .collect();
        ok += fs.store_many(d, &items, &mut flags)? as u64;
    }
    phase("frontswap store", d, t, n0, ok);

    let (t, n0) = (Instant::now(), d.counters().notifies);
    let mut ok = 0;
    for (c, chunk) in pages.chunks(batch).enumerate() {
        let mut items: Vec<(u64, &mut [u8])> = out
            .iter_mut()
            .zip(0..chunk.len())
            .map(|(o, j)| ((c * batch + j) as u64, o.as_mut_slice()))
            .collect();
        fs.load_many(d, &mut items, &mut flags)?;
        for (j, hit) in flags[..chunk.len()].iter().enumerate() {
            if *hit {
                ok += 1;
                corrupted += u64::from(out[j] != chunk[j]);
            }
        }
    }
    phase("frontswap load", d, t, n0, ok);
    fs.invalidate_area(d)?;

    Ok(BenchReport {
        nr_pages,
        batch,
        baseline,
        phases,
        corrupted,
    })
}
