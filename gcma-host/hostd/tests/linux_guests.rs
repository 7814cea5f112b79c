//! Stock Linux guests (Debian's cloud kernel under QEMU with software emulation, our initramfs
//! and checker; `tests/linux-guest/README.md`) on gcma-hostd's disks:
//! 1. a swap storm under each frontswap policy while the host takes and frees grants that
//!    evict swap pages;
//! 2. two guests on one daemon pool, each with a swap disk, with per-guest caps honoured;
//! 3. a cache disk read twice with `drop_caches` between (the second read comes from the pool),
//!    and again after grants evicted the cache;
//! 4. `kill -9` of the daemon mid-storm under write-through, and a restart over the same backing
//!    directory: the guest reconnects and loses nothing.
//!
//! Each asserts on the checker's summary line and on the daemon's metrics. Every guest has a
//! wall-clock budget (QEMU is killed past it and the test fails), and so does every wait on the
//! daemon.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e_tests::linux_guest::{
    image, linux_guest_or_skip, CacheArgs, Disk, GuestRun, Kit, Mode, QemuGuest, SwapArgs,
};
use support::HostD;

/// The smallest guest Debian's kernel boots with this initramfs, with some room.
const GUEST_MIB: u64 = 80;
/// What the checker swaps: twice the guest's RAM.
const STORM_MIB: u64 = 2 * GUEST_MIB;
/// The daemon's pool: a little more than what a storm swaps out at once (the guest keeps part
/// of it in RAM), so that reads come from the pool until grants evict pages.
const POOL_MIB: u64 = 128;
/// Budget of one guest.
const GUEST_BUDGET: Duration = Duration::from_secs(300);

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn summary_u64(run: &GuestRun, key: &str) -> u64 {
    run.summary()
        .and_then(|s| s.get_u64(key))
        .unwrap_or_else(|| panic!("summary has no {key}\n{}", run.diagnostics()))
}

fn report(run: &GuestRun) {
    println!(
        "{}: wall {:.1?}, userspace after {:.1?}, summary: {}",
        run.name,
        run.wall,
        run.userspace_at(),
        run.summary().map(|s| s.to_line()).unwrap_or_default()
    );
}

/// Checks a swap storm's summary: clean exit, every page intact, pages really went to the disk.
fn assert_storm_ok(run: &GuestRun, hostd: &HostD) {
    assert!(
        run.clean_exit(),
        "{}\ndaemon log:\n{}",
        run.diagnostics(),
        hostd.log_text()
    );
    let s = run.summary().expect("a summary line");
    assert!(s.ok(), "{}", run.diagnostics());
    assert_eq!(summary_u64(run, "pages"), STORM_MIB * 256);
    assert_eq!(summary_u64(run, "corrupt"), 0, "{}", s.to_line());
    assert!(summary_u64(run, "pswpout") > 0, "{}", s.to_line());
    assert!(summary_u64(run, "pswpin") > 0, "{}", s.to_line());
}

/// Takes and frees grants on a timer while a guest runs: every `period`, a grant of `pages`,
/// held for half a period. Stops when `stop` is set; returns how many grants it took.
fn grant_loop(
    api: PathBuf,
    pages: u64,
    period: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(period / 2);
            let (status, body) =
                support::http(&api, "POST", "/grants", &format!("{{\"pages\": {pages}}}"));
            if status == 201 {
                n += 1;
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                std::thread::sleep(period / 2);
                let id = v["id"].as_u64().unwrap();
                let (status, body) = support::http(&api, "DELETE", &format!("/grants/{id}"), "");
                assert_eq!(status, 200, "{body}");
            }
        }
        n
    })
}

fn swap_guest(kit: &Kit, name: &str, socket: &Path, seed: u64) -> QemuGuest {
    QemuGuest::new(kit)
        .name(name)
        .memory_mib(GUEST_MIB)
        .disk(Disk::vhost_user_blk(socket))
        .checker(Mode::Swap(SwapArgs {
            mib: STORM_MIB,
            seed,
            ..SwapArgs::default()
        }))
        .timeout(GUEST_BUDGET)
}

