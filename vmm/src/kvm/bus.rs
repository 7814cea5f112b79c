//! The MMIO bus: guest-physical address ranges mapped to devices.
//!
//! The run loop hands every `KVM_EXIT_MMIO` to [`MmioBus::read`] or [`MmioBus::write`], which find
//! the device whose range holds the address and call it with the offset inside that range.
//! Devices sit behind `Arc<Mutex<..>>` so that other threads (an event loop serving ioeventfds, the
//! control API) can reach the same device.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reached by MMIO.
///
/// `data.len()` is the access width (1, 2, 4 or 8 bytes); values are little-endian. Both calls
/// come straight from guest accesses: a device must handle any offset and width without panicking
/// (ignore writes it does not understand, read zeros).
pub trait MmioDevice: Send {
    /// Guest read of `data.len()` bytes at `offset` inside the device's range; fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset` inside the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it.
pub type SharedMmioDevice = Arc<Mutex<dyn MmioDevice>>;

/// Errors placing devices on the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("invalid range [{base:#x}, +{len:#x})")]
    InvalidRange {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error("range [{base:#x}, +{len:#x}) overlaps the device at {other:#x}")]
    Overlap {
        /// Start of the new range.
        base: u64,
        /// Length of the new range.
        len: u64,
        /// Start of the device it overlaps.
        other: u64,
    },
}

struct BusEntry {
    len: u64,
    device: SharedMmioDevice,
}

/// Address-ordered map of MMIO ranges to devices.
#[derive(Default)]
pub struct MmioBus {
    devices: BTreeMap<u64, BusEntry>,
}

impl std::fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.devices.iter().map(|(b, e)| (*b, e.len)))
            .finish()
    }
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: SharedMmioDevice,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if let Some((&other, entry)) = self.devices.range(..end).next_back() {
            if other + entry.len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        self.devices.insert(base, BusEntry { len, device });
        Ok(())
    }

    /// Removes the device placed at `base`, returning it.
    pub fn remove(&mut self, base: u64) -> Option<SharedMmioDevice> {
        self.devices.remove(&base).map(|e| e.device)
    }

    /// Number of devices on the bus.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether the bus has no device.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The device covering the whole access `[addr, addr + width)` and the offset of `addr` in it.
    fn find(&self, addr: u64, width: usize) -> Option<(&SharedMmioDevice, u64)> {
        let (&base, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        let last = offset.checked_add(width.max(1) as u64 - 1)?;
        (last < entry.len).then_some((&entry.device, offset))
    }

    /// Dispatches a guest read. Returns `false` (leaving `data` zeroed) when no device covers it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        data.fill(0);
        match self.find(addr, data.len()) {
            Some((device, offset)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a guest write. Returns `false` (dropping it) when no device covers it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((device, offset)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device; a device whose lock was poisoned by a panicking thread is still usable (its
/// state is whatever that thread left, which the device must tolerate anyway).
fn lock(device: &SharedMmioDevice) -> std::sync::MutexGuard<'_, dyn MmioDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl MmioDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let b = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x100, a.clone()).unwrap();
        bus.insert(0x2000, 0x10, b.clone()).unwrap();

        assert!(bus.write(0x1004, &[1, 2, 3, 4]));
        assert!(bus.write(0x200f, &[9]));
        assert_eq!(a.lock().unwrap().writes, vec![(4, vec![1, 2, 3, 4])]);
        assert_eq!(b.lock().unwrap().writes, vec![(0xf, vec![9])]);

        let mut data = [0u8; 2];
        assert!(bus.read(0x1002, &mut data));
        assert_eq!(data, [3, 3]);
    }

    #[test]
    fn misses_outside_and_across_ranges() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x10, a.clone()).unwrap();
        let mut data = [7u8; 4];
        assert!(!bus.read(0xfff, &mut data));
        assert_eq!(data, [0; 4]);
        assert!(!bus.write(0x1010, &[1]));
        // An access that starts inside but runs past the end is not the device's.
        assert!(!bus.write(0x100e, &[1, 2, 3, 4]));
        assert!(!bus.read(u64::MAX, &mut data));
        assert!(a.lock().unwrap().writes.is_empty());
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let dev = || -> SharedMmioDevice { Arc::new(Mutex::new(Recorder::default())) };
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x100, dev()).unwrap();
        assert!(matches!(
            bus.insert(0x10ff, 1, dev()),
            Err(BusError::Overlap { other: 0x1000, .. })
        ));
        assert!(matches!(
            bus.insert(0xf00, 0x101, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.insert(0xf00, 0x100, dev()).is_ok());
        assert!(bus.insert(0x1100, 0x100, dev()).is_ok());
        assert!(matches!(
            bus.insert(0x5000, 0, dev()),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, dev()),
            Err(BusError::InvalidRange { .. })
        ));
        assert_eq!(bus.len(), 3);
        assert!(bus.remove(0x1000).is_some());
        assert!(bus.insert(0x1000, 0x100, dev()).is_ok());
    }
}
