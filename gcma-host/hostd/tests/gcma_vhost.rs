//! virtio-gcma served by `gcma-hostd` over vhost-user, driven by a real frontend
//! (`gcma_frontend`: memfd guest memory, `SHMEM_MAP` mapped for real) and the unchanged guest
//! driver of `guest-agent`: grants appear zeroed in the frontend's window and go back to the pool
//! only after an acknowledged unmap; grants of one VMM evict another's tmem pages without losing
//! a frontswap page; a VMM that dies (SIGKILL) or disconnects gets everything released, a live
//! one only once its process exits; hostile frontends do not bring the daemon down.

mod gcma_frontend;
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gcma_frontend::{VhostFrontend, VhostHal, WINDOW_GPA};
use guest_agent::proto::{status, PAGE_SIZE};
use guest_agent::{CleancacheClient, DriverConfig, Error, FrontswapClient, GcmaDriver};
use support::HostD;

fn pattern(seed: u64) -> Vec<u8> {
    (0..PAGE_SIZE as u64)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(0x9e37_79b9)) as u8)
        .collect()
}

/// A daemon with the gcma socket and a pool of `pool_mib` MiB.
fn daemon(dir: &Path, tag: &str, pool_mib: u64, extra: &[&str]) -> (HostD, PathBuf) {
    let sock = dir.join("gcma.sock");
    let mut args: Vec<String> = vec![
        "--pool-mib".into(),
        pool_mib.to_string(),
        "--zeroer-cpu-pct".into(),
        "0".into(),
        "--gcma-socket".into(),
        sock.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let d = HostD::start(dir, tag, &args, std::slice::from_ref(&sock));
    (d, sock)
}

fn driver(sock: &Path) -> GcmaDriver<VhostHal> {
    let fe = VhostFrontend::connect(sock).expect("vhost-user start-up");
    GcmaDriver::new(fe.hal(), DriverConfig::default()).expect("driver init over vhost-user")
}

/// Waits until `f` holds (the daemon releases asynchronously), at most 10 s.
fn eventually(what: &str, d: &HostD, f: impl Fn(&HostD) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f(d) {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen; metrics:\n{}\nlog:\n{}",
            d.metrics(),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn granted_pages(d: &HostD) -> f64 {
    d.metric("gcma_pool_pages", &[("state", "granted")])
}

#[test]
fn grants_are_mapped_zeroed_and_unmapped_before_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sock) = daemon(dir.path(), "grants", 4, &[]);
    // A tenant fills the pool with cleancache pages: the grant has to evict and zero them.
    let mut tenant = driver(&sock);
    let mut cc = CleancacheClient::new();
    for i in 0..1024u32 {
        let _ = cc.put(&mut tenant, [1, 0, 0], i, &pattern(u64::from(i)));
    }
    assert!(d.metric("gcma_pool_pages", &[("state", "cleancache")]) >= 512.0);

    let mut g = driver(&sock);
    let w = g.window();
    assert_eq!((w.gpa, w.len_bytes), (WINDOW_GPA, 4 << 20));
    let region = g.alloc_contig(64, 16).unwrap();
    let fe = &g.hal_mut().fe;
    assert_eq!(fe.shmem.maps.load(Ordering::SeqCst), 1);
    let offset = region.gpa - WINDOW_GPA;
    assert!(offset.is_multiple_of(16 * PAGE_SIZE as u64));
    let (len, pool_off) = fe.shmem.mapped.lock().unwrap()[&offset];
    assert_eq!(len, 64 * PAGE_SIZE as u64);
    assert!(pool_off.is_multiple_of(16 * PAGE_SIZE as u64));
    let mut buf = vec![0xffu8; 64 * PAGE_SIZE];
    fe.read_grant(region.gpa, &mut buf);
    assert!(buf.iter().all(|&b| b == 0), "grant not zeroed");
    fe.write_grant(region.gpa, &pattern(7));
    assert_eq!(granted_pages(&d), 64.0);
    assert_eq!(d.metric("gcma_vmm_grants", &[]), 1.0);
    assert_eq!(d.metric("gcma_vmm_connected", &[]), 2.0);

    // The VMM refuses the unmap: the guest keeps its grant, the pool does not reuse it.
    fe.shmem.fail_unmaps.store(true, Ordering::SeqCst);
    let e = g.free_contig(region).unwrap_err();
    assert_eq!(e.status(), Some(status::IO_ERROR));
    assert_eq!(granted_pages(&d), 64.0);
    let fe = &g.hal_mut().fe;
    let mut page = vec![0u8; PAGE_SIZE];
    fe.read_grant(region.gpa, &mut page);
    assert_eq!(page, pattern(7), "grant changed while still mapped");
    // Acknowledged: now it goes back.
    fe.shmem.fail_unmaps.store(false, Ordering::SeqCst);
    assert_eq!(g.free_contig(region).unwrap(), 64);
    assert_eq!(g.hal_mut().fe.shmem.unmaps.load(Ordering::SeqCst), 1);
    assert!(g.hal_mut().fe.shmem.mapped.lock().unwrap().is_empty());
    assert_eq!(granted_pages(&d), 0.0);

    // A map the VMM refuses is MAP_FAILED and costs the pool nothing.
    g.hal_mut().fe.shmem.fail_maps.store(true, Ordering::SeqCst);
    let e = g.alloc_contig(8, 1).unwrap_err();
    assert_eq!(e.status(), Some(status::MAP_FAILED));
    assert_eq!(granted_pages(&d), 0.0);
    assert_eq!(d.metric("gcma_vmm_shmem_failures_total", &[]), 2.0);
}

#[test]
fn one_vmms_grants_evict_anothers_tmem_and_lose_no_swap_page() {
    let dir = tempfile::tempdir().unwrap();
    // 2 MiB = 512 pages; put-back keeps evicted swap pages in host memory.
    let (d, sock) = daemon(dir.path(), "evict", 2, &["--frontswap-policy", "put-back"]);
    let mut tenant = driver(&sock);
    let mut fs = FrontswapClient::new(&tenant, 0);
    for off in 0..200u64 {
        assert!(
            fs.store(&mut tenant, off, &pattern(off)).unwrap(),
            "store {off} refused: {:?}\n{}",
            fs.counters(),
            d.metrics()
        );
    }
    let mut cc = CleancacheClient::new();
    for i in 0..100u32 {
        let _ = cc.put(&mut tenant, [2, 0, 0], i, &pattern(1000 + u64::from(i)));
    }
    let mut granter = driver(&sock);
    let r = granter.alloc_contig(480, 1).unwrap();
    let mut buf = vec![0xffu8; 480 * PAGE_SIZE];
    granter.hal_mut().fe.read_grant(r.gpa, &mut buf);
    assert!(
        buf.iter().all(|&b| b == 0),
        "grant shows the tenant's bytes"
    );
    assert!(d.metric("gcma_pool_pages", &[("state", "frontswap")]) < 400.0);
    // Every swap page the tenant stored loads back unchanged.
    let mut page = vec![0u8; PAGE_SIZE];
    for off in 0..200u64 {
        assert!(
            fs.load(&mut tenant, off, &mut page).unwrap(),
            "swap page {off} lost"
        );
        assert!(page == pattern(off), "swap page {off} changed");
    }
    granter.free_contig(r).unwrap();
}

/// The child process of the disconnect tests (run by them, not on its own): a VMM holding a
/// grant, swap and cache pages; `live` makes it close its socket and refuse unmaps while its
/// process goes on.
#[test]
#[ignore = "run as a child process by the disconnect tests"]
fn child_vmm() {
    let Ok(sock) = std::env::var("GCMA_TEST_CHILD_SOCKET") else {
        return;
    };
    let live = std::env::var("GCMA_TEST_CHILD_LIVE").is_ok();
    let mut g = driver(Path::new(&sock));
    let r = g.alloc_contig(64, 1).unwrap();
    g.hal_mut().fe.write_grant(r.gpa, &pattern(3));
    let mut fs = FrontswapClient::new(&g, 0);
    for off in 0..32u64 {
        assert!(fs.store(&mut g, off, &pattern(off)).unwrap());
    }
    let mut cc = CleancacheClient::new();
    for i in 0..16u32 {
        let _ = cc.put(&mut g, [3, 0, 0], i, &pattern(u64::from(i)));
    }
    if live {
        g.hal_mut()
            .fe
            .shmem
            .fail_unmaps
            .store(true, Ordering::SeqCst);
        g.hal_mut().fe.shutdown_main_socket();
    }
    println!("READY");
    std::io::stdout().flush().unwrap();
    // Wait to be killed (stdin is a pipe the parent never writes).
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    std::thread::sleep(Duration::from_secs(3600));
}

fn spawn_child(sock: &Path, live: bool) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "child_vmm",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("GCMA_TEST_CHILD_SOCKET", sock)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if live {
        c.env("GCMA_TEST_CHILD_LIVE", "1");
    }
    let mut child = c.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = lines.next().expect("child output").unwrap();
        if l.contains("READY") {
            break;
        }
        assert!(Instant::now() < deadline, "child never got ready");
    }
    child
}

