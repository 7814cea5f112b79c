//! Where frontswap pages go outside the pool: the pool's shared backing file (an unlinked file,
//! with page-sized slots handed out as needed), or a client's own named file at fixed offsets
//! ([`BackingStore`], page `offset` of the key at byte `offset × 4096`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use super::hash::{FastMap, FastSet};
use crate::api::{PoolError, PAGE_SIZE};

/// A client's own backing store: page `k` of the client's swap area 0 lives at byte `k × 4096`.
/// [`std::fs::File`] implements it; tests wrap one to inject failures.
///
/// The pool serialises every write and hole punch on one store (see the pool's locking notes), so an
/// implementation needs no ordering of its own; reads may run concurrently with anything.
pub trait BackingStore: Send + Sync + std::fmt::Debug {
    /// Reads `buf.len()` bytes at `offset`; bytes past the end of the store read as zero.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// Makes `[offset, offset + len)` read as zero and frees its space where the store can.
    fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()>;
    /// Makes every completed write durable (`fdatasync`).
    fn sync_data(&self) -> std::io::Result<()>;
}

impl BackingStore for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match FileExt::read_at(self, &mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    // Past the end of the file: a sparse disk reads as zero.
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.write_all_at(buf, offset)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // Nothing lies past the end of the file; a hole reaching beyond the largest size the
        // filesystem allows would fail (EFBIG).
        let size = self.metadata()?.len();
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(());
        }
        let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(end - offset)) else {
            return Err(std::io::Error::other("hole beyond the largest file offset"));
        };
        // SAFETY: fallocate on a valid fd; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                self.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(e);
        }
        // No hole punching here: write zeroes over the part inside the file.
        let zeros = [0u8; 64 * 1024];
        let mut at = offset;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            self.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        File::sync_data(self)
    }
}

/// A client's backing store and the lock that serialises writes to it.
///
/// Every write to the store (write-through, a store the pool cannot keep, a write-back, a flush)
/// and every hole punch happens with `write_lock` held, and a write-back checks under it that the
/// generation it carries is still the key's current one. So two writes of one key never overlap,
/// and an older generation can never land after a newer one: the newer one is either written
/// under the lock after it, or is in the pool (and the entry says so) until its own write-back.
/// Lock order: `write_lock`, then the pool lock; never the other way round.
#[derive(Debug)]
pub(super) struct DiskBacking {
    pub(super) store: std::sync::Arc<dyn BackingStore>,
    write_lock: Mutex<()>,
}

impl DiskBacking {
    pub(super) fn new(store: std::sync::Arc<dyn BackingStore>) -> Self {
        DiskBacking {
            store,
            write_lock: Mutex::new(()),
        }
    }

    /// Takes the store's write lock (see the type's documentation).
    pub(super) fn lock(&self) -> MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Byte offset of page `offset` of a client's own backing store.
pub(super) fn disk_offset(page: u64) -> Option<u64> {
    page.checked_mul(PAGE_SIZE as u64)
}

/// Byte offset of a backing-file slot.
pub(super) fn slot_offset(slot: u64) -> u64 {
    slot * PAGE_SIZE as u64
}

/// Slots (pages) of the backing file.
#[derive(Debug, Default)]
pub(super) struct BackingSlots {
    next: u64,
    free: Vec<u64>,
    /// Slots being read outside the lock, with reader counts.
    pins: FastMap<u64, u32>,
    /// Released slots still pinned: freed by their last reader.
    zombies: FastSet<u64>,
}

impl BackingSlots {
    pub(super) fn alloc(&mut self) -> u64 {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }

    pub(super) fn release(&mut self, slot: u64) {
        if self.pins.contains_key(&slot) {
            self.zombies.insert(slot);
        } else {
            self.free.push(slot);
        }
    }

    pub(super) fn pin(&mut self, slot: u64) {
        *self.pins.entry(slot).or_insert(0) += 1;
    }

    pub(super) fn unpin(&mut self, slot: u64) {
        if let Some(n) = self.pins.get_mut(&slot) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(&slot);
                if self.zombies.remove(&slot) {
                    self.free.push(slot);
                }
            }
        }
    }

    pub(super) fn in_use(&self) -> u64 {
        self.next - self.free.len() as u64 - self.zombies.len() as u64
    }
}

pub(super) fn open_backing_file(dir: Option<&PathBuf>) -> Result<File, PoolError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = dir.cloned().unwrap_or_else(std::env::temp_dir);
    let tmp = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(&dir);
    if let Ok(f) = tmp {
        return Ok(f);
    }
    // Filesystems without O_TMPFILE: create a unique name and unlink it at once.
    for attempt in 0..16u32 {
        let path = dir.join(format!(
            "gcma-backing-{}-{}-{attempt}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => {
                let _ = std::fs::remove_file(&path);
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(PoolError::io(
                    format!("cannot create the backing file in {}", dir.display()),
                    e,
                ))
            }
        }
    }
    Err(PoolError::io(
        format!("cannot create a unique backing file in {}", dir.display()),
        std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    ))
}
