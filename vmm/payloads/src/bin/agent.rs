//! The demo's guest agent: the guest-agent driver core in a ring-3 microVM, in one of two roles
//! the host picks through the mailbox (parameters in `abi::DEMO_*`).
//!
//! * **Tenant**: keeps cleancache and frontswap traffic going until the host says stop. Every
//!   round it puts a fresh set of clean pages, gets the previous round's back (a hit must carry
//!   exactly the bytes put; a miss is fine: ephemeral pages may be dropped), stores a quarter of
//!   its swap offsets with a new version, loads another quarter and checks them (a miss on an
//!   accepted page is a lost page), and invalidates some. On stop it loads every page it still
//!   holds and checks each one.
//! * **Grants**: for each size the host lists, `reps` times: `ALLOC_CONTIG` timed with `rdtsc`,
//!   check the grant reads as zero, write a pattern over it, check it, `FREE_CONTIG`.
//! * **Exits** (benchmarks): `reps` bare MMIO exits timed with `rdtsc`, no device involved.
//!
//! Progress and verdicts go to the host as mailbox events (`abi::EV_*`). Exit code 0 when every
//! check passed, 1 otherwise, 2 when the device or driver could not be set up.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

use guest_agent::proto::VIRTIO_ID_GCMA;
use guest_agent::{
    CleancacheClient, DmaExhausted, DmaRegion, DriverConfig, Error, FrontswapClient, GcmaDriver,
    Hal, RawHal,
};
use vmm_payloads::abi::*;
use vmm_payloads::virtio::Device;
use vmm_payloads::{alloc_pages, entry, println};

entry!(main);

const DMA_PAGES: u64 = 512;
/// Pages moved per batch (one notification each).
const BATCH: usize = 16;
const PAGE: usize = PAGE_SIZE as usize;

/// How long a wait for the device spins before it sleeps until the device's interrupt: about
/// 200 µs at 3 GHz, like KVM's default halt polling before it lets a halted vCPU sleep; longer
/// than a batch of 16 tmem pages takes, so steady tmem traffic never pays for a wake-up.
const SPIN_CYCLES: u64 = 600_000;
/// The longest one sleep lasts without an interrupt, in µs (then the driver looks again).
const WAIT_IRQ_US: u64 = 1000;

/// The agent's HAL: [`RawHal`], except that a wait for the device that outlasts [`SPIN_CYCLES`]
/// sleeps in the host until the device's interrupt (the mailbox's wait-for-interrupt register,
/// this ring-3 payload's `hlt`) instead of spinning on. With the pool in gcma-hostd the device
/// works on other host threads while this vCPU waits, and a spinning vCPU takes a core that work
/// needs whenever the host has fewer cores than busy threads. A kernel driver does the same:
/// poll briefly, then sleep until the used-buffer interrupt.
struct AgentHal {
    raw: RawHal,
    wait_start: u64,
    /// Whether this wait has passed the spin (the driver then turned interrupts on).
    sleeping: bool,
    /// Waits that did (reported as `EV_IRQ_WAITS`).
    irq_waits: u64,
}

// SAFETY: DMA memory comes from `RawHal`, whose guarantees pass through unchanged.
unsafe impl Hal for AgentHal {
    fn mmio_read32(&mut self, offset: u64) -> u32 {
        self.raw.mmio_read32(offset)
    }

    fn mmio_write32(&mut self, offset: u64, value: u32) {
        self.raw.mmio_write32(offset, value)
    }

    fn dma_alloc(&mut self, pages: usize) -> Result<DmaRegion, DmaExhausted> {
        self.raw.dma_alloc(pages)
    }

    fn wait_hint(&mut self, polls: u64) -> bool {
        let now = rdtsc();
        if polls <= 1 {
            self.wait_start = now;
            self.sleeping = false;
        }
        core::hint::spin_loop();
        if !self.sleeping && now.wrapping_sub(self.wait_start) >= SPIN_CYCLES {
            self.sleeping = true;
            self.irq_waits += 1;
        }
        self.sleeping
    }

    fn wait_interrupt(&mut self) {
        mmio_write(MAILBOX_REG_WAIT_IRQ_US, WAIT_IRQ_US);
    }
}