fn kill(mut c: Child) {
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
    let _ = c.wait();
}

fn pool_is_empty(d: &HostD) -> bool {
    ["granted", "frontswap", "cleancache"]
        .iter()
        .all(|s| d.metric("gcma_pool_pages", &[("state", s)]) == 0.0)
}

#[test]
fn the_connection_thread_polls_its_rings_for_a_while_after_serving_them() {
    let dir = tempfile::tempdir().unwrap();
    let page = pattern(3);
    let mut out = vec![0u8; PAGE_SIZE];
    // A long poll (10 s): requests posted without a kick after served ones are served.
    let (d, sock) = daemon(dir.path(), "poll", 4, &["--gcma-poll-us", "10000000"]);
    let mut g = driver(&sock);
    let mut fs = FrontswapClient::new(&g, 0);
    assert!(fs.store(&mut g, 1, &page).unwrap(), "kicked as usual");
    g.hal_mut().swallow_kicks = true;
    for i in 2..50 {
        assert!(
            fs.store(&mut g, i, &page).unwrap(),
            "store {i} without a kick"
        );
    }
    assert!(fs.load(&mut g, 49, &mut out).unwrap());
    assert!(out == page);
    // Served by the daemon, every one, and no reset on the way (a driver that times out resets
    // the device and retries, which would drop the pages).
    assert_eq!(d.metric("gcma_frontswap_stores_total", &[]), 49.0);
    assert_eq!(d.metric("gcma_pool_pages", &[("state", "frontswap")]), 49.0);
}

