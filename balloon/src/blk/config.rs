//! What a virtio-blk disk offers: feature bits and the `virtio_blk_config` space (virtio 1.2
//! §5.2.4), laid out little-endian by hand so that the bytes are exactly the spec's.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
};

use super::SECTOR_SIZE;

/// Device feature bits every disk offers (the transport adds `VIRTIO_F_VERSION_1` and its own).
/// Indirect descriptors are not offered: chains are walked by `transport::chain`, which refuses
/// them.
pub const BLK_DEVICE_FEATURES: u64 = 1 << VIRTIO_BLK_F_SEG_MAX
    | 1 << VIRTIO_BLK_F_BLK_SIZE
    | 1 << VIRTIO_BLK_F_FLUSH
    | 1 << VIRTIO_BLK_F_TOPOLOGY
    | 1 << VIRTIO_BLK_F_MQ
    | 1 << VIRTIO_BLK_F_DISCARD
    | 1 << VIRTIO_BLK_F_WRITE_ZEROES;

/// Length of the config space up to and including `write_zeroes_may_unmap` and its padding.
pub const BLK_CONFIG_LEN: usize = 60;

/// Most segments in one DISCARD or WRITE_ZEROES request.
pub const MAX_DISCARD_SEG: u32 = 32;

/// Most sectors one DISCARD or WRITE_ZEROES segment may cover (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;

/// The shape of one disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkConfig {
    /// Size in bytes (rounded down to whole sectors in the config space).
    pub capacity_bytes: u64,
    /// Queues offered.
    pub num_queues: u16,
    /// Largest queue size (bounds the segments of one request: `seg_max` is two less).
    pub queue_size: u16,
    /// Physical block size as a power of two times the 512-byte sector: 3 says 4 KiB, so that
    /// Linux aligns its I/O to the page-sized fast path of a pool-backed disk.
    pub physical_block_exp: u8,
}

impl BlkConfig {
    /// A disk of `capacity_bytes` with one queue of 128 entries and 4 KiB physical blocks.
    pub fn new(capacity_bytes: u64) -> Self {
        BlkConfig {
            capacity_bytes,
            num_queues: 1,
            queue_size: 128,
            physical_block_exp: 3,
        }
    }

    /// Capacity in sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_bytes / SECTOR_SIZE
    }

    /// The config space bytes.
    pub fn config_space(&self) -> [u8; BLK_CONFIG_LEN] {
        let mut c = [0u8; BLK_CONFIG_LEN];
        let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
        put(0, &self.capacity_sectors().to_le_bytes());
        // size_max (8) is not offered: segments may be any size.
        put(
            12,
            &u32::from(self.queue_size.saturating_sub(2).max(1)).to_le_bytes(),
        );
        // geometry (16..20) not offered.
        put(20, &(SECTOR_SIZE as u32).to_le_bytes());
        // topology: physical_block_exp, alignment_offset, min_io_size, opt_io_size.
        put(24, &[self.physical_block_exp, 0]);
        put(26, &(1u16 << self.physical_block_exp).to_le_bytes());
        put(28, &0u32.to_le_bytes());
        // writeback (32) only with CONFIG_WCE, not offered.
        put(34, &self.num_queues.to_le_bytes());
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &MAX_DISCARD_SEG.to_le_bytes());
        // discard_sector_alignment: a physical block.
        put(44, &(1u32 << self.physical_block_exp).to_le_bytes());
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(52, &MAX_DISCARD_SEG.to_le_bytes());
        put(56, &[1]);
        c
    }

    /// `size` bytes of the config space at `offset` (what a GET_CONFIG asks); bytes outside it
    /// read as zero.
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let space = self.config_space();
        (0..size as usize)
            .map(|i| {
                (offset as usize)
                    .checked_add(i)
                    .and_then(|j| space.get(j).copied())
                    .unwrap_or(0)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_layout() {
        let mut cfg = BlkConfig::new(1 << 30);
        cfg.num_queues = 2;
        let c = cfg.config_space();
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 2 << 20);
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 126);
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
        assert_eq!(c[24], 3);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(c[44..48].try_into().unwrap()), 8);
        assert_eq!(c[56], 1);
        assert_eq!(cfg.read(34, 4), vec![2, 0, 0, 0]);
        assert_eq!(cfg.read(58, 4), vec![0, 0, 0, 0]);
        assert_eq!(cfg.read(u32::MAX, 2), vec![0, 0]);
    }
}