fn mmio_read(off: u64) -> u64 {
    // SAFETY: the mailbox's identity-mapped register window; the VMM handles the exit.
    unsafe { core::ptr::read_volatile((MAILBOX_BASE + off) as *const u64) }
}

fn mmio_write(off: u64, v: u64) {
    // SAFETY: as in `mmio_read`.
    unsafe { core::ptr::write_volatile((MAILBOX_BASE + off) as *mut u64, v) }
}

fn param(i: u64) -> u64 {
    mmio_write(MAILBOX_REG_PARAM_SEL, i);
    mmio_read(MAILBOX_REG_PARAM)
}

fn event(tag: u64, value: u64) {
    mmio_write(MAILBOX_REG_EVENT_TAG, tag);
    mmio_write(MAILBOX_REG_EVENT_VALUE, value);
}

fn stop_requested() -> bool {
    mmio_read(MAILBOX_REG_CONTROL) & MAILBOX_CONTROL_STOP != 0
}

fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no memory effects; CR4.TSD is clear so ring 3 may execute it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Deterministic page contents: word `w` of the page named by `(a, b, c)`.
fn word(a: u64, b: u64, c: u64, w: u64) -> u64 {
    let mut x = a
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(b.rotate_left(17))
        ^ c.wrapping_mul(0xbf58_476d_1ce4_e5b9)
        ^ w.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    x.wrapping_mul(0xd6e8_feb8_6659_fd93) | 1
}

fn fill(page: &mut [u8], a: u64, b: u64, c: u64) {
    for (w, chunk) in page.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&word(a, b, c, w as u64).to_le_bytes());
    }
}

fn matches(page: &[u8], a: u64, b: u64, c: u64) -> bool {
    page.chunks_exact(8)
        .enumerate()
        .all(|(w, chunk)| chunk == word(a, b, c, w as u64).to_le_bytes())
}

fn error_code(e: &Error) -> u64 {
    match e {
        Error::Status(r) => 0x100 | u64::from(r.status),
        Error::FrontswapLost { .. } => 2,
        Error::Timeout => 3,
        Error::DeviceNeedsReset | Error::DeviceReset => 4,
        _ => 1,
    }
}

fn main(_ram_bytes: u64, _arg: u64) -> u32 {
    let role = param(DEMO_PARAM_ROLE);
    if role == DEMO_ROLE_EXITS {
        exits();
        event(EV_DONE, 1);
        return 0;
    }
    let Ok(dev) = Device::find(VIRTIO_ID_GCMA) else {
        println!("agent: no virtio-gcma device");
        return 2;
    };
    let Some(dma) = alloc_pages(DMA_PAGES) else {
        println!("agent: no memory for DMA");
        return 2;
    };
    // SAFETY: `dev.base()` is the device's identity-mapped register window; the DMA pages were
    // just taken from free guest RAM and nothing else uses them.
    let raw = unsafe {
        RawHal::new(
            dev.base() as usize,
            dma as usize,
            (dma + DMA_PAGES * PAGE_SIZE) as usize,
        )
    };
    let hal = AgentHal {
        raw,
        wait_start: 0,
        sleeping: false,
        irq_waits: 0,
    };
    let mut d = match GcmaDriver::new(
        hal,
        DriverConfig {
            queue_size: 64,
            // A long wait's polls each follow a sleep of up to WAIT_IRQ_US: give up after about
            // a minute without an answer, not after the default's spin count times the sleep.
            max_polls: 1 << 16,
            ..DriverConfig::default()
        },
    ) {
        Ok(d) => d,
        Err(e) => {
            println!("agent: driver set-up failed: {e:?}");
            event(EV_ERROR, error_code(&e));
            return 2;
        }
    };
    event(EV_READY, d.features());
    let ok = match role {
        DEMO_ROLE_TENANT => tenant(&mut d),
        DEMO_ROLE_GRANTS => grants(&mut d),
        other => {
            println!("agent: unknown role {other}");
            false
        }
    };
    event(EV_IRQ_WAITS, d.hal().irq_waits);
    event(EV_DONE, ok as u64);
    if ok {
        0
    } else {
        1
    }
}

