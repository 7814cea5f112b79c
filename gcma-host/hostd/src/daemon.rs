//! Putting it together: the pool, the disks, their sockets, the control endpoint, the
//! write-back retry timer, and the orderly shutdown.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use balloon::blk::BlkConfig;
use gcma_host::api::{PoolError, PAGE_SIZE};
use gcma_host::pool::{
    ClientOptions, FrontswapBacking, Pool, PoolConfig, WritebackRetrier, Zeroer, ZeroerConfig,
    DEFAULT_RETRY_PERIOD,
};
use prometheus_client::registry::Registry;

use crate::cache_disk::CacheDisk;
use crate::cli::Cli;
use crate::control::Control;
use crate::disk::{Disk, DiskKind};
use crate::gcma_dev::{serve_gcma, GcmaService};
use crate::metrics::{DiskCollector, VmmCollector};
use crate::serve::{listen, listen_unix, serve_one_at_a_time, DeviceFactory, ServeError};
use crate::swap_disk::SwapDisk;
use crate::vhost_blk::{GuestMem, VhostBlk};
use gcma_http::HttpServer;

/// Why the daemon could not start or stop cleanly. Each names what to fix; the message names
/// the step, its sources say why (print with [`gcma_host::api::ErrorChain`]).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration does not make sense.
    #[error("{0}")]
    Config(String),
    /// The pool could not be built.
    #[error("cannot build the pool")]
    Pool(#[source] PoolError),
    /// A disk's file could not be opened or sized.
    #[error("disk {disk}: {what} {}", path.display())]
    DiskFile {
        /// The disk.
        disk: String,
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A socket could not be served.
    #[error("disk {disk}")]
    Socket {
        /// The disk.
        disk: String,
        /// The error.
        #[source]
        source: ServeError,
    },
    /// The control endpoint could not be served.
    #[error("control endpoint")]
    Http(#[from] gcma_http::HttpError),
    /// A disk could not make what it owes durable at shutdown.
    #[error("disk {disk}: flush at shutdown failed: {reason}")]
    Flush {
        /// The disk.
        disk: String,
        /// Why.
        reason: String,
    },
}

/// Serves one disk's connections; answers at most this many requests per wake-up, if set
/// (`--requests-per-kick`).
struct DiskFactory(Arc<Disk>, Option<u16>);

impl DeviceFactory for DiskFactory {
    type Backend = VhostBlk;

    fn name(&self) -> String {
        self.0.name.clone()
    }

    fn backend(&self, mem: GuestMem) -> VhostBlk {
        let blk = VhostBlk::new(Arc::clone(&self.0), mem);
        match self.1 {
            Some(n) => blk.with_requests_per_kick(n),
            None => blk,
        }
    }

    fn connected(&self) {
        self.0.connected.store(true, Ordering::Relaxed);
        self.0.connections.fetch_add(1, Ordering::Relaxed);
    }

    fn disconnected(&self) {
        self.0.connected.store(false, Ordering::Relaxed);
    }
}

/// A running daemon.
pub struct Daemon {
    /// The pool.
    pub pool: Arc<Pool>,
    /// Every disk.
    pub disks: Vec<Arc<Disk>>,
    /// The control endpoint's routing (also usable directly).
    pub control: Arc<Control>,
    /// The virtio-gcma service (`--gcma-socket`), if any.
    pub gcma: Option<Arc<GcmaService>>,
    gcma_socket: Option<PathBuf>,
    servers: Vec<HttpServer>,
    stop: Arc<AtomicBool>,
    accept: Vec<JoinHandle<()>>,
    /// Retries failed write-backs on a timer, stopped at shutdown.
    retrier: Option<WritebackRetrier>,
    /// The background zeroer (`--zeroer-cpu-pct`), stopped at shutdown.
    zeroer: Option<Zeroer>,
}

/// Pages of a byte count, rounded down.
fn pages(bytes: u64) -> u64 {
    bytes / PAGE_SIZE as u64
}

impl Daemon {
    /// Builds the pool and the disks and starts serving. Nothing is served if anything fails.
    pub fn start(cli: &Cli) -> Result<Daemon, DaemonError> {
        let n_disks = cli.swap_disks.len() + cli.cache_disks.len();
        check(cli)?;
        let nr_pages = cli
            .pool_mib
            .checked_mul(256)
            .filter(|&n| n > 0)
            .ok_or_else(|| DaemonError::Config("--pool-mib must be at least 1".into()))?;
        let mut cfg = PoolConfig::new(nr_pages);
        cfg.huge_pages = cli.hugepages;
        cfg.mlock = cli.mlock;
        cfg.frontswap_policy = cli.frontswap_policy.into();
        cfg.backing_dir = cli.backing_dir.clone();
        if let Some(mib) = cli.put_back_limit_mib {
            cfg.put_back_limit_pages = mib.saturating_mul(256);
        }
        // Every file first, so that a bad path is refused before anything is built.
        let mut swap_files = Vec::with_capacity(cli.swap_disks.len());
        for d in &cli.swap_disks {
            let name = d.common.name();
            let dir = cli
                .backing_dir
                .as_ref()
                .ok_or_else(|| DaemonError::Config("--swap-disk needs --backing-dir".into()))?;
            let path = dir.join(format!("{name}.swap"));
            let file_err = |what, source| DaemonError::DiskFile {
                disk: name.clone(),
                what,
                path: path.clone(),
                source,
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(cli.fresh_swap)
                .open(&path)
                .map_err(|e| file_err("cannot open", e))?;
            let len = file
                .metadata()
                .map_err(|e| file_err("cannot stat", e))?
                .len();
            if len < d.size_bytes {
                file.set_len(d.size_bytes)
                    .map_err(|e| file_err("cannot size", e))?;
            }
            swap_files.push((file, path));
        }
        let mut images = Vec::with_capacity(cli.cache_disks.len());
        for d in &cli.cache_disks {
            let image = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&d.image)
                .map_err(|source| DaemonError::DiskFile {
                    disk: d.common.name(),
                    what: "cannot open image",
                    path: d.image.clone(),
                    source,
                })?;
            images.push(image);
        }
        let pool = Pool::new(cfg).map_err(DaemonError::Pool)?;
        let zeroer = match cli.zeroer_cpu_pct {
            0 => None,
            pct => Some(Zeroer::start(&pool, ZeroerConfig::new(pct)).map_err(DaemonError::Pool)?),
        };
        // The default cap: the pool divided evenly among the disks.
        let default_cap = nr_pages / n_disks.max(1) as u64;
        let mut disks = Vec::with_capacity(n_disks);
        for (d, (file, path)) in cli.swap_disks.iter().zip(swap_files) {
            let name = d.common.name();
            let cap = d.common.cap_bytes.map_or(default_cap, pages);
            let client = pool.register_client_with(
                &name,
                ClientOptions {
                    frontswap_backing: FrontswapBacking::File(Arc::new(file)),
                    frontswap_cap_pages: Some(cap),
                    cleancache_cap_pages: Some(0),
                    put_back_limit_pages: Some(d.put_back_limit_bytes.map_or(cap, pages)),
                },
            );
            let backend = Arc::new(SwapDisk::new(pool.clone(), client, d.size_bytes, &name));
            let mut config = BlkConfig::new(d.size_bytes);
            config.num_queues = d.common.queues;
            log::info!(
                "swap disk {name}: {} MiB, file {}, cap {cap} pool pages, socket {}",
                d.size_bytes >> 20,
                path.display(),
                d.common.socket.display()
            );
            disks.push(Arc::new(Disk::new(
                name,
                d.common.guest(),
                DiskKind::Swap,
                d.common.socket.clone(),
                config,
                backend,
                client,
            )));
        }
        for (d, image) in cli.cache_disks.iter().zip(images) {
            let name = d.common.name();
            let cap = d.common.cap_bytes.map_or(default_cap, pages);
            let client = pool.register_client_with(
                &name,
                ClientOptions {
                    frontswap_cap_pages: Some(0),
                    cleancache_cap_pages: Some(cap),
                    ..ClientOptions::default()
                },
            );
            let backend = CacheDisk::new(pool.clone(), client, image, &name).map_err(|source| {
                DaemonError::DiskFile {
                    disk: name.clone(),
                    what: "cannot use image",
                    path: d.image.clone(),
                    source,
                }
            })?;
            let mut config = BlkConfig::new(backend_capacity(&backend));
            config.num_queues = d.common.queues;
            log::info!(
                "cache disk {name}: image {} ({} MiB), cap {cap} pool pages, socket {}",
                d.image.display(),
                config.capacity_bytes >> 20,
                d.common.socket.display()
            );
            disks.push(Arc::new(Disk::new(
                name,
                d.common.guest(),
                DiskKind::Cache,
                d.common.socket.clone(),
                config,
                Arc::new(backend),
                client,
            )));
        }

        let mut registry = Registry::default();
        pool.register_metrics(&mut registry);
        registry.register_collector(Box::new(DiskCollector {
            pool: pool.clone(),
            disks: disks.clone(),
        }));
        let gcma = match &cli.gcma_socket {
            None => None,
            Some(_) => {
                let window_bytes = cli
                    .gcma_window_mib
                    .map_or(nr_pages * PAGE_SIZE as u64, |m| m << 20);
                let service = GcmaService::new(pool.clone(), window_bytes).map_err(|e| {
                    DaemonError::Config(format!("cannot start the virtio-gcma service: {e}"))
                })?;
                service.set_busy_poll(std::time::Duration::from_micros(cli.gcma_poll_us));
                registry.register_collector(Box::new(VmmCollector {
                    service: service.clone(),
                }));
                Some(service)
            }
        };
        let control = Arc::new(Control::new(pool.clone(), Arc::new(registry)));
        let mut servers = Vec::new();
        if let Some(p) = &cli.api_sock {
            servers.push(crate::http::unix(p, control.clone())?);
        }
        if let Some(a) = cli.metrics_addr {
            servers.push(crate::http::tcp(a, control.clone())?);
        }
        // Bind every socket before serving any, so that a configuration error serves nothing.
        let mut listeners = Vec::with_capacity(disks.len());
        for d in &disks {
            listeners.push(listen(&d.socket).map_err(|source| DaemonError::Socket {
                disk: d.name.clone(),
                source,
            })?);
        }
        let gcma_listener = match &cli.gcma_socket {
            Some(p) => Some(listen_unix(p).map_err(|source| DaemonError::Socket {
                disk: "virtio-gcma".into(),
                source,
            })?),
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut accept = Vec::new();
        if let (Some(l), Some(service)) = (gcma_listener, &gcma) {
            let t = serve_gcma(l, service.clone(), stop.clone())
                .map_err(|e| DaemonError::Config(format!("cannot start a thread: {e}")))?;
            accept.push(t);
            log::info!(
                "virtio-gcma: serving VMMs on {}",
                cli.gcma_socket
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string())
            );
        }
        for (d, l) in disks.iter().zip(listeners) {
            let t = serve_one_at_a_time(
                l,
                Arc::new(DiskFactory(d.clone(), cli.requests_per_kick)),
                stop.clone(),
            )
            .map_err(|e| DaemonError::Config(format!("cannot start a thread: {e}")))?;
            accept.push(t);
        }
        let retrier = match WritebackRetrier::start(&pool, DEFAULT_RETRY_PERIOD) {
            Ok(r) => Some(r),
            Err(e) => {
                log::warn!("failed write-backs will not be retried: {e}");
                None
            }
        };
        log::info!(
            "gcma-hostd: serving {} disks on a {} MiB pool",
            disks.len(),
            cli.pool_mib
        );
        Ok(Daemon {
            pool,
            disks,
            control,
            gcma,
            gcma_socket: cli.gcma_socket.clone(),
            servers,
            stop,
            accept,
            retrier,
            zeroer,
        })
    }

    /// The TCP address `/metrics` is served on, if any.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.servers.iter().find_map(|s| s.local_addr())
    }

    /// The orderly stop: no new connections, no new requests, requests in flight answered, what
    /// the disks owe written and synced. Returns how many swap pages were written.
    pub fn shutdown(mut self) -> Result<u64, DaemonError> {
        let t0 = Instant::now();
        self.stop.store(true, Ordering::Release);
        // No new connections: the socket paths go (accepting threads die with the process).
        for d in &self.disks {
            let _ = std::fs::remove_file(&d.socket);
        }
        if let Some(p) = &self.gcma_socket {
            let _ = std::fs::remove_file(p);
        }
        for d in &self.disks {
            d.quiesce();
        }
        let mut written = 0;
        let mut failed = None;
        for d in &self.disks {
            let r = match d.kind {
                DiskKind::Swap => self
                    .pool
                    .flush_client(d.client)
                    .map_err(|e| gcma_host::api::ErrorChain(&e).to_string()),
                DiskKind::Cache => d.backend.flush().map(|()| 0).map_err(|e| e.to_string()),
            };
            match r {
                Ok(n) => written += n,
                Err(reason) => {
                    log::error!("disk {}: flush at shutdown failed: {reason}", d.name);
                    failed.get_or_insert(DaemonError::Flush {
                        disk: d.name.clone(),
                        reason,
                    });
                }
            }
        }
        self.servers.clear();
        drop(self.retrier.take());
        drop(self.zeroer.take());
        // Accepting threads may be blocked in accept(); they end with the process.
        self.accept.clear();
        log::info!(
            "gcma-hostd: stopped; {written} swap pages written at shutdown in {:.1} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
        match failed {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }
}

fn backend_capacity(b: &CacheDisk) -> u64 {
    use balloon::blk::BlkBackend;
    b.capacity_bytes()
}

/// Checks what can be checked before anything is built.
fn check(cli: &Cli) -> Result<(), DaemonError> {
    let bad = |m: String| Err(DaemonError::Config(m));
    if !cli.swap_disks.is_empty() && cli.backing_dir.is_none() {
        return bad(
            "--swap-disk needs --backing-dir DIR (the swap disks' files live there)".into(),
        );
    }
    if let Some(dir) = &cli.backing_dir {
        if !dir.is_dir() {
            return bad(format!(
                "--backing-dir {} is not a directory",
                dir.display()
            ));
        }
    }
    if cli.gcma_window_mib == Some(0) {
        return bad("--gcma-window-mib must be at least 1".into());
    }
    let mut names = HashSet::new();
    let mut sockets: HashSet<PathBuf> = cli.gcma_socket.iter().cloned().collect();
    let commons = cli
        .swap_disks
        .iter()
        .map(|d| &d.common)
        .chain(cli.cache_disks.iter().map(|d| &d.common));
    for c in commons {
        if !names.insert(c.name()) {
            return bad(format!(
                "two disks are named {:?} (name them with name=)",
                c.name()
            ));
        }
        if !sockets.insert(c.socket.clone()) {
            return bad(format!(
                "two disks (or a disk and --gcma-socket) use the socket {}",
                c.socket.display()
            ));
        }
    }
    Ok(())
}
