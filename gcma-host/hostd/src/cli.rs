//! Command line: pool flags in the style of `vmm demo`, and one `--swap-disk` / `--cache-disk`
//! per disk, each a socket path followed by `key=value` options.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use gcma_host::api::FrontswapPolicy;

/// Serves one GCMA pool over vhost-user to unmodified guests.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "gcma-hostd",
    version,
    about = "Serves one GCMA memory pool to the VMs of a host over vhost-user",
    long_about = "Serves one GCMA memory pool to the VMs of a host over vhost-user.\n\n\
        Swap disks (--swap-disk) are vhost-user-blk devices whose pages live in the pool as \
        frontswap pages, with a backing file per disk in --backing-dir: an unmodified Linux \
        guest runs mkswap and swapon on them. Cache disks (--cache-disk) serve a disk image \
        whose read data the pool keeps as cleancache pages. Contiguous grants (the control \
        socket's POST /grants) evict those pages as the pool's policy says.\n\n\
        Any number of disks; each is served on its own socket, one frontend at a time, and a \
        frontend may reconnect (QEMU: -chardev socket,...,reconnect=1).\n\n\
        --gcma-socket serves virtio-gcma to `vmm` processes (vmm run --gcma-socket PATH): every \
        VMM that connects is a pool client with its own device and grant window; grants are \
        mapped by the VMM (SHMEM_MAP with the pool's memfd) and come back to the pool only once \
        it acknowledged the unmap or its process exited (see balloon/PROTOCOL.md).\n\n\
        SIGTERM or SIGINT: \
        stop taking requests, finish those in flight, write what the swap disks owe to their \
        files, exit 0.\n\n\
        Log level: RUST_LOG (default info).\n\n\
        SIZE values take a K, M, G or T suffix (powers of 1024) or are bytes."
)]
pub struct Cli {
    /// Pool size in MiB (the pool is reserved up front).
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub pool_mib: u64,

    /// Back the pool with 2 MiB pages: `hugetlb` takes reserved hugetlb pages (the host needs
    /// that many free: /proc/sys/vm/nr_hugepages; the pool size must be a multiple of 2 MiB, and
    /// grants are then carved in whole 2 MiB pages), `thp` asks for shmem transparent huge pages
    /// (needs /sys/kernel/mm/transparent_hugepage/shmem_enabled at advise or always), `off`
    /// uses 4 KiB pages. Grants of 2 MiB or more start at a 2 MiB boundary either way.
    #[arg(long, value_enum, default_value_t = gcma_host::huge::HugePages::Off, value_name = "KIND")]
    pub hugepages: gcma_host::huge::HugePages,

    /// Lock the pool in memory (needs RLIMIT_MEMLOCK or CAP_IPC_LOCK).
    #[arg(long)]
    pub mlock: bool,

    /// CPU share, in percent of one core, of the background zeroer that zeroes free pool pages
    /// while the pool is quiet so that grants find them ready (it steps aside whenever a grant
    /// or a disk request wants the pool). 0 turns it off: grants then zero what they take.
    #[arg(long, default_value_t = gcma_host::pool::DEFAULT_ZEROER_CPU_PCT, value_name = "PCT",
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub zeroer_cpu_pct: u32,

    /// Most virtio-blk requests a disk queue's worker answers per wake-up (default: one queue's
    /// worth); with requests left it wakes itself again after its other events, so a guest that
    /// keeps posting cannot hold the worker.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub requests_per_kick: Option<u16>,

    /// When swap pages leave the pool: write-through writes every page to the disk's file
    /// before acknowledging it (nothing acknowledged is lost even if the daemon is killed);
    /// write-back writes it when a grant or pressure evicts it, and on shutdown; put-back keeps
    /// evicted pages in host memory up to each disk's put-back limit, then writes them.
    #[arg(long, value_enum, default_value_t = Policy::WriteThrough)]
    pub frontswap_policy: Policy,

    /// Directory of the swap disks' backing files (`<name>.swap`, page k at byte k*4096; they
    /// survive a restart) and of the pool's anonymous backing file. Required with --swap-disk.
    #[arg(long, value_name = "DIR")]
    pub backing_dir: Option<PathBuf>,

    /// Put-back policy: most swap pages held in host memory outside the pool, over all disks,
    /// in MiB (default: the pool size). Each disk's own limit is put-back-limit=SIZE.
    #[arg(long, value_name = "MIB")]
    pub put_back_limit_mib: Option<u64>,

