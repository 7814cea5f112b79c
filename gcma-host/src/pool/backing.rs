//! The frontswap backing file: an unlinked file (write-through copies, write-back targets) and
//! the allocation of its page-sized slots.

use std::fs::File;
use std::path::PathBuf;

use super::hash::{FastMap, FastSet};
use crate::api::{PoolError, PAGE_SIZE};

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
                return Err(PoolError::Io(format!(
                    "cannot create the backing file in {}: {e}",
                    dir.display()
                )))
            }
        }
    }
    Err(PoolError::Io(format!(
        "cannot create a unique backing file in {}",
        dir.display()
    )))
}
