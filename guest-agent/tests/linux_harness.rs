//! The Linux agent's driver paths against the real virtio-gcma device and pool, through
//! balloon's virtio-mmio transport: the agent's own `LinuxHal` runs over a register window that
//! forwards to the transport (standing in for the `/dev/mem` mapping) and DMA pages from the
//! harness guest memory (standing in for pagemap-translated locked memory). Covers discovery →
//! probe → driver setup, alloc/free/stats, reset on exit, the control socket and `bench`.

#![cfg(all(feature = "std", target_os = "linux"))]

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use balloon::gcma::testing::MemfdGrantMapper;
use balloon::gcma::GcmaDevice;
use balloon::testing::{memfd_guest_memory, CountingIrq};
use balloon::transport::{GuestMemoryMmap, MmioTransport};
use gcma_host::pool::{Pool, PoolConfig};
use guest_agent::linux::agent::{bench, Agent};
use guest_agent::linux::control::{Command, Reply};
use guest_agent::linux::device::{open_registers_with, FindOptions};
use guest_agent::linux::hal::{DmaPages, LinuxHal};
use guest_agent::linux::regs::{RegisterWindow, VecWindow, VIRTIO_MMIO_MAGIC};
use guest_agent::linux::serve::{answer, request, serve, ClientError};
use guest_agent::proto::{stat, status, PAGE_SIZE, VIRTIO_ID_GCMA};
use guest_agent::{DmaExhausted, DmaRegion, Error};

const GUEST_MEM: usize = 16 << 20;
const WINDOW_GPA: u64 = 1 << 32;
const WINDOW_PAGES: u64 = 4096;

type Transport = Arc<Mutex<MmioTransport<GcmaDevice>>>;

/// The device's registers as a `RegisterWindow`, where the agent would map `/dev/mem`.
struct HarnessWindow(Transport);

impl RegisterWindow for HarnessWindow {
    fn read32(&mut self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.0.lock().unwrap().read(offset as u64, &mut b);
        u32::from_le_bytes(b)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.0
            .lock()
            .unwrap()
            .write(offset as u64, &value.to_le_bytes());
    }
    fn len_bytes(&self) -> usize {
        0x200
    }
}

/// DMA pages out of harness guest memory, where the agent would use pagemap-translated memory.
struct GuestMemDma {
    mem: Arc<GuestMemoryMmap>,
    next: u64,
}

// SAFETY: pages are carved once each by a bump pointer out of the one guest memory region, which
// the Arc keeps mapped as long as the source lives; they are zeroed before being handed out and
// the device sees them at the same guest-physical addresses.
unsafe impl DmaPages for GuestMemDma {
    fn alloc_pages(&mut self, pages: usize) -> Result<DmaRegion, DmaExhausted> {
        common::carve_dma(&self.mem, &mut self.next, GUEST_MEM as u64, pages)
    }
}

type TestAgent = Agent<LinuxHal<HarnessWindow, GuestMemDma>>;

struct Rig {
    transport: Transport,
    mem: Arc<GuestMemoryMmap>,
    mapper: Arc<MemfdGrantMapper>,
    pool: Arc<Pool>,
}

fn rig(pool_pages: u64) -> Rig {
    let pool = Pool::new(PoolConfig::new(pool_pages)).expect("pool");
    let mem = Arc::new(memfd_guest_memory(&[(0, GUEST_MEM)]).expect("guest memory"));
    let mapper = Arc::new(MemfdGrantMapper::new(
        pool.clone(),
        WINDOW_GPA,
        WINDOW_PAGES * PAGE_SIZE as u64,
    ));
    let dev = GcmaDevice::new(mapper.window(), "linux-agent-test");
    let transport = Arc::new(Mutex::new(MmioTransport::new(
        dev,
        mem.clone(),
        Arc::new(CountingIrq::default()),
    )));
    Rig {
        transport,
        mem,
        mapper,
        pool,
    }
}

impl Rig {
    fn agent(&self) -> TestAgent {
        let hal = LinuxHal::new(
            HarnessWindow(self.transport.clone()),
            GuestMemDma {
                mem: self.mem.clone(),
                next: 0x10000,
            },
        );
        Agent::new(hal).expect("driver setup")
    }

    fn device_grants(&self) -> usize {
        self.transport
            .lock()
            .unwrap()
            .device()
            .window()
            .grants()
            .len()
    }
}