    /// A swap disk (repeatable): `SOCKET,size=SIZE` and optional `key=value`s; see `--help`.
    #[arg(
        long = "swap-disk",
        value_name = "SPEC",
        value_parser = parse_swap_disk,
        long_help = "A swap disk: SOCKET,size=SIZE[,name=NAME][,guest=GUEST][,cap=SIZE]\
            [,put-back-limit=SIZE][,queues=N]. size: the disk's size (a multiple of 4 KiB). \
            name: metrics label and backing file name (default: the socket's file name without \
            extension). guest: metrics label of the VM it belongs to (default: the name). cap: \
            most pool memory the disk's pages may occupy (default: the pool divided evenly among \
            all disks); beyond it pages go to the file. put-back-limit: put-back policy, most of \
            its pages held in host memory (default: its cap). queues: virtqueues offered \
            (default 4; a guest uses up to one per vCPU). Repeat the flag for more disks."
    )]
    pub swap_disks: Vec<SwapDiskSpec>,

    /// A cache disk (repeatable): `SOCKET,image=PATH` and optional `key=value`s; see `--help`.
    #[arg(
        long = "cache-disk",
        value_name = "SPEC",
        value_parser = parse_cache_disk,
        long_help = "A cache disk: SOCKET,image=PATH[,name=NAME][,guest=GUEST][,cap=SIZE]\
            [,queues=N]. image: the disk image file (raw; opened read-write; its size is the \
            disk's). cap: most pool memory the disk's cached pages may occupy (default: the pool \
            divided evenly among all disks). Other keys as for --swap-disk. Repeat the flag for \
            more disks."
    )]
    pub cache_disks: Vec<CacheDiskSpec>,

    /// Control socket (HTTP over a Unix socket): POST /grants {"pages": N, "align": A},
    /// DELETE /grants/ID, GET /grants, GET /metrics.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,

    /// Serve GET /metrics (OpenMetrics text) on this TCP address, e.g. 127.0.0.1:9465.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// virtio-gcma for `vmm` processes over vhost-user: one listening socket for every VMM of
    /// the host; each connection gets its own pool client, device and grant window.
    #[arg(long, value_name = "PATH")]
    pub gcma_socket: Option<PathBuf>,

    /// Size in MiB of each VMM's grant window (shared-memory region 0 of its gcma device), the
    /// most one guest can hold granted at once (default: the pool size).
    #[arg(long, value_name = "MIB", requires = "gcma_socket")]
    pub gcma_window_mib: Option<u64>,

    /// Microseconds each VMM connection's thread keeps polling the guest's rings after serving
    /// them, before it sleeps until the next kick: a guest that posts its next request within
    /// that time is served without a thread wake-up. QEMU polls its I/O threads up to 32 µs; on
    /// nested hosts a guest's exits cost tens of µs, so its next request often comes later, and
    /// 64 catches it (see vmm/examples/daemon_bench.rs). Costs up to that much CPU after each
    /// burst of requests; 0 turns polling off.
    #[arg(long, value_name = "US", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(0..=10_000_000), requires = "gcma_socket")]
    pub gcma_poll_us: u64,

    /// Start every swap disk empty (its backing file is cut to nothing first). Without it a swap
    /// disk serves what its file holds: that is how a restarted daemon keeps a running guest's
    /// swap. Use it when a disk's file may hold another guest's data.
    #[arg(long)]
    pub fresh_swap: bool,

    /// Run without seccomp filters. By default the disks' vhost-user threads, the HTTP
    /// threads, the zeroer and the housekeeping thread each run under an allow-list of the
    /// system calls their kind makes; a call outside it ends the daemon with a message naming
    /// the call (exit status 159). For debugging only.
    #[arg(long)]
    pub no_seccomp: bool,
}

/// The frontswap policy on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// Write every page to the file before acknowledging it.
    WriteThrough,
    /// Write a page to the file when it leaves the pool.
    WriteBack,
    /// Keep evicted pages in host memory up to a limit, then write them.
    PutBack,
}

impl From<Policy> for FrontswapPolicy {
    fn from(p: Policy) -> Self {
        match p {
            Policy::WriteThrough => FrontswapPolicy::WriteThrough,
            Policy::WriteBack => FrontswapPolicy::WriteBack,
            Policy::PutBack => FrontswapPolicy::PutBack,
        }
    }
}

/// Options every disk takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommonSpec {
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// Explicit name.
    pub name: Option<String>,
    /// Explicit guest label.
    pub guest: Option<String>,
    /// Explicit cap in bytes.
    pub cap_bytes: Option<u64>,
    /// Queues offered.
    pub queues: u16,
}

impl CommonSpec {
    /// The disk's name: explicit, or the socket's file name without extension.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.socket
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "disk".into())
        })
    }

    /// The guest label: explicit, or the name.
    pub fn guest(&self) -> String {
        self.guest.clone().unwrap_or_else(|| self.name())
    }
}

/// A `--swap-disk`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwapDiskSpec {
    /// Socket, name, guest, cap, queues.
    pub common: CommonSpec,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Put-back limit in bytes.
    pub put_back_limit_bytes: Option<u64>,
}

/// A `--cache-disk`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheDiskSpec {
    /// Socket, name, guest, cap, queues.
    pub common: CommonSpec,
    /// The image file.
    pub image: PathBuf,
}

/// Most queues a disk may offer.
pub const MAX_QUEUES: u16 = 64;