/// Test 1, for one policy.
fn swap_storm_under(policy: &str, extra: &[&str]) {
    let test = format!("swap storm under {policy}");
    let Some(kit) = linux_guest_or_skip(&test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("swap.sock");
    let mut a = args(&[
        "--pool-mib",
        &POOL_MIB.to_string(),
        "--frontswap-policy",
        policy,
        "--backing-dir",
        &dir.path().display().to_string(),
        "--swap-disk",
        &format!("{},size=256M,guest=vm0", sock.display()),
    ]);
    a.extend(args(extra));
    let mut hostd = HostD::start(dir.path(), policy, &a, std::slice::from_ref(&sock));
    let stop = Arc::new(AtomicBool::new(false));
    // A quarter of the pool every two seconds: the grant lands on swap pages.
    let granter = grant_loop(
        hostd.api.clone(),
        POOL_MIB * 256 / 4,
        Duration::from_secs(2),
        stop.clone(),
    );
    let run = swap_guest(&kit, &format!("swap-{policy}"), &sock, 11)
        .run()
        .expect("qemu runs");
    stop.store(true, Ordering::Relaxed);
    let grants = granter.join().expect("granter");
    report(&run);
    assert_storm_ok(&run, &hostd);
    let m = hostd.metrics();
    let get = |name, labels: &[(&str, &str)]| support::metric(&m, name, labels);
    println!(
        "{policy}: {grants} grants; evicted by grants {}, file writes {}, written back {}, put back {}, pool hits {}, misses {}",
        get("gcma_evicted_pages_total", &[("reason", "grant"), ("kind", "frontswap")]),
        get("gcma_disk_file_writes_total", &[]),
        get("gcma_written_back_pages_total", &[]),
        get("gcma_put_back_pages_total", &[]),
        get("gcma_disk_pool_hits_total", &[]),
        get("gcma_disk_pool_misses_total", &[]),
    );
    assert!(grants > 0, "no grant succeeded:\n{}", hostd.log_text());
    assert!(
        get(
            "gcma_evicted_pages_total",
            &[("reason", "grant"), ("kind", "frontswap")]
        ) > 0.0,
        "grants evicted no swap page"
    );
    let disk = [("disk", "swap"), ("guest", "vm0")];
    assert!(
        get(
            "gcma_disk_requests_total",
            &[disk[0], ("type", "out"), ("status", "ok")]
        ) > 0.0
    );
    assert_eq!(get("gcma_disk_requests_total", &[("status", "ioerr")]), 0.0);
    assert_eq!(get("gcma_disk_guest_errors_total", &[]), 0.0);
    assert!(
        get("gcma_disk_pool_hits_total", &disk) > 0.0,
        "no read served from the pool"
    );
    match policy {
        "write-through" => {
            assert!(
                get("gcma_disk_file_writes_total", &disk)
                    >= get("gcma_frontswap_stores_total", &[])
            )
        }
        "write-back" => assert!(get("gcma_written_back_pages_total", &[]) > 0.0),
        _ => {
            assert!(get("gcma_put_back_pages_total", &[]) > 0.0);
            // Past the disk's put-back limit, evicted pages went to its file.
            assert!(get("gcma_written_back_pages_total", &[]) > 0.0);
        }
    }
    let status = hostd.sigterm(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM: {status}\n{}", hostd.log_text());
}

#[test]
fn swap_storm_write_through_with_grants() {
    swap_storm_under("write-through", &[]);
}

#[test]
fn swap_storm_write_back_with_grants() {
    swap_storm_under("write-back", &[]);
}

#[test]
fn swap_storm_put_back_with_grants() {
    // A small put-back limit, so that evicted pages go both to host memory and to the file.
    swap_storm_under("put-back", &["--put-back-limit-mib", "4"]);
}

/// Test 2: two guests (two QEMU processes) on one daemon pool, each with a swap disk capped at a
/// quarter of the pool. Both storms pass; neither disk ever holds more pool pages than its cap
/// (sampled through the run), both hit their caps, and the pool never holds more swap pages than
/// the two caps together.
#[test]
fn two_guests_share_one_pool_within_their_caps() {
    let test = "two guests with caps";
    let Some(kit) = linux_guest_or_skip(test) else {
        return;
    };
    const POOL: u64 = 64;
    const CAP_PAGES: u64 = POOL * 256 / 4;
    let dir = tempfile::tempdir().unwrap();
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let a = args(&[
        "--pool-mib",
        &POOL.to_string(),
        "--frontswap-policy",
        "write-back",
        "--backing-dir",
        &dir.path().display().to_string(),
        "--swap-disk",
        &format!("{},size=256M,name=swap-a,guest=vm-a,cap=16M", sa.display()),
        "--swap-disk",
        &format!("{},size=256M,name=swap-b,guest=vm-b,cap=16M", sb.display()),
    ]);
    let mut hostd = HostD::start(dir.path(), "two", &a, &[sa.clone(), sb.clone()]);
    let ga = swap_guest(&kit, "vm-a", &sa, 21)
        .spawn()
        .expect("qemu a runs");
    let gb = swap_guest(&kit, "vm-b", &sb, 22)
        .spawn()
        .expect("qemu b runs");
    // Sample the daemon while both run.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (api, stop) = (hostd.api.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut max = [0f64; 3];
            let mut samples = 0;
            while !stop.load(Ordering::Relaxed) {
                let (_, m) = support::http(&api, "GET", "/metrics", "");
                for (i, disk) in ["swap-a", "swap-b"].iter().enumerate() {
                    let v = support::metric(&m, "gcma_disk_pool_pages", &[("disk", disk)]);
                    max[i] = max[i].max(v);
                }
                let fs = support::metric(&m, "gcma_pool_pages", &[("state", "frontswap")]);
                max[2] = max[2].max(fs);
                samples += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            (max, samples)
        })
    };
    let ra = ga.wait().expect("qemu a ends");
    let rb = gb.wait().expect("qemu b ends");
    stop.store(true, Ordering::Relaxed);
    let (max, samples) = sampler.join().expect("sampler");
    report(&ra);
    report(&rb);
    assert_storm_ok(&ra, &hostd);
    assert_storm_ok(&rb, &hostd);
    let m = hostd.metrics();
    println!(
        "max pool pages over {samples} samples: a {} b {} swap in pool {}; cap hits a {} b {}",
        max[0],
        max[1],
        max[2],
        support::metric(&m, "gcma_disk_cap_rejections_total", &[("disk", "swap-a")]),
        support::metric(&m, "gcma_disk_cap_rejections_total", &[("disk", "swap-b")]),
    );
    assert!(samples > 10);
    for (i, disk) in ["swap-a", "swap-b"].iter().enumerate() {
        assert!(max[i] > 0.0, "{disk} never used the pool");
        assert!(max[i] <= CAP_PAGES as f64, "{disk} held {} pages", max[i]);
        assert!(
            support::metric(&m, "gcma_disk_cap_rejections_total", &[("disk", disk)]) > 0.0,
            "{disk} never reached its cap"
        );
        assert_eq!(
            support::metric(&m, "gcma_disk_cap_pages", &[("disk", disk)]),
            CAP_PAGES as f64
        );
    }
    assert!(max[2] <= 2.0 * CAP_PAGES as f64);
    for guest in ["vm-a", "vm-b"] {
        assert!(
            support::metric(&m, "gcma_guest_pool_pages", &[("guest", guest)]) <= CAP_PAGES as f64
        );
    }
    let status = hostd.sigterm(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM: {status}\n{}", hostd.log_text());
}

/// Test 3: a cache disk. The guest reads a file from an ext2 image three times, dropping its page
/// cache before each read after the first. The second read is served from the pool (the disk's
/// hit counter grows by at least 90% of the file's pages) and reads the same bytes; then a grant
/// of the whole pool evicts the cache, and the third read, from the image again, is still
/// correct.
#[test]
fn cache_disk_serves_rereads_from_the_pool() {
    let test = "cache disk";
    let Some(kit) = linux_guest_or_skip(test) else {
        return;
    };
    const POOL: u64 = 64;
    const FILE_BYTES: usize = 16 << 20;
    let file_pages = (FILE_BYTES / 4096) as f64;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("root.ext2");
    let Some(ext2) = e2e_tests::linux_guest::or_skip(
        test,
        image::ext2_with_random_file(&img, "data.bin", FILE_BYTES, 5),
    ) else {
        return;
    };
    let sock = dir.path().join("cache.sock");
    let a = args(&[
        "--pool-mib",
        &POOL.to_string(),
        "--cache-disk",
        &format!("{},image={},guest=vm0", sock.display(), img.display()),
    ]);
    let mut hostd = HostD::start(dir.path(), "cache", &a, std::slice::from_ref(&sock));
    let mut g = QemuGuest::new(&kit)
        .name("cache")
        .memory_mib(GUEST_MIB)
        .disk(Disk::vhost_user_blk(&sock))
        .checker(Mode::Cache(CacheArgs {
            disk: "/dev/vda".into(),
            fstype: "ext2".into(),
            file: ext2.file_name.clone().into(),
            sha256: Some(ext2.sha256.clone()),
            reads: 3,
            pause_before: vec![2, 3],
        }))
        .timeout(Duration::from_secs(180))
        .spawn()
        .expect("qemu runs");
    let disk = [("disk", "cache")];
    g.wait_for_pause(1, Duration::from_secs(120))
        .expect("read 1 done");
    let hits1 = hostd.metric("gcma_disk_pool_hits_total", &disk);
    let cached = hostd.metric("gcma_disk_pool_pages", &disk);
    assert!(cached >= 0.9 * file_pages, "only {cached} pages cached");
    g.resume().unwrap();
    g.wait_for_pause(2, Duration::from_secs(120))
        .expect("read 2 done");
    let hits2 = hostd.metric("gcma_disk_pool_hits_total", &disk);
    // Every page of the pool, cache included, goes to a grant.
    let id = hostd.grant(POOL * 256).expect("a whole-pool grant");
    assert_eq!(hostd.metric("gcma_disk_pool_pages", &disk), 0.0);
    let evicted = hostd.metric(
        "gcma_evicted_pages_total",
        &[("reason", "grant"), ("kind", "cleancache")],
    );
    hostd.free(id);
    let misses2 = hostd.metric("gcma_disk_pool_misses_total", &disk);
    g.resume().unwrap();
    let run = g.wait().expect("qemu ends");
    report(&run);
    assert!(
        run.clean_exit(),
        "{}\n{}",
        run.diagnostics(),
        hostd.log_text()
    );
    let s = run.summary().expect("a summary");
    assert!(s.ok(), "{}", run.diagnostics());
    assert_eq!(s.get("expected"), Some("match"), "{}", s.to_line());
    assert_eq!(summary_u64(&run, "reads"), 3);
    let misses3 = hostd.metric("gcma_disk_pool_misses_total", &disk);
    println!(
        "cache: {cached} pages cached after read 1; hits {hits1} -> {hits2}; {evicted} evicted by the grant; misses {misses2} -> {misses3}"
    );
    assert!(
        hits2 - hits1 >= 0.9 * file_pages,
        "second read: {} hits for {file_pages} pages",
        hits2 - hits1
    );
    assert!(evicted >= 0.9 * file_pages);
    assert!(
        misses3 - misses2 >= 0.9 * file_pages,
        "the third read must come from the image"
    );
    let status = hostd.sigterm(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM: {status}\n{}", hostd.log_text());
}

/// Test 4: `kill -9` of the daemon in the middle of a swap storm under write-through, a restart
/// over the same backing directory three seconds later; the guest's QEMU reconnects and the
/// storm finishes with every page intact: nothing the guest had acknowledged was lost.
#[test]
fn kill_9_and_restart_mid_storm_loses_nothing() {
    let test = "kill -9 and restart";
    let Some(kit) = linux_guest_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("swap.sock");
    let a = args(&[
        "--pool-mib",
        "64",
        "--frontswap-policy",
        "write-through",
        "--backing-dir",
        &dir.path().display().to_string(),
        "--swap-disk",
        &format!("{},size=256M,guest=vm0", sock.display()),
    ]);
    let mut first = HostD::start(dir.path(), "first", &a, std::slice::from_ref(&sock));
    let g = QemuGuest::new(&kit)
        .name("restart")
        .memory_mib(GUEST_MIB)
        .disk(Disk::vhost_user_blk(&sock).reconnect(1))
        .checker(Mode::Swap(SwapArgs {
            mib: STORM_MIB,
            seed: 31,
            progress_mib: 16,
            ..SwapArgs::default()
        }))
        .timeout(GUEST_BUDGET)
        .spawn()
        .expect("qemu runs");
    // Mid-storm: the first verify pass has started, so pages on the disk are being read back.
    g.wait_for("verification under way", Duration::from_secs(200), |r| {
        r.event == "progress" && r.get("stage") == Some("verify1")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", g.console(), first.log_text()));
    let writes_before = first.metric("gcma_disk_file_writes_total", &[]);
    let killed = first.kill9();
    assert!(!killed.success());
    std::thread::sleep(Duration::from_secs(3));
    let second = HostD::start(dir.path(), "second", &a, std::slice::from_ref(&sock));
    let run = g.wait().expect("qemu ends");
    report(&run);
    assert_storm_ok(&run, &second);
    let m = second.metrics();
    let reconnected = support::metric(&m, "gcma_disk_connections_total", &[]);
    let from_file = support::metric(&m, "gcma_disk_pool_misses_total", &[]);
    println!(
        "restart: {writes_before} pages written before the kill; after the restart {reconnected} connection(s), {from_file} page reads from the file"
    );
    assert!(writes_before > 0.0);
    assert!(
        reconnected >= 1.0,
        "QEMU did not reconnect:\n{}",
        second.log_text()
    );
    // Pages written before the kill were read back from the file by the new daemon.
    assert!(from_file > 0.0);
    drop(first);
}

/// The README's "Use the pool from QEMU" block, run as written with `bash`: the daemon and QEMU
/// command lines there start a guest whose swap storm passes on the daemon's disk, and the
/// SIGTERM at the end exits 0. Only the variables the README tells the reader to set differ:
/// directories, `ACCEL=tcg`, an 80 MiB guest, the kit's kernel and the checker's command line.
#[test]
fn readme_command_line_runs() {
    use std::os::unix::process::CommandExt;
    let test = "README command line";
    let Some(kit) = linux_guest_or_skip(test) else {
        return;
    };
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let section = &readme[readme
        .find("## Use the pool from QEMU")
        .expect("the README section")..];
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a sh block in the section");
    assert!(block.contains("gcma-hostd ") && block.contains("qemu-system-x86_64 "));
    let dir = tempfile::tempdir().unwrap();
    let append = QemuGuest::new(&kit)
        .memory_mib(GUEST_MIB)
        .checker(Mode::Swap(SwapArgs {
            mib: 120,
            seed: 3,
            ..SwapArgs::default()
        }))
        .kernel_cmdline();
    let bin_dir = Path::new(support::HOSTD).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let stderr = dir.path().join("stderr.log");
    let child = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .env("STATE", dir.path().join("state"))
        .env("RUN", dir.path().join("run"))
        .env("MEM", format!("{GUEST_MIB}M"))
        .env("ACCEL", "tcg")
        .env("KERNEL", &kit.kernel)
        .env("INITRD", &kit.initrd)
        .env("APPEND", &append)
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .process_group(0)
        .spawn()
        .expect("bash runs");
    // The hang guard: the whole group (bash, the daemon, QEMU) goes when the budget runs out.
    let pgid = child.id() as i32;
    let done = Arc::new(AtomicBool::new(false));
    let guard = {
        let done = done.clone();
        std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            while !done.load(Ordering::Relaxed) {
                if t0.elapsed() > GUEST_BUDGET {
                    // SAFETY: kill(2) of the process group this test created.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                    return true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            false
        })
    };
    let out = child.wait_with_output().expect("bash ends");
    done.store(true, Ordering::Relaxed);
    let timed_out = guard.join().unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(&stderr).unwrap_or_default();
    let records: Vec<_> = console
        .lines()
        .filter_map(e2e_tests::linux_guest::Record::parse)
        .collect();
    let summary = records.iter().find(|r| r.event == "summary");
    println!(
        "README run: {}",
        summary.map(|s| s.to_line()).unwrap_or_default()
    );
    assert!(!timed_out, "the README sequence hung:\n{log}");
    assert!(
        out.status.success(),
        "the README sequence failed ({}):\n{log}\n{console}",
        out.status
    );
    let s = summary.unwrap_or_else(|| panic!("no summary:\n{console}\n{log}"));
    assert!(s.ok(), "{}", s.to_line());
    assert_eq!(s.get_u64("corrupt"), Some(0));
    assert!(
        s.get_u64("pswpout").is_some_and(|n| n > 0),
        "{}",
        s.to_line()
    );
    assert!(log.contains("SIGTERM received"), "{log}");
}