fn stat_of(r: &Reply, tag: u32) -> u64 {
    match r {
        Reply::Stats(v) => v.iter().find(|(t, _)| *t == tag).map(|(_, x)| *x).unwrap(),
        other => panic!("not stats: {other:?}"),
    }
}

#[test]
fn discovery_probe_and_setup_reach_the_real_device() {
    let r = rig(1024);
    // Three candidates on the kernel command line: a block device, nothing, and the gcma device.
    let root = std::env::temp_dir().join(format!("guest-agent-harness-{}", std::process::id()));
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::write(
        root.join("proc/cmdline"),
        "virtio_mmio.device=512@0xd0000000:5 virtio_mmio.device=512@0xd0000200:6 \
         virtio_mmio.device=512@0xd0000400:7",
    )
    .unwrap();
    let opts = FindOptions {
        device: None,
        root: root.clone(),
        unbind: false,
    };
    let (c, w) = open_registers_with(&opts, |c| -> Result<Box<dyn RegisterWindow>, _> {
        Ok(match c.base {
            0xd000_0000 => Box::new(VecWindow::with_identity(0x200, VIRTIO_MMIO_MAGIC, 2, 2)),
            0xd000_0400 => Box::new(HarnessWindow(r.transport.clone())),
            _ => Box::new(VecWindow::new(0x200)),
        })
    })
    .unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(c.base, 0xd000_0400);
    let dma = GuestMemDma {
        mem: r.mem.clone(),
        next: 0x10000,
    };
    let mut agent = Agent::new(LinuxHal::new(w, dma)).unwrap();
    assert_eq!(agent.driver().window().gpa, WINDOW_GPA);
    let g = agent.driver().alloc_contig(8, 8).unwrap();
    assert_eq!(g.nr_pages, 8);
    assert_eq!(r.device_grants(), 1);
}

#[test]
fn alloc_free_stats_and_reset_on_exit() {
    let r = rig(1024);
    let mut agent = r.agent();
    let granted = agent
        .execute(Command::Alloc {
            nr_pages: 16,
            align_pages: 16,
        })
        .unwrap();
    let Reply::Granted { gpa, nr_pages } = granted else {
        panic!("{granted:?}")
    };
    assert_eq!(nr_pages, 16);
    assert!(gpa >= WINDOW_GPA && gpa < WINDOW_GPA + WINDOW_PAGES * PAGE_SIZE as u64);
    assert_eq!(gpa % (16 * PAGE_SIZE as u64), 0);
    // The host really mapped it there.
    let mapped = r.mapper.mapped();
    assert_eq!(mapped.len(), 1);
    assert_eq!(mapped[0].gpa, gpa);

    let s = agent.execute(Command::Stats).unwrap();
    assert_eq!(stat_of(&s, stat::GRANTS), 1);
    assert_eq!(stat_of(&s, stat::GRANTED_PAGES), 16);
    assert_eq!(stat_of(&s, stat::POOL_NR_PAGES), 1024);

    assert_eq!(
        agent.execute(Command::Free { gpa }).unwrap(),
        Reply::Freed { nr_pages: 16 }
    );
    let e = agent.execute(Command::Free { gpa }).unwrap_err();
    assert_eq!(e.status(), Some(status::UNKNOWN_GRANT), "{e}");
    assert!(r.mapper.mapped().is_empty());

    // A grant still held when the agent goes away is released by the reset on drop.
    agent
        .execute(Command::Alloc {
            nr_pages: 4,
            align_pages: 1,
        })
        .unwrap();
    assert_eq!(r.device_grants(), 1);
    drop(agent);
    assert_eq!(r.device_grants(), 0);
    assert!(r.mapper.mapped().is_empty());
    assert_eq!(r.pool.stats().granted_pages, 0);
}

#[test]
fn a_new_agent_starts_from_a_reset_device() {
    let r = rig(1024);
    let mut first = r.agent();
    first.driver().alloc_contig(4, 1).unwrap();
    // What a second agent process would do if the first were killed without its Drop running.
    std::mem::forget(first);
    let mut second = r.agent();
    assert_eq!(
        r.device_grants(),
        0,
        "setting the device up released the old grant"
    );
    let s = second.execute(Command::Stats).unwrap();
    assert_eq!(stat_of(&s, stat::GRANTS), 0);
}

fn socket_path() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "guest-agent-test-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

