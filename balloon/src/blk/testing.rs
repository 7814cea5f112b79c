//! An in-memory [`BlkBackend`] for tests: a byte vector behind a mutex, with failure injection
//! and a record of what it was asked.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::{BlkBackend, BlkIoError, BLK_ID_LEN};

/// A disk held in memory.
#[derive(Debug)]
pub struct MemDisk {
    bytes: Mutex<Vec<u8>>,
    /// When set, every read and write fails.
    pub fail: AtomicBool,
    /// FLUSH requests seen.
    pub flushes: AtomicU64,
    /// Discarded ranges seen, `(offset, len)`.
    pub discards: Mutex<Vec<(u64, u64)>>,
}

impl MemDisk {
    /// A zeroed disk of `len` bytes.
    pub fn new(len: u64) -> Self {
        MemDisk {
            bytes: Mutex::new(vec![0; len as usize]),
            fail: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            discards: Mutex::new(Vec::new()),
        }
    }

    /// A copy of the disk's bytes.
    pub fn contents(&self) -> Vec<u8> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn check(&self) -> Result<(), BlkIoError> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(BlkIoError::Refused("injected failure".into()));
        }
        Ok(())
    }

    fn with<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        f(&mut self.bytes.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl BlkBackend for MemDisk {
    fn capacity_bytes(&self) -> u64 {
        self.with(|b| b.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlkIoError> {
        self.check()?;
        let o = offset as usize;
        self.with(|b| buf.copy_from_slice(&b[o..o + buf.len()]));
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlkIoError> {
        self.check()?;
        let o = offset as usize;
        self.with(|b| b[o..o + buf.len()].copy_from_slice(buf));
        Ok(())
    }

    fn flush(&self) -> Result<(), BlkIoError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BlkIoError> {
        self.discards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((offset, len));
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> Result<(), BlkIoError> {
        self.check()?;
        let o = offset as usize;
        self.with(|b| b[o..o + len as usize].fill(0));
        Ok(())
    }

    fn device_id(&self) -> [u8; BLK_ID_LEN] {
        let mut id = [0u8; BLK_ID_LEN];
        id[..7].copy_from_slice(b"memdisk");
        id
    }
}
