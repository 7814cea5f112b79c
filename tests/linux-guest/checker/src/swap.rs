//! The swap storm (`guest-checker swap`).

use std::time::{Duration, Instant};

use guest_checker::cli::SwapArgs;
use guest_checker::pattern::{self, WORDS_PER_PAGE};
use guest_checker::report::Record;

use crate::sys::{self, emit, ms, AnonMap, DiskInfo, Error};

/// Pages that failed a check, and what the first of them held.
struct Damage {
    bad: Vec<u64>,
    first: Option<(u64, String)>,
}

impl Damage {
    fn new(nr_pages: u64) -> Self {
        Self {
            bad: vec![0; nr_pages.div_ceil(64) as usize],
            first: None,
        }
    }

    fn mark(&mut self, page: u64, what: impl FnOnce() -> String) {
        self.bad[(page / 64) as usize] |= 1 << (page % 64);
        if self.first.is_none() {
            self.first = Some((page, what()));
        }
    }

    fn count(&self) -> u64 {
        self.bad.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

fn progress(args: &SwapArgs, stage: &str, page: u64) {
    let mib = (page + 1) / 256;
    if args.progress_mib > 0
        && (page + 1).is_multiple_of(256)
        && mib.is_multiple_of(args.progress_mib)
    {
        emit(
            &Record::new("progress")
                .field("stage", stage)
                .field("mib", mib),
        );
    }
}

pub fn run(args: &SwapArgs) -> Result<Record, Error> {
    let t_all = Instant::now();
    sys::wait_for(&args.disk, Duration::from_secs(10))?;
    let disk = DiskInfo::of(&args.disk)?;
    let dev = args.disk.to_string_lossy().into_owned();
    sys::run("mkswap", &[&dev])?;
    let mut swapon_args: Vec<&str> = args.discard.swapon_flag().into_iter().collect();
    swapon_args.push(&dev);
    sys::run("swapon", &swapon_args)?;
    let swap_total_kib = sys::meminfo_kib("SwapTotal")?;
    let (pswpin0, pswpout0) = (sys::vmstat("pswpin")?, sys::vmstat("pswpout")?);

    let nr_pages = args.mib * 256;
    let len = usize::try_from(args.mib << 20).map_err(|_| Error::Parse("--mib".into()))?;
    let mut map = AnonMap::new(len)?;
    let words = map.words_mut();
    log::info!("writing {nr_pages} pages, seed {}", args.seed);
    let t = Instant::now();
    for (page, chunk) in (0u64..).zip(words.chunks_exact_mut(WORDS_PER_PAGE)) {
        pattern::fill(chunk, args.seed, page);
        progress(args, "write", page);
    }
    let write = t.elapsed();
    // The mapping's address escaped to the kernel (mmap); keep the compiler from assuming the
    // bytes it just wrote are still there when it reads them back.
    std::hint::black_box(words.as_mut_ptr());

    let mut damage = Damage::new(nr_pages);
    let mut verify = Vec::new();
    let mut corrupt_per_pass = Vec::new();
    for pass in 1..=args.verify_passes {
        log::info!("verify pass {pass}");
        let t = Instant::now();
        let mut bad = 0u64;
        for (page, chunk) in (0u64..).zip(words.chunks_exact(WORDS_PER_PAGE)) {
            if !pattern::check(chunk, args.seed, page) {
                bad += 1;
                damage.mark(page, || pattern::describe(chunk, args.seed, nr_pages));
            }
            progress(args, &format!("verify{pass}"), page);
        }
        verify.push(t.elapsed());
        corrupt_per_pass.push(bad);
        std::hint::black_box(words.as_mut_ptr());
    }
    drop(map);
    let (pswpin1, pswpout1) = (sys::vmstat("pswpin")?, sys::vmstat("pswpout")?);
    let t = Instant::now();
    sys::run("swapoff", &[&dev])?;
    let swapoff = t.elapsed();

    let corrupt = damage.count();
    let mut r = Record::new("summary")
        .field("mib", args.mib)
        .field("pages", nr_pages)
        .field("seed", args.seed)
        .field("discard", args.discard.name())
        .field("corrupt", corrupt);
    for (i, c) in corrupt_per_pass.iter().enumerate() {
        r.push(&format!("corrupt{}", i + 1), c);
    }
    match &damage.first {
        Some((page, held)) => {
            r.push("first_bad_page", page);
            r.push("first_bad_held", held);
        }
        None => r.push("first_bad_page", "-"),
    }
    r.push("write_ms", ms(write));
    for (i, d) in verify.iter().enumerate() {
        r.push(&format!("verify{}_ms", i + 1), ms(*d));
    }
    r.push("swapoff_ms", ms(swapoff));
    r.push("total_ms", ms(t_all.elapsed()));
    r.push("pswpin", pswpin1.saturating_sub(pswpin0));
    r.push("pswpout", pswpout1.saturating_sub(pswpout0));
    r.push("swap_total_kib", swap_total_kib);
    r.push("disk", &disk.name);
    r.push("disk_bytes", disk.size_bytes);
    r.push("disk_rotational", &disk.rotational);
    r.push("disk_discard_max_bytes", &disk.discard_max_bytes);
    r.push("ok", u8::from(corrupt == 0));
    Ok(r)
}