fn tenant(d: &mut GcmaDriver<AgentHal>) -> bool {
    let vm = param(DEMO_PARAM_VM);
    let cc_pages = param(DEMO_PARAM_CC_PAGES).max(BATCH as u64);
    let fs_pages = param(DEMO_PARAM_FS_PAGES).max(BATCH as u64);
    let mut cc = CleancacheClient::new();
    let mut fs = FrontswapClient::new(d, 0);
    // version[o]: the version last accepted for swap offset o (0: none held).
    let mut version = vec![0u32; fs_pages as usize];
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; PAGE]).collect();
    let (mut stale, mut lost, mut corrupt, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let mut round: u64 = 1;
    loop {
        // Cleancache: put this round's pages, get last round's back.
        for first in (0..cc_pages).step_by(BATCH) {
            let n = (cc_pages - first).min(BATCH as u64) as usize;
            for (j, b) in bufs.iter_mut().take(n).enumerate() {
                fill(b, vm, round, first + j as u64);
            }
            let pages: Vec<([u64; 3], u32, &[u8])> = (0..n)
                .map(|j| ([vm, round, 0], (first + j as u64) as u32, &bufs[j][..]))
                .collect();
            let mut kept = [false; BATCH];
            if cc.put_many(d, &pages, &mut kept).is_err() {
                errors += 1;
            }
        }
        if round > 1 {
            for first in (0..cc_pages).step_by(BATCH) {
                let n = (cc_pages - first).min(BATCH as u64) as usize;
                let mut hits = [false; BATCH];
                let mut reqs: Vec<([u64; 3], u32, &mut [u8])> = bufs
                    .iter_mut()
                    .take(n)
                    .enumerate()
                    .map(|(j, b)| ([vm, round - 1, 0], (first + j as u64) as u32, &mut b[..]))
                    .collect();
                if cc.get_many(d, &mut reqs, &mut hits).is_err() {
                    errors += 1;
                    continue;
                }
                for j in 0..n {
                    if hits[j] && !matches(&bufs[j], vm, round - 1, first + j as u64) {
                        stale += 1;
                    }
                }
            }
        }
        // Frontswap: store a quarter with a new version, load another quarter, invalidate some.
        let mut offsets: Vec<u64> = (0..fs_pages).filter(|o| (o + round) % 4 == 0).collect();
        for chunk in offsets.chunks(BATCH) {
            for (j, &o) in chunk.iter().enumerate() {
                fill(&mut bufs[j], vm, o, round);
            }
            let pages: Vec<(u64, &[u8])> = chunk
                .iter()
                .enumerate()
                .map(|(j, &o)| (o, &bufs[j][..]))
                .collect();
            let mut accepted = [false; BATCH];
            match fs.store_many(d, &pages, &mut accepted) {
                Ok(_) => {
                    for (j, &o) in chunk.iter().enumerate() {
                        version[o as usize] = if accepted[j] { round as u32 } else { 0 };
                    }
                }
                Err(_) => errors += 1,
            }
        }
        offsets = (0..fs_pages)
            .filter(|o| (o + round) % 4 == 2 && version[*o as usize] != 0)
            .collect();
        let (l, c, e) = load_and_check(d, &mut fs, &offsets, &version, vm, &mut bufs);
        lost += l;
        corrupt += c;
        errors += e;
        for o in (0..fs_pages).filter(|o| (o + round) % 8 == 5) {
            if version[o as usize] != 0 {
                match fs.invalidate_page(d, o) {
                    Ok(_) => version[o as usize] = 0,
                    Err(_) => errors += 1,
                }
            }
        }
        let c = cc.counters();
        let f = fs.counters();
        event(EV_TENANT_ROUND, round);
        event(EV_CC_PUTS, c.puts);
        event(EV_CC_HITS, c.hits);
        event(EV_CC_MISSES, c.misses);
        event(EV_FS_STORES, f.succ_stores);
        event(EV_FS_REJECTS, f.failed_stores);
        event(EV_FS_LOADS, f.loads);
        if stop_requested() {
            break;
        }
        let pause_us = param(DEMO_PARAM_PAUSE_US);
        if pause_us > 0 {
            mmio_write(MAILBOX_REG_SLEEP_US, pause_us);
            if stop_requested() {
                break;
            }
        }
        round += 1;
    }
    // Final check: every page still held must load with the bytes of its last accepted version.
    let held: Vec<u64> = (0..fs_pages)
        .filter(|o| version[*o as usize] != 0)
        .collect();
    let (l, c, e) = load_and_check(d, &mut fs, &held, &version, vm, &mut bufs);
    lost += l;
    corrupt += c;
    errors += e;
    event(EV_FS_VERIFIED, held.len() as u64);
    event(EV_CC_STALE, stale);
    event(EV_FS_LOST, lost);
    event(EV_FS_CORRUPT, corrupt);
    event(EV_ERRORS, errors);
    stale == 0 && lost == 0 && corrupt == 0 && errors == 0
}