#[test]
fn the_control_socket_serves_alloc_free_and_stats() {
    let r = rig(1024);
    let mut agent = r.agent();
    let path = socket_path();
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let out = (|| -> Result<_, ClientError> {
                let g = request(
                    &path,
                    Command::Alloc {
                        nr_pages: 32,
                        align_pages: 32,
                    },
                )?;
                let s = request(&path, Command::Stats)?;
                let Reply::Granted { gpa, .. } = g else {
                    panic!("{g:?}")
                };
                let f = request(&path, Command::Free { gpa })?;
                let again = request(&path, Command::Free { gpa });
                Ok((g, s, f, again))
            })();
            stop.store(true, Ordering::SeqCst);
            out
        })
    };
    serve(&mut agent, &listener, &stop).unwrap();
    let (g, s, f, again) = client.join().unwrap().unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(g, Reply::Granted { nr_pages: 32, .. }), "{g:?}");
    assert_eq!(stat_of(&s, stat::GRANTED_PAGES), 32);
    assert_eq!(f, Reply::Freed { nr_pages: 32 });
    match again {
        Err(ClientError::Server(m)) => assert!(m.contains("unknown_grant"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Malformed lines get an error line, not a dropped connection.
    assert!(answer(&mut agent, "reboot\n").starts_with("err unknown request"));
    assert!(answer(&mut agent, "alloc 0\n").starts_with("err usage"));
    assert!(answer(&mut agent, "alloc 999999\n").starts_with("err device answered no_space"));
}

#[test]
fn bench_round_trips_every_page_in_batches() {
    let r = rig(2048);
    let mut agent = r.agent();
    let pages = 300;
    let rep = bench(agent.driver(), pages).unwrap();
    eprint!("{}", rep.table());
    assert_eq!(rep.corrupted, 0);
    assert_eq!(rep.phases.len(), 4);
    let names: Vec<_> = rep.phases.iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        [
            "cleancache put",
            "cleancache get",
            "frontswap store",
            "frontswap load"
        ]
    );
    // A pool with room for everything keeps every page; every frontswap page comes back.
    for p in &rep.phases {
        assert_eq!(p.ops, pages);
        assert_eq!(p.succeeded, pages, "{}", p.name);
        // Batched: one notification per batch, not per page (plus NEW_POOL before the puts).
        let extra = u64::from(p.name == "cleancache put");
        assert_eq!(
            p.notifies,
            pages.div_ceil(rep.batch as u64) + extra,
            "{}",
            p.name
        );
    }
    assert!(rep.batch > 1);
    let s = agent.execute(Command::Stats).unwrap();
    assert_eq!(stat_of(&s, stat::CLEANCACHE_SUCC_GETS), pages);
    assert_eq!(stat_of(&s, stat::FRONTSWAP_LOADS), pages);
    // bench cleans up after itself.
    assert_eq!(r.pool.stats().frontswap_stored_pages, 0);
}

#[test]
fn a_dma_failure_during_setup_is_an_error_not_a_panic() {
    let r = rig(64);
    let hal = LinuxHal::new(
        HarnessWindow(r.transport.clone()),
        GuestMemDma {
            mem: r.mem.clone(),
            next: GUEST_MEM as u64 - PAGE_SIZE as u64,
        },
    );
    let Err(e) = Agent::new(hal) else {
        panic!("setup succeeded without DMA memory")
    };
    assert!(matches!(e, Error::DmaExhausted(_)), "{e}");
    let _ = VIRTIO_ID_GCMA;
}

#[test]
fn the_socket_survives_long_and_split_lines() {
    use std::io::{BufRead, BufReader, Write};
    let r = rig(256);
    let mut agent = r.agent();
    let path = socket_path();
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            let mut w = s.try_clone().unwrap();
            let mut rd = BufReader::new(s);
            // A request split over two writes with a pause longer than the read timeout.
            w.write_all(b"sta").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            w.write_all(b"ts\n").unwrap();
            let mut first = String::new();
            rd.read_line(&mut first).unwrap();
            // An endless line is cut off with an error, not buffered forever.
            w.write_all(&[b'a'; 4096]).unwrap();
            let mut second = String::new();
            rd.read_line(&mut second).unwrap();
            stop.store(true, Ordering::SeqCst);
            (first, second)
        })
    };
    serve(&mut agent, &listener, &stop).unwrap();
    let (first, second) = client.join().unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(first.starts_with("ok pool_nr_pages=256 "), "{first}");
    assert!(second.starts_with("err request line longer"), "{second}");
}