#[test]
fn a_vmm_killed_mid_traffic_gets_its_pages_released() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sock) = daemon(
        dir.path(),
        "sigkill",
        4,
        &["--frontswap-policy", "put-back"],
    );
    let child = spawn_child(&sock, false);
    assert_eq!(granted_pages(&d), 64.0);
    assert!(d.metric("gcma_pool_pages", &[("state", "frontswap")]) > 0.0);
    assert_eq!(d.metric("gcma_vmm_connected", &[]), 1.0);
    kill(child);
    eventually("release after SIGKILL", &d, |d| {
        pool_is_empty(d) && d.metric("gcma_vmm_released_clients_total", &[]) == 1.0
    });
    assert_eq!(d.metric("gcma_vmm_connected", &[]), 0.0);
    assert_eq!(d.metric("gcma_vmm_grants", &[]), 0.0);
    assert_eq!(d.metric("gcma_vmm_retired_clients", &[]), 0.0);
}

#[test]
fn a_live_vmm_that_disconnects_keeps_its_grant_until_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sock) = daemon(dir.path(), "live", 4, &["--frontswap-policy", "put-back"]);
    let child = spawn_child(&sock, true);
    // The socket is closed, the unmap refused: tmem pages go, the mapped grant stays.
    eventually("retirement", &d, |d| {
        d.metric("gcma_vmm_retired_clients", &[]) == 1.0
    });
    assert_eq!(granted_pages(&d), 64.0, "a grant still mapped was reused");
    assert_eq!(d.metric("gcma_vmm_stuck_grants", &[]), 1.0);
    assert_eq!(d.metric("gcma_pool_pages", &[("state", "frontswap")]), 0.0);
    assert_eq!(d.metric("gcma_vmm_released_clients_total", &[]), 0.0);
    kill(child);
    eventually("release after the process exited", &d, |d| {
        pool_is_empty(d) && d.metric("gcma_vmm_released_clients_total", &[]) == 1.0
    });
    assert_eq!(d.metric("gcma_vmm_retired_clients", &[]), 0.0);
}

/// Raw vhost-user messages: header (request, flags v1, size) + body + optional fds.
fn raw(sock: &UnixStream, req: u32, flags: u32, body: &[u8]) -> std::io::Result<()> {
    let mut m = Vec::with_capacity(12 + body.len());
    m.extend_from_slice(&req.to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&(body.len() as u32).to_le_bytes());
    m.extend_from_slice(body);
    (&*sock).write_all(&m)
}

