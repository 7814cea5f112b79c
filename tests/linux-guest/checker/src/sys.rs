//! What the checker does to the guest system: console lines, busybox tools, kernel files,
//! anonymous memory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use guest_checker::procfs;
use guest_checker::report::Record;

/// Why a check could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed ({status}): {output}")]
    Command {
        cmd: String,
        status: String,
        output: String,
    },
    #[error("{0} did not appear within {1:?}")]
    NoDisk(PathBuf, Duration),
    #[error("cannot parse {0}")]
    Parse(String),
}

impl Error {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// Prints one protocol line in a single write, so other console output cannot split it.
pub fn emit(r: &Record) {
    let line = format!("{}\n", r.to_line());
    let mut out = std::io::stdout().lock();
    // Nothing to do if the console is gone: the host then sees no line and fails the run.
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

pub fn read(path: impl AsRef<Path>) -> Result<String, Error> {
    let path = path.as_ref();
    std::fs::read_to_string(path).map_err(Error::io(format!("read {}", path.display())))
}

/// The `event=start` record: userspace reached, with the guest's uptime and memory.
pub fn start_record(mode: &str) -> Record {
    let mut r = Record::new("start").field("mode", mode);
    if let Some(ms) = read("/proc/uptime")
        .ok()
        .and_then(|t| procfs::uptime_ms(&t))
    {
        r.push("uptime_ms", ms);
    }
    if let Ok(mi) = read("/proc/meminfo") {
        for (key, name) in [
            ("MemTotal", "mem_total_kib"),
            ("MemFree", "mem_free_kib"),
            ("MemAvailable", "mem_available_kib"),
        ] {
            if let Some(v) = procfs::meminfo_kib(&mi, key) {
                r.push(name, v);
            }
        }
    }
    if let Ok(rel) = read("/proc/sys/kernel/osrelease") {
        r.push("kernel", rel.trim());
    }
    r
}

/// Runs a tool (busybox applets in the kit) and fails with its output if it fails.
pub fn run(prog: &str, args: &[&str]) -> Result<(), Error> {
    let cmd = format!("{prog} {}", args.join(" "));
    log::info!("running {cmd}");
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(Error::io(format!("spawn {prog}")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    Err(Error::Command {
        cmd,
        status: out.status.to_string(),
        output: text.trim().replace('\n', " / "),
    })
}

/// Waits for a device node: module probing may finish after /init moved on.
pub fn wait_for(path: &Path, limit: Duration) -> Result<(), Error> {
    let t = Instant::now();
    while !path.exists() {
        if t.elapsed() > limit {
            return Err(Error::NoDisk(path.to_path_buf(), limit));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Facts about a block device from `/sys/block/<name>/`.
pub struct DiskInfo {
    pub name: String,
    pub size_bytes: u64,
    pub rotational: String,
    pub discard_max_bytes: String,
}

impl DiskInfo {
    pub fn of(dev: &Path) -> Result<DiskInfo, Error> {
        let name =
            procfs::block_name(dev).ok_or_else(|| Error::Parse(dev.display().to_string()))?;
        let sys = PathBuf::from("/sys/block").join(&name);
        let sectors: u64 = read(sys.join("size"))?
            .trim()
            .parse()
            .map_err(|_| Error::Parse(format!("/sys/block/{name}/size")))?;
        let attr = |a: &str| {
            read(sys.join("queue").join(a))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "-".into())
        };
        Ok(DiskInfo {
            size_bytes: sectors * 512,
            rotational: attr("rotational"),
            discard_max_bytes: attr("discard_max_bytes"),
            name,
        })
    }

    /// Sectors read and written so far.
    pub fn sectors(&self) -> Result<(u64, u64), Error> {
        let path = format!("/sys/block/{}/stat", self.name);
        procfs::block_sectors(&read(&path)?).ok_or(Error::Parse(path))
    }
}

pub fn vmstat(key: &str) -> Result<u64, Error> {
    procfs::vmstat(&read("/proc/vmstat")?, key)
        .ok_or_else(|| Error::Parse(format!("/proc/vmstat {key}")))
}

pub fn meminfo_kib(key: &str) -> Result<u64, Error> {
    procfs::meminfo_kib(&read("/proc/meminfo")?, key)
        .ok_or_else(|| Error::Parse(format!("/proc/meminfo {key}")))
}

/// Drops the guest's clean page cache, dentries and inodes.
pub fn drop_caches() -> Result<(), Error> {
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .map_err(Error::io("write /proc/sys/vm/drop_caches"))
}

pub fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// A private anonymous mapping, unmapped on drop.
pub struct AnonMap {
    ptr: *mut u64,
    len_bytes: usize,
}

impl AnonMap {
    /// Maps `len_bytes` (a multiple of the page size) of anonymous memory. Transparent huge pages
    /// are turned off for it: the storm is meant to swap base pages, as the device sees them.
    pub fn new(len_bytes: usize) -> Result<AnonMap, Error> {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks; no existing memory is
        // affected. The result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Io {
                what: format!("mmap {len_bytes} bytes"),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `ptr..ptr+len_bytes` is the mapping just made; madvise only sets a hint on it.
        if unsafe { libc::madvise(ptr, len_bytes, libc::MADV_NOHUGEPAGE) } != 0 {
            log::warn!(
                "madvise(MADV_NOHUGEPAGE): {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(AnonMap {
            ptr: ptr.cast(),
            len_bytes,
        })
    }

    pub fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: the mapping is `len_bytes` long, readable and writable, page-aligned (so aligned
        // for u64), zero-filled on first touch, and owned by `self`, which the borrow keeps alive
        // and unaliased for the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len_bytes / 8) }
    }
}

impl Drop for AnonMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no slice into it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len_bytes);
        }
    }
}