/// Loads `offsets` and checks each against its version; returns (lost, corrupt, errors).
fn load_and_check(
    d: &mut GcmaDriver<AgentHal>,
    fs: &mut FrontswapClient,
    offsets: &[u64],
    version: &[u32],
    vm: u64,
    bufs: &mut [Vec<u8>],
) -> (u64, u64, u64) {
    let (mut lost, mut corrupt, mut errors) = (0, 0, 0);
    for chunk in offsets.chunks(BATCH) {
        let mut hits = [false; BATCH];
        let mut reqs: Vec<(u64, &mut [u8])> = chunk
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&o, b)| (o, &mut b[..]))
            .collect();
        match fs.load_many(d, &mut reqs, &mut hits) {
            Ok(_) => {}
            Err(Error::FrontswapLost { .. }) => {
                lost += 1;
                continue;
            }
            Err(_) => {
                errors += 1;
                continue;
            }
        }
        for (j, &o) in chunk.iter().enumerate() {
            if !hits[j] {
                lost += 1;
            } else if !matches(&bufs[j], vm, o, u64::from(version[o as usize])) {
                corrupt += 1;
            }
        }
    }
    (lost, corrupt, errors)
}

/// Times bare MMIO exit round trips (reads of the mailbox's control register).
fn exits() {
    for _ in 0..param(DEMO_PARAM_REPS).max(1) {
        let t0 = rdtsc();
        let _ = mmio_read(MAILBOX_REG_CONTROL);
        let t1 = rdtsc();
        event(EV_EXIT_CYCLES, t1.wrapping_sub(t0));
    }
}

fn grants(d: &mut GcmaDriver<AgentHal>) -> bool {
    let reps = param(DEMO_PARAM_REPS).max(1);
    let nr_sizes = param(DEMO_PARAM_NR_SIZES);
    let mut ok = true;
    for s in 0..nr_sizes {
        let pages = param(DEMO_PARAM_SIZES + s);
        event(EV_GRANT_SIZE, pages);
        for _ in 0..reps {
            let t0 = rdtsc();
            let region = match d.alloc_contig(pages, 1) {
                Ok(r) => r,
                Err(e) => {
                    event(EV_GRANT_FAILED, error_code(&e));
                    ok = false;
                    continue;
                }
            };
            let t1 = rdtsc();
            event(EV_GRANT_CYCLES, t1.wrapping_sub(t0));
            let (start, end) = (region.gpa, region.gpa + region.nr_pages * PAGE_SIZE);
            let mut nonzero = 0u64;
            for a in (start..end).step_by(64) {
                // SAFETY: the device mapped the grant at `[start, end)` in the identity-mapped
                // grant window.
                if unsafe { core::ptr::read_volatile(a as *const u64) } != 0 {
                    nonzero += 1;
                }
                // SAFETY: as above.
                unsafe { core::ptr::write_volatile(a as *mut u64, a ^ FILL_KEY) };
            }
            let mut bad = 0u64;
            for a in (start..end).step_by(64) {
                // SAFETY: as above.
                if unsafe { core::ptr::read_volatile(a as *const u64) } != a ^ FILL_KEY {
                    bad += 1;
                }
            }
            if nonzero != 0 {
                event(EV_GRANT_NONZERO, nonzero);
                ok = false;
            }
            if bad != 0 {
                event(EV_GRANT_PATTERN_BAD, bad);
                ok = false;
            }
            if let Err(e) = d.free_contig(region) {
                event(EV_GRANT_FREE_FAILED, error_code(&e));
                ok = false;
            }
        }
    }
    ok
}