#[test]
fn hostile_frontends_do_not_bring_the_daemon_down() {
    use vhost::vhost_user::message::VhostUserProtocolFeatures as P;
    use vhost::vhost_user::VhostUserFrontend;
    use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
    let dir = tempfile::tempdir().unwrap();
    let (mut d, sock) = daemon(dir.path(), "hostile", 4, &[]);

    // Out of order: rings before a memory table, enable before kick, unknown queues.
    {
        let s = UnixStream::connect(&sock).unwrap();
        let mut fe = vhost::vhost_user::Frontend::from_stream(s, 3);
        fe.set_owner().unwrap();
        // PROTOCOL_FEATURES and REPLY_ACK acknowledged: every refusal comes back as an error.
        let offered = fe.get_features().unwrap();
        fe.set_features(offered & (1 << 30 | 1 << 32)).unwrap();
        fe.set_protocol_features(P::REPLY_ACK | P::CONFIG).unwrap();
        fe.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
        let cfg = VringConfigData {
            queue_max_size: 256,
            queue_size: 64,
            flags: 0,
            desc_table_addr: 0x1000,
            used_ring_addr: 0x2000,
            avail_ring_addr: 0x3000,
            log_addr: None,
        };
        assert!(fe.set_vring_addr(0, &cfg).is_err());
        assert!(fe.set_vring_enable(0, true).is_err());
        assert!(fe.set_vring_num(0, 65535).is_err());
        assert!(fe.set_vring_num(7, 64).is_err());
        let _ = fe.get_vring_base(0);
        assert!(fe.set_features(u64::MAX).is_err());
        // An unsealed memfd, and a region larger than its file.
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        let bad = |size: u64| VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: size,
            userspace_addr: 0x7000_0000,
            mmap_offset: 0,
            mmap_handle: std::os::fd::AsRawFd::as_raw_fd(&f),
        };
        assert!(fe.set_mem_table(&[bad(1 << 20)]).is_err());
        assert!(fe.set_mem_table(&[bad(1 << 40)]).is_err());
        let (_mem, sealed) = gcma_frontend::sealed_guest_memory(1 << 20);
        let region = |size: u64, gpa: u64| VhostUserMemoryRegionInfo {
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: 0x7000_0000 + gpa,
            mmap_offset: 0,
            mmap_handle: std::os::fd::AsRawFd::as_raw_fd(&sealed),
        };
        assert!(fe.set_mem_table(&[region(2 << 20, 0)]).is_err());
        // Overlapping regions.
        assert!(fe
            .set_mem_table(&[region(1 << 20, 0), region(1 << 20, 0x8_0000)])
            .is_err());
        // A memory table that is fine, then ring addresses outside it.
        fe.set_mem_table(&[region(1 << 20, 0)]).unwrap();
        let outside = VringConfigData {
            desc_table_addr: 0x1,
            ..cfg
        };
        assert!(fe.set_vring_addr(0, &outside).is_err());
    }
    // Malformed messages: huge sizes, unknown requests, truncated bodies, garbage.
    for (req, flags, body) in [
        (1u32, 1u32, vec![]),                           // GET_FEATURES
        (5, 1, vec![0u8; 4]),                           // SET_MEM_TABLE, short
        (5, 1, vec![0xff; 200]),                        // SET_MEM_TABLE, garbage
        (8, 1, 0xffff_ffffu32.to_le_bytes().repeat(2)), // SET_VRING_NUM index huge
        (0xdead, 1, vec![]),                            // unknown request
        (3, 0x7, vec![0u8; 8]),                         // SET_OWNER, bad flags and a body
    ] {
        let s = UnixStream::connect(&sock).unwrap();
        let _ = raw(&s, req, flags, &body);
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let _ = (&s).read(&mut [0u8; 64]);
    }
    {
        // A header announcing a 4 GiB body.
        let s = UnixStream::connect(&sock).unwrap();
        let mut m = Vec::new();
        m.extend_from_slice(&5u32.to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&u32::MAX.to_le_bytes());
        let _ = (&s).write_all(&m);
        let _ = (&s).write_all(&[0u8; 4096]);
    }
    // A VMM that acks nothing: its grants fail, nobody else's do.
    {
        let s = UnixStream::connect(&sock).unwrap();
        let mut fe = vhost::vhost_user::Frontend::from_stream(s, 3);
        fe.set_owner().unwrap();
        fe.get_features().unwrap();
        fe.set_protocol_features(P::CONFIG).unwrap();
    }

    // The daemon is alive and serves a well-behaved VMM as before.
    let mut g = driver(&sock);
    let r = g.alloc_contig(16, 1).unwrap();
    g.free_contig(r).unwrap();
    assert_eq!(granted_pages(&d), 0.0);
    drop(g);
    eventually("hostile connections to end", &d, |d| {
        d.metric("gcma_vmm_connected", &[]) == 0.0
    });
    let st = d.sigterm(Duration::from_secs(10));
    assert!(st.success(), "daemon exited {st}:\n{}", d.log_text());
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
}

