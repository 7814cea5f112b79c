//! Device benchmarks, each against a baseline measured in the same run.
//!
//! `cargo run --release -p balloon --example devices_bench`
//!
//! - Balloon inflate: a guest-driver stand-in hands 1 GiB of populated guest pages to
//!   virtio-balloon through the virtio-mmio transport (256 PFNs per buffer, one notification per
//!   buffer, as the Linux driver does); baseline: the same release calls made directly.
//! - Balloon inflate on huge pages: the same inflate of 1 GiB of guest RAM backed by 2 MiB
//!   hugetlb pages against 4 KiB memfd RAM, interleaved in one run. With hugetlb the balloon
//!   releases a whole 2 MiB page (one punch) once all 512 of its PFNs are in; the host's
//!   `HugePages_Free` is printed before and after to show the pages really go back.
//! - gcma: cleancache/frontswap through the virtqueue vs calling the pool directly (section
//!   marked below).
//!
//! Prints `RESULT inflate_gib_ms=<x>`, `RESULT inflate_huge_over_4k_speedup=<x>` (when the host
//! has 514 free hugetlb pages: `echo 600 > /proc/sys/vm/nr_hugepages`) and
//! `RESULT virtio_overhead_ratio=<x>`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use balloon::memory_release;
use balloon::testing::{huge_memfd_guest_memory, memfd_guest_memory, CountingIrq, Driver};
use balloon::transport::{GuestMemoryMmap, MmioTransport};
use balloon::virtio_balloon::{Balloon, BalloonConfig, PFNS_PER_BUFFER};
use clap::Parser;
use gcma_host::huge::{free_hugetlb_pages, HugePages};
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
    /// Run only the huge-page inflate section.
    #[arg(long)]
    huge_only: bool,
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
    if !args.huge_only {
        if let Err(e) = inflate_section(&args) {
            eprintln!("error: inflate benchmark failed: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = huge_inflate_section(&args) {
        eprintln!("error: huge-page inflate benchmark failed: {e}");
        std::process::exit(1);
    }
    if args.huge_only {
        return;
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

/// An inflate's time and `HugePages_Free` after populating and after inflating.
type InflateRun = (Duration, Option<u64>, Option<u64>);

/// One inflate of `len` bytes of populated guest RAM backed as `huge` says, through the device;
/// returns its time and `HugePages_Free` after populating and after inflating.
fn inflate_once(len: u64, huge: HugePages) -> Result<InflateRun, Box<dyn std::error::Error>> {
    let nr_pages = len / PAGE;
    let mem = Arc::new(huge_memfd_guest_memory((len + SCRATCH) as usize, huge)?);
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
    populate(&mem, len)?;
    let free_populated = free_hugetlb_pages();
    let t0 = Instant::now();
    send(&mut d, 0, &pfns, buf)?;
    let t = t0.elapsed();
    let free_inflated = free_hugetlb_pages();
    let s = d.bus().device().status();
    if s.inflated_pages != nr_pages
        || s.counters.release_errors != 0
        || s.counters.released_bytes != len
    {
        return Err(format!("inflate incomplete: {s:?}").into());
    }
    Ok((t, free_populated, free_inflated))
}

/// Inflate of `--gib` on hugetlb RAM against 4 KiB memfd RAM, interleaved.
fn huge_inflate_section(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let len = args.gib << 30;
    if let Err(why) = gcma_host::huge::available(HugePages::Hugetlb, len + SCRATCH) {
        println!("\nballoon inflate on hugetlb RAM: not measured: {why}");
        return Ok(());
    }
    let (mut small, mut huge) = (Vec::new(), Vec::new());
    let mut free = (None, None);
    for _ in 0..args.rounds {
        small.push(inflate_once(len, HugePages::Off)?.0);
        let (t, populated, inflated) = inflate_once(len, HugePages::Hugetlb)?;
        huge.push(t);
        free = (populated, inflated);
    }
    let (s, h) = (median(small), median(huge));
    let gib_s = |t: Duration| args.gib as f64 / t.as_secs_f64();
    println!();
    println!(
        "balloon inflate of {} GiB through the device, 4 KiB vs 2 MiB hugetlb guest RAM, \
         median of {} rounds",
        args.gib, args.rounds
    );
    println!("{:<34} {:>10} {:>10}", "guest RAM", "ms", "GiB/s");
    println!(
        "{:<34} {:>10.1} {:>10.1}",
        "4 KiB memfd",
        s.as_secs_f64() * 1e3,
        gib_s(s)
    );
    println!(
        "{:<34} {:>10.1} {:>10.1}",
        "2 MiB hugetlb memfd",
        h.as_secs_f64() * 1e3,
        gib_s(h)
    );
    let show = |n: Option<u64>| n.map_or_else(|| "?".to_string(), |n| n.to_string());
    println!(
        "host HugePages_Free: {} with the guest's RAM populated, {} after the inflate \
         (+{} huge pages back to the host)",
        show(free.0),
        show(free.1),
        show(free.0.zip(free.1).map(|(a, b)| b.saturating_sub(a)))
    );
    println!(
        "RESULT inflate_huge_over_4k_speedup={:.1}",
        s.as_secs_f64() / h.as_secs_f64()
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

fn gcma_section(args: &Args) {
    // Rounds here take tens of milliseconds: take more than the inflate section does.
    if let Err(e) = gcma::run(args.rounds.max(15)) {
        eprintln!("error: gcma benchmark failed: {e}");
        std::process::exit(1);
    }
}

mod gcma {
    //! Each round: `KEYS` cleancache puts then `KEYS` gets (every get must hit), and `KEYS`
    //! frontswap stores then `KEYS` loads, once through the virtqueue path (harness driver →
    //! virtio-mmio transport → `GcmaDevice` → `Pool`) and once as direct `Pool` calls from the
    //! same thread. The guest's pages already sit in guest memory (a real driver passes their
    //! addresses; it does not copy them), so the queue path pays for headers, descriptors, the
    //! notification, the device's copies and the used ring.

    use std::error::Error;
    use std::ops::Range;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use balloon::gcma::proto::{
        status, PageKey, Request, Response, SwapKey, PAGE_SIZE, REQUEST_HEADER_LEN, RESPONSE_LEN,
        VIRTIO_GCMA_F_CLEANCACHE, VIRTIO_GCMA_F_FRONTSWAP,
    };
    use balloon::gcma::testing::MemfdGrantMapper;
    use balloon::gcma::GcmaDevice;
    use balloon::testing::{memfd_guest_memory, CountingIrq, Driver};
    use balloon::transport::chain::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
    use balloon::transport::MmioTransport;
    use gcma_host::api::{CleancacheKey, FrontswapKey, GcmaBackend};
    use gcma_host::pool::{Pool, PoolConfig};

    use super::median;

    /// Keys per operation kind per round.
    const KEYS: usize = 4096;
    /// Requests per notification (three descriptors each in a 256-entry queue).
    const BATCH: usize = 64;
    /// Pool size: room for both paths' cleancache and frontswap pages.
    const POOL_PAGES: u64 = 8 * KEYS as u64;

    type Dev = Driver<MmioTransport<GcmaDevice>>;

    /// A guest driver with fixed request slots (the way `guest-agent` drives the device): slot
    /// `s` owns descriptors `3s..3s+3` and a header/response area; a batch is written with a few
    /// guest-memory writes, published, notified once, and collected from the used ring.
    struct Guest {
        d: Dev,
        /// The guest's data pages, one per key.
        pages: u64,
        /// Per batch slot: header at +0, response at +64.
        small: u64,
        /// Next available-ring index per queue (every batch completes before the next).
        idx: [u16; 3],
    }

    fn page_bytes(i: usize) -> Vec<u8> {
        let mut v = vec![(i % 251) as u8; PAGE_SIZE];
        v[..8].copy_from_slice(&(i as u64).to_le_bytes());
        v
    }

    fn guest(pool: Arc<Pool>) -> Result<Guest, Box<dyn Error>> {
        let mem_len = (KEYS + 1024) * PAGE_SIZE;
        let mem = Arc::new(memfd_guest_memory(&[(0, mem_len)])?);
        let mapper = MemfdGrantMapper::new(pool, 1 << 40, 1 << 30);
        let dev = GcmaDevice::new(mapper.window(), "bench-vm");
        let t = MmioTransport::new(dev, mem.clone(), Arc::new(CountingIrq::default()));
        let mut d = Driver::new(t, mem, 0..mem_len as u64);
        d.init(VIRTIO_GCMA_F_CLEANCACHE | VIRTIO_GCMA_F_FRONTSWAP, 256)?;
        let pages = d.alloc((KEYS * PAGE_SIZE) as u64, PAGE_SIZE as u64)?;
        for i in 0..KEYS {
            d.write_mem(pages + (i * PAGE_SIZE) as u64, &page_bytes(i))?;
        }
        let small = d.alloc((BATCH * 128) as u64, 128)?;
        Ok(Guest {
            d,
            pages,
            small,
            idx: [0; 3],
        })
    }

    /// Writes `bytes` at ring position `pos` of a ring of `size` entries of `entry` bytes
    /// starting at `base` (splitting at the wrap).
    fn ring_write(
        g: &Guest,
        base: u64,
        size: u16,
        entry: usize,
        pos: u16,
        bytes: &[u8],
    ) -> Result<(), Box<dyn Error>> {
        let first = (usize::from(size - pos % size) * entry).min(bytes.len());
        let at = base + (usize::from(pos % size) * entry) as u64;
        g.d.write_mem(at, &bytes[..first])?;
        if first < bytes.len() {
            g.d.write_mem(base, &bytes[first..])?;
        }
        Ok(())
    }

    fn ring_read(
        g: &Guest,
        base: u64,
        size: u16,
        entry: usize,
        pos: u16,
        len: usize,
    ) -> Result<Vec<u8>, Box<dyn Error>> {
        let first = (usize::from(size - pos % size) * entry).min(len);
        let at = base + (usize::from(pos % size) * entry) as u64;
        let mut v = g.d.read_mem(at, first)?;
        if first < len {
            v.extend(g.d.read_mem(base, len - first)?);
        }
        Ok(v)
    }

    /// Sends `reqs` (all on one queue) in batches of `BATCH`, one notification per batch; the
    /// data page of request `i` is guest page `first + i`. Fails unless every status is `want`;
    /// returns the last response.
    fn send_all(
        g: &mut Guest,
        reqs: &[Request],
        first: usize,
        want: u32,
    ) -> Result<Response, Box<dyn Error>> {
        let queue = reqs[0].queue();
        let l = g.d.queue_layout(queue).ok_or("queue not set up")?;
        let mut small = vec![0u8; BATCH * 128];
        let mut descs = vec![0u8; BATCH * 3 * 16];
        let mut last = Response::default();
        for (b, batch) in reqs.chunks(BATCH).enumerate() {
            let n = batch.len();
            let mut avail = Vec::with_capacity(2 * n);
            for (s, r) in batch.iter().enumerate() {
                small[s * 128..s * 128 + REQUEST_HEADER_LEN].copy_from_slice(&r.encode());
                let hdr = g.small + (s * 128) as u64;
                let page = g.pages + ((first + b * BATCH + s) * PAGE_SIZE) as u64;
                let base = (3 * s) as u16;
                let (data, data_flags) = match r {
                    Request::Put(_) | Request::Store(_) => (Some(page), 0),
                    Request::Get(_) | Request::Load(_) => (Some(page), VIRTQ_DESC_F_WRITE),
                    _ => (None, 0),
                };
                let mut put = |i: u16, addr: u64, len: u32, flags: u16, next: u16| {
                    let d = &mut descs[usize::from(i) * 16..][..16];
                    d[0..8].copy_from_slice(&addr.to_le_bytes());
                    d[8..12].copy_from_slice(&len.to_le_bytes());
                    d[12..14].copy_from_slice(&flags.to_le_bytes());
                    d[14..16].copy_from_slice(&next.to_le_bytes());
                };
                let resp_next = base + 2;
                match data {
                    Some(p) => {
                        put(
                            base,
                            hdr,
                            REQUEST_HEADER_LEN as u32,
                            VIRTQ_DESC_F_NEXT,
                            base + 1,
                        );
                        put(
                            base + 1,
                            p,
                            PAGE_SIZE as u32,
                            data_flags | VIRTQ_DESC_F_NEXT,
                            resp_next,
                        );
                    }
                    None => put(
                        base,
                        hdr,
                        REQUEST_HEADER_LEN as u32,
                        VIRTQ_DESC_F_NEXT,
                        resp_next,
                    ),
                }
                put(
                    resp_next,
                    hdr + 64,
                    RESPONSE_LEN as u32,
                    VIRTQ_DESC_F_WRITE,
                    0,
                );
                avail.extend_from_slice(&base.to_le_bytes());
            }
            let idx = g.idx[usize::from(queue)];
            g.d.write_mem(g.small, &small[..n * 128])?;
            g.d.write_mem(l.desc, &descs[..n * 3 * 16])?;
            ring_write(g, l.avail + 4, l.size, 2, idx, &avail)?;
            let next = idx.wrapping_add(n as u16);
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            g.d.write_mem(l.avail + 2, &next.to_le_bytes())?;
            g.idx[usize::from(queue)] = next;
            g.d.kick(queue);
            let used_idx = g.d.read_mem(l.used + 2, 2)?;
            if u16::from_le_bytes([used_idx[0], used_idx[1]]) != next {
                return Err("device did not return the whole batch".into());
            }
            let used = ring_read(g, l.used + 4, l.size, 8, idx, 8 * n)?;
            let answers = g.d.read_mem(g.small, n * 128)?;
            for e in used.chunks(8) {
                let head = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) as usize;
                let s = head / 3;
                if !head.is_multiple_of(3) || s >= n {
                    return Err(format!("used ring names descriptor {head}").into());
                }
                let at = s * 128 + 64;
                last = Response::decode(answers[at..at + RESPONSE_LEN].try_into()?);
                if last.status != want {
                    return Err(
                        format!("{:?}: status {}", batch[s], status::name(last.status)).into(),
                    );
                }
            }
        }
        Ok(last)
    }

    struct Times {
        cc: Vec<Duration>,
        fs: Vec<Duration>,
    }

    fn run_rounds(rounds: usize) -> Result<(Times, Times, Vec<f64>), Box<dyn Error>> {
        let pool = Pool::new(PoolConfig::new(POOL_PAGES))?;
        let mut g = guest(pool.clone())?;
        let direct_client = pool.register_client("bench-direct");
        let pool_id = pool.cleancache_new_pool(direct_client)?;

        // Queue-path cleancache pool.
        let queue_pool = send_all(&mut g, &[Request::NewPool], 0, status::OK)?.value0 as u32;

        let ckey = |pool, i: usize| PageKey {
            pool,
            object: [1, 2, 3],
            index: i as u32,
        };
        let puts: Vec<Request> = (0..KEYS)
            .map(|i| Request::Put(ckey(queue_pool, i)))
            .collect();
        let gets: Vec<Request> = (0..KEYS)
            .map(|i| Request::Get(ckey(queue_pool, i)))
            .collect();
        let skey = |i: usize| SwapKey {
            area: 0,
            offset: i as u64,
        };
        let stores: Vec<Request> = (0..KEYS).map(|i| Request::Store(skey(i))).collect();
        let loads: Vec<Request> = (0..KEYS).map(|i| Request::Load(skey(i))).collect();
        let mut host_pages: Vec<Vec<u8>> = (0..KEYS).map(page_bytes).collect();

        let mut queue = Times {
            cc: vec![],
            fs: vec![],
        };
        let mut direct = Times {
            cc: vec![],
            fs: vec![],
        };
        let mut ratios = Vec::new();
        let direct_batch = |req: &Request, keys: Range<usize>, pages: &mut [Vec<u8>]| {
            for i in keys {
                let ck = CleancacheKey {
                    pool: pool_id,
                    object: [1, 2, 3],
                    index: i as u32,
                };
                let fk = FrontswapKey {
                    area: 0,
                    offset: i as u64,
                };
                let p = &mut pages[i];
                let ok = match req {
                    Request::Put(_) => pool.cleancache_put(direct_client, ck, p)?,
                    Request::Get(_) => pool.cleancache_get(direct_client, ck, p)?,
                    Request::Store(_) => {
                        pool.frontswap_store(direct_client, fk, p).map(|()| true)?
                    }
                    _ => pool.frontswap_load(direct_client, fk, p)?,
                };
                if !ok {
                    return Err(format!("direct {req:?} failed for key {i}").into());
                }
            }
            Ok::<(), Box<dyn Error>>(())
        };
        // The two paths take turns phase by phase (all puts, all gets, ...; who goes first
        // alternates), so a busy machine slows both alike while each phase still walks all
        // `KEYS` pages (cold caches, as swap and page-cache traffic is); round 0 warms up and is
        // not counted.
        for round in 0..=rounds {
            // queue cleancache, queue frontswap, direct cleancache, direct frontswap
            let mut t = [Duration::ZERO; 4];
            for (phase, (reqs, kind)) in [(&puts, 0), (&gets, 0), (&stores, 1), (&loads, 1)]
                .into_iter()
                .enumerate()
            {
                let queue_first = (phase + round) % 2 == 0;
                for step in 0..2 {
                    let t0 = Instant::now();
                    if (step == 0) == queue_first {
                        send_all(&mut g, reqs, 0, status::OK)?;
                        t[kind] += t0.elapsed();
                    } else {
                        direct_batch(&reqs[0], 0..KEYS, &mut host_pages)?;
                        t[2 + kind] += t0.elapsed();
                    }
                }
            }
            if round > 0 {
                queue.cc.push(t[0]);
                queue.fs.push(t[1]);
                direct.cc.push(t[2]);
                direct.fs.push(t[3]);
                ratios.push((t[0] + t[1]).as_secs_f64() / (t[2] + t[3]).as_secs_f64());
            }
        }
        // The queue path moved real data: the last loads left every page in place.
        for i in [0, KEYS / 2, KEYS - 1] {
            let got = g.d.read_mem(g.pages + (i * PAGE_SIZE) as u64, PAGE_SIZE)?;
            if got != host_pages[i] || got != page_bytes(i) {
                return Err(format!("queue path corrupted page {i}").into());
            }
        }
        Ok((queue, direct, ratios))
    }

    pub fn run(rounds: usize) -> Result<(), Box<dyn Error>> {
        let (queue, direct, mut ratios) = run_rounds(rounds)?;
        let (qc, qf) = (median(queue.cc), median(queue.fs));
        let (dc, df) = (median(direct.cc), median(direct.fs));
        let ops = (2 * KEYS) as f64;
        println!();
        println!(
            "gcma: {KEYS} puts+gets / stores+loads per round, batches of {BATCH} per notification, paths interleaved per phase, median of {rounds} rounds"
        );
        println!("{:<40} {:>10} {:>12}", "path", "ms", "ops/s");
        let row = |name: &str, t: Duration| {
            println!(
                "{name:<40} {:>10.2} {:>12.0}",
                t.as_secs_f64() * 1e3,
                ops / t.as_secs_f64()
            )
        };
        row("cleancache put+get, virtqueue", qc);
        row("cleancache put+get, direct pool", dc);
        row("frontswap store+load, virtqueue", qf);
        row("frontswap store+load, direct pool", df);
        println!(
            "cleancache queue/direct: {:.2}x, frontswap queue/direct: {:.2}x",
            qc.as_secs_f64() / dc.as_secs_f64(),
            qf.as_secs_f64() / df.as_secs_f64()
        );
        ratios.sort_by(f64::total_cmp);
        println!(
            "per-round queue/direct ratios: {}",
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let ratio = ratios[ratios.len() / 2];
        println!("RESULT virtio_overhead_ratio={ratio:.2}");
        Ok(())
    }
}