/// Parses a SIZE: bytes, or a number with a K, M, G or T suffix (powers of 1024; `KiB`, `MB`
/// and the like are accepted too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} does not start with a number"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        u => {
            return Err(format!(
                "size {s:?} has an unknown unit {u:?} (use K, M, G or T)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// `key=value` pairs of a disk spec.
type Pairs<'a> = Vec<(&'a str, &'a str)>;

/// Splits `SOCKET,key=value,...` into the socket and the pairs; rejects keys not in `allowed`
/// and repeated keys.
fn split_spec<'a>(spec: &'a str, allowed: &[&str]) -> Result<(PathBuf, Pairs<'a>), String> {
    let mut parts = spec.split(',');
    let socket = parts.next().unwrap_or("").trim();
    if socket.is_empty() || socket.contains('=') {
        return Err(format!("{spec:?} must start with the socket path"));
    }
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("{p:?} is not key=value"))?;
        if !allowed.contains(&k) {
            return Err(format!(
                "unknown option {k:?} (allowed: {})",
                allowed.join(", ")
            ));
        }
        if pairs.iter().any(|(seen, _)| *seen == k) {
            return Err(format!("option {k:?} given twice"));
        }
        if v.is_empty() {
            return Err(format!("option {k:?} has an empty value"));
        }
        pairs.push((k, v));
    }
    Ok((PathBuf::from(socket), pairs))
}

fn common(socket: PathBuf, pairs: &[(&str, &str)]) -> Result<CommonSpec, String> {
    let mut c = CommonSpec {
        socket,
        name: None,
        guest: None,
        cap_bytes: None,
        queues: 4,
    };
    for &(k, v) in pairs {
        match k {
            "name" | "guest" => {
                if !v
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
                    || v.starts_with('.')
                {
                    return Err(format!(
                        "{k} {v:?} may only hold letters, digits, '-', '_' and '.' (not first)"
                    ));
                }
                if k == "name" {
                    c.name = Some(v.into());
                } else {
                    c.guest = Some(v.into());
                }
            }
            "cap" => c.cap_bytes = Some(parse_size(v)?),
            "queues" => {
                c.queues = v
                    .parse()
                    .ok()
                    .filter(|q| (1..=MAX_QUEUES).contains(q))
                    .ok_or_else(|| format!("queues {v:?} is not a number from 1 to {MAX_QUEUES}"))?
            }
            _ => {}
        }
    }
    Ok(c)
}

/// Parses a `--swap-disk` value.
pub fn parse_swap_disk(spec: &str) -> Result<SwapDiskSpec, String> {
    let (socket, pairs) = split_spec(
        spec,
        &["size", "name", "guest", "cap", "put-back-limit", "queues"],
    )?;
    let common = common(socket, &pairs)?;
    let mut size = None;
    let mut put_back = None;
    for &(k, v) in &pairs {
        match k {
            "size" => size = Some(parse_size(v)?),
            "put-back-limit" => put_back = Some(parse_size(v)?),
            _ => {}
        }
    }
    let size_bytes = size.ok_or("a swap disk needs size=SIZE")?;
    if size_bytes == 0 || !size_bytes.is_multiple_of(4096) {
        return Err(format!(
            "swap disk size {size_bytes} is not a positive multiple of 4 KiB"
        ));
    }
    Ok(SwapDiskSpec {
        common,
        size_bytes,
        put_back_limit_bytes: put_back,
    })
}

/// Parses a `--cache-disk` value.
pub fn parse_cache_disk(spec: &str) -> Result<CacheDiskSpec, String> {
    let (socket, pairs) = split_spec(spec, &["image", "name", "guest", "cap", "queues"])?;
    let common = common(socket, &pairs)?;
    let image = pairs
        .iter()
        .find(|(k, _)| *k == "image")
        .map(|(_, v)| PathBuf::from(v))
        .ok_or("a cache disk needs image=PATH")?;
    Ok(CacheDiskSpec { common, image })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn swap_disk_specs() {
        let d = parse_swap_disk("/run/vm0-swap.sock,size=256M,cap=64M,guest=vm0").unwrap();
        assert_eq!(d.common.socket, PathBuf::from("/run/vm0-swap.sock"));
        assert_eq!(d.common.name(), "vm0-swap");
        assert_eq!(d.common.guest(), "vm0");
        assert_eq!(d.size_bytes, 256 << 20);
        assert_eq!(d.common.cap_bytes, Some(64 << 20));
        assert_eq!(d.common.queues, 4);
        for bad in [
            "",
            "size=1M",
            "/s.sock",
            "/s.sock,size=1000",
            "/s.sock,size=1M,size=2M",
            "/s.sock,size=1M,colour=red",
            "/s.sock,size=1M,name=../x",
            "/s.sock,size=1M,queues=0",
            "/s.sock,size=1M,cap",
        ] {
            assert!(parse_swap_disk(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cache_disk_specs() {
        let d = parse_cache_disk("c.sock,image=/img/root.raw,queues=2").unwrap();
        assert_eq!(d.image, PathBuf::from("/img/root.raw"));
        assert_eq!(d.common.queues, 2);
        assert_eq!(d.common.name(), "c");
        assert!(parse_cache_disk("c.sock").is_err());
        assert!(parse_cache_disk("c.sock,image=x,size=1M").is_err());
    }
}
