//! Device benchmarks, each against a baseline measured in the same run.
//!
//! `cargo run --release -p balloon --example devices_bench`
//!
//! - Balloon inflate: a guest-driver stand-in hands 1 GiB of populated guest pages to
//!   virtio-balloon through the virtio-mmio transport (256 PFNs per buffer, one notification per
//!   buffer, as the Linux driver does); baseline: the same release calls made directly.
//! - gcma: cleancache/frontswap through the virtqueue vs calling the pool directly (section
//!   marked below).
//!
//! Prints `RESULT inflate_gib_ms=<x>` and `RESULT virtio_overhead_ratio=<x>`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use balloon::memory_release;
use balloon::testing::{memfd_guest_memory, CountingIrq, Driver};
use balloon::transport::{GuestMemoryMmap, MmioTransport};
use balloon::virtio_balloon::{Balloon, BalloonConfig, PFNS_PER_BUFFER};
use clap::Parser;
use vm_memory::{Bytes, GuestAddress};

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "virtio device benchmarks (balloon inflate, gcma virtqueue overhead)")]
struct Args {
    /// GiB of guest memory to inflate.
    #[arg(long, default_value_t = 1)]
    gib: u64,
    /// Rounds per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const PAGE: u64 = 4096;
const SCRATCH: u64 = 4 << 20;

fn main() {
    env_logger::init();
    let args = Args::parse();
    if args.gib == 0 || args.rounds == 0 {
        eprintln!("error: --gib and --rounds must be at least 1");
        std::process::exit(2);
    }
    if let Err(e) = inflate_section(&args) {
        eprintln!("error: inflate benchmark failed: {e}");
        std::process::exit(1);
    }
    gcma_section(&args);
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Fault in every guest page of `[0, len)`.
fn populate(mem: &GuestMemoryMmap, len: u64) -> Result<(), Box<dyn std::error::Error>> {
    for page in 0..len / PAGE {
        mem.write_obj(page as u8 | 1, GuestAddress(page * PAGE))?;
    }
    Ok(())
}

// ======================== balloon inflate (virtio-balloon) ========================

fn inflate_section(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let len = args.gib << 30;
    let nr_pages = len / PAGE;
    let mem = Arc::new(memfd_guest_memory(&[(0, (len + SCRATCH) as usize)])?);
    let irq = Arc::new(CountingIrq::default());
    let transport = MmioTransport::new(
        Balloon::new(BalloonConfig::default()),
        mem.clone(),
        irq.clone(),
    );
    let mut d = Driver::new(transport, mem.clone(), len..len + SCRATCH);
    d.init(0, 256)?;
    let buf = d.alloc(PFNS_PER_BUFFER as u64 * 4, PAGE)?;
    let pfns: Vec<u32> = (0..nr_pages as u32).collect();

    let mut virtio = Vec::new();
    let mut deflate = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..args.rounds {
        // Through the device: write the PFN buffer, add, kick, wait for it back.
        populate(&mem, len)?;
        let t0 = Instant::now();
        send(&mut d, 0, &pfns, buf)?;
        virtio.push(t0.elapsed());
        let s = d.bus().device().status();
        if s.inflated_pages != nr_pages || s.counters.release_errors != 0 {
            return Err(format!("inflate incomplete: {s:?}").into());
        }
        let t0 = Instant::now();
        send(&mut d, 1, &pfns, buf)?;
        deflate.push(t0.elapsed());

        // Baseline: the same releases, called directly, one per 256 pages.
        populate(&mem, len)?;
        let t0 = Instant::now();
        for chunk in 0..nr_pages / PFNS_PER_BUFFER as u64 {
            let bytes = PFNS_PER_BUFFER as u64 * PAGE;
            memory_release::release(&mem, chunk * bytes, bytes)?;
        }
        direct.push(t0.elapsed());
    }
    let (v, dl, b) = (median(virtio), median(deflate), median(direct));
    let pfn_rate = |t: Duration| nr_pages as f64 / t.as_secs_f64();
    println!(
        "balloon inflate of {} GiB ({nr_pages} PFNs, populated memfd pages), median of {} rounds",
        args.gib, args.rounds
    );
    println!("{:<34} {:>10} {:>16}", "path", "ms", "PFNs/s");
    println!(
        "{:<34} {:>10.1} {:>16.0}",
        "virtio-balloon inflate (mmio)",
        v.as_secs_f64() * 1e3,
        pfn_rate(v)
    );
    println!(
        "{:<34} {:>10.1} {:>16.0}",
        "virtio-balloon deflate (mmio)",
        dl.as_secs_f64() * 1e3,
        pfn_rate(dl)
    );
    println!(
        "{:<34} {:>10.1} {:>16.0}",
        "direct punch-hole (baseline)",
        b.as_secs_f64() * 1e3,
        pfn_rate(b)
    );
    println!(
        "inflate via device / direct release: {:.2}x",
        v.as_secs_f64() / b.as_secs_f64()
    );
    println!(
        "RESULT inflate_gib_ms={:.1}",
        v.as_secs_f64() * 1e3 / args.gib as f64
    );
    Ok(())
}

/// Send `pfns` on `queue`, one 256-PFN buffer per notification, waiting for each.
fn send(
    d: &mut Driver<MmioTransport<Balloon>>,
    queue: u16,
    pfns: &[u32],
    buf: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut bytes = Vec::with_capacity(PFNS_PER_BUFFER * 4);
    for chunk in pfns.chunks(PFNS_PER_BUFFER) {
        bytes.clear();
        bytes.extend(chunk.iter().flat_map(|p| p.to_le_bytes()));
        d.write_mem(buf, &bytes)?;
        d.add_chain(queue, &[(buf, bytes.len() as u32, false)])?;
        d.kick(queue);
        if d.pop_used(queue)?.is_none() {
            return Err("device did not return the PFN buffer".into());
        }
    }
    Ok(())
}

// ======================== gcma: virtqueue vs direct pool calls ========================
// Owned by the gcma device work: measures cleancache put+get and frontswap store+load through the
// virtio-gcma queues against calling the pool directly in the same run, and prints
// `RESULT virtio_overhead_ratio=<queue path time / direct time>`.

fn gcma_section(_args: &Args) {
    println!("gcma virtqueue-vs-direct section: not implemented yet (no RESULT printed)");
}