#[test]
fn a_guest_reset_releases_what_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sock) = daemon(dir.path(), "reset", 4, &["--frontswap-policy", "put-back"]);
    let mut g = driver(&sock);
    let _r = g.alloc_contig(32, 1).unwrap();
    let mut fs = FrontswapClient::new(&g, 0);
    assert!(fs.store(&mut g, 1, &pattern(1)).unwrap());
    assert_eq!(granted_pages(&d), 32.0);
    // The driver resets the device (Status 0) and starts again: the rings stop
    // (GET_VRING_BASE) and the daemon releases everything, as the embedded device does.
    g.recover().unwrap();
    assert_eq!(granted_pages(&d), 0.0);
    assert_eq!(d.metric("gcma_pool_pages", &[("state", "frontswap")]), 0.0);
    assert_eq!(g.hal_mut().fe.shmem.unmaps.load(Ordering::SeqCst), 1);
    let mut page = vec![0u8; PAGE_SIZE];
    assert!(matches!(
        fs.load(&mut g, 1, &mut page),
        Err(Error::FrontswapReset { .. })
    ));
    // And it serves the restarted guest.
    let r = g.alloc_contig(8, 1).unwrap();
    g.free_contig(r).unwrap();
}

/// Arbitrary bytes, and well-framed messages of every request code with arbitrary bodies, each
/// on a fresh connection: the daemon stays up and goes on serving.
#[test]
fn raw_message_bytes_never_crash_the_daemon() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let dir = tempfile::tempdir().unwrap();
    let (mut d, sock) = daemon(dir.path(), "proptest", 4, &[]);
    let framed = (0u32..48, prop::collection::vec(any::<u8>(), 0..320)).prop_map(|(req, body)| {
        let mut m = Vec::new();
        m.extend_from_slice(&req.to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(&body);
        m
    });
    // A valid start (SET_OWNER, then GET_FEATURES) followed by arbitrary messages.
    let session = prop::collection::vec(framed.clone(), 1..6);
    let raw_bytes = prop::collection::vec(any::<u8>(), 0..256);
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let send = |bytes: &[u8]| {
        let s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let _ = (&s).write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = (&s).read(&mut [0u8; 256]);
    };
    runner
        .run(&raw_bytes, |b| {
            send(&b);
            Ok(())
        })
        .unwrap();
    runner
        .run(&session, |msgs| {
            let mut all = Vec::new();
            for (req, size) in [(3u32, 0u32), (1, 0)] {
                all.extend_from_slice(&req.to_le_bytes());
                all.extend_from_slice(&1u32.to_le_bytes());
                all.extend_from_slice(&size.to_le_bytes());
            }
            for m in msgs {
                all.extend_from_slice(&m);
            }
            send(&all);
            Ok(())
        })
        .unwrap();
    let mut g = driver(&sock);
    let r = g.alloc_contig(4, 1).unwrap();
    g.free_contig(r).unwrap();
    drop(g);
    eventually("fuzzed connections to end", &d, |d| {
        d.metric("gcma_vmm_connected", &[]) == 0.0
    });
    let st = d.sigterm(Duration::from_secs(10));
    assert!(st.success(), "daemon exited {st}:\n{}", d.log_text());
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
}

/// A VMM that does not answer `SHMEM_MAP` holds up only its own request: another VMM is served
/// meanwhile, and the held grant completes once the answer comes.
#[test]
fn an_unanswered_shmem_map_stalls_only_its_own_vmm() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sock) = daemon(dir.path(), "stall", 4, &[]);
    let mut slow = driver(&sock);
    let shmem = slow.hal_mut().fe.shmem.clone();
    shmem.stall_maps.store(true, Ordering::SeqCst);
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            // Whatever happens here, the stalled VMM answers in the end (no hung test).
            struct Answer<'a>(&'a gcma_frontend::ShmemLog);
            impl Drop for Answer<'_> {
                fn drop(&mut self) {
                    self.0.stall_maps.store(false, Ordering::SeqCst);
                }
            }
            let _answer = Answer(&shmem);
            // The daemon has taken the pool run and waits for the answer...
            eventually("the stalled grant to reach the pool", &d, |d| {
                granted_pages(d) == 8.0
            });
            // ...while another VMM is served.
            let mut other = driver(&sock);
            for _ in 0..10 {
                let r = other.alloc_contig(16, 1).unwrap();
                other.free_contig(r).unwrap();
            }
            assert_eq!(shmem.maps.load(Ordering::SeqCst), 0);
            shmem.stall_maps.store(false, Ordering::SeqCst);
        });
        slow.alloc_contig(8, 1)
    });
    let r = r.unwrap();
    assert_eq!(shmem.maps.load(Ordering::SeqCst), 1);
    slow.free_contig(r).unwrap();
    assert_eq!(granted_pages(&d), 0.0);
}
