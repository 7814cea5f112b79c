//! Disk image files for the guests.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use guest_checker::pattern::mix;
use sha2::{Digest, Sha256};

use super::{find_tool, GuestError};

/// Creates (or truncates) a sparse file of `size_bytes`.
pub fn sparse(path: &Path, size_bytes: u64) -> Result<(), GuestError> {
    let f = std::fs::File::create(path)
        .map_err(GuestError::io(format!("create {}", path.display())))?;
    f.set_len(size_bytes)
        .map_err(GuestError::io(format!("size {}", path.display())))
}

/// Creates a file of `size_bytes` with every block written (`byte` repeated), so that holes
/// punched later by DISCARD show in [`allocated_bytes`].
pub fn filled(path: &Path, size_bytes: u64, byte: u8) -> Result<(), GuestError> {
    let mut f = std::fs::File::create(path)
        .map_err(GuestError::io(format!("create {}", path.display())))?;
    let chunk = vec![byte; 1 << 20];
    let mut left = size_bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])
            .map_err(GuestError::io(format!("write {}", path.display())))?;
        left -= n as u64;
    }
    f.sync_all()
        .map_err(GuestError::io(format!("sync {}", path.display())))
}

/// Bytes of disk the file occupies (holes excluded).
pub fn allocated_bytes(path: &Path) -> Result<u64, GuestError> {
    let m = std::fs::metadata(path).map_err(GuestError::io(format!("stat {}", path.display())))?;
    Ok(m.blocks() * 512)
}

/// `len` bytes that depend only on `seed` (SplitMix64 of a counter).
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(&mix(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Hex SHA-256 of `data`, as the guest checker prints it.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An ext2 image holding one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext2Image {
    /// The image file.
    pub path: PathBuf,
    /// The file's name in the filesystem's root.
    pub file_name: String,
    /// The file's size.
    pub file_bytes: u64,
    /// The file's SHA-256 (hex).
    pub sha256: String,
}

/// Makes an ext2 image at `path` whose root holds `file_name` with `file_bytes` of bytes seeded by
/// `seed`. Built with `mke2fs -d` (no mount, no root needed); the image has room to spare.
pub fn ext2_with_random_file(
    path: &Path,
    file_name: &str,
    file_bytes: usize,
    seed: u64,
) -> Result<Ext2Image, GuestError> {
    let mke2fs = find_tool("mke2fs")?;
    let data = seeded_bytes(seed, file_bytes);
    let src = PathBuf::from(format!("{}.d", path.display()));
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).map_err(GuestError::io(format!("mkdir {}", src.display())))?;
    std::fs::write(src.join(file_name), &data).map_err(GuestError::io(format!(
        "write {}",
        src.join(file_name).display()
    )))?;
    // Data plus a quarter for metadata, and 4 MiB for the filesystem's own structures.
    let size = (file_bytes as u64 * 5 / 4 + (4 << 20)).next_multiple_of(1 << 20);
    sparse(path, size)?;
    let out = Command::new(&mke2fs)
        .args(["-q", "-F", "-t", "ext2", "-b", "4096", "-m", "0", "-d"])
        .arg(&src)
        .arg(path)
        .output()
        .map_err(GuestError::io(format!("run {}", mke2fs.display())))?;
    let _ = std::fs::remove_dir_all(&src);
    if !out.status.success() {
        return Err(GuestError::Tool {
            tool: "mke2fs".into(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(Ext2Image {
        path: path.to_path_buf(),
        file_name: file_name.into(),
        file_bytes: file_bytes as u64,
        sha256: sha256_hex(&data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_bytes_depend_on_the_seed_only() {
        assert_eq!(seeded_bytes(1, 100), seeded_bytes(1, 100));
        assert_ne!(seeded_bytes(1, 100), seeded_bytes(2, 100));
        assert_eq!(seeded_bytes(1, 13)[..], seeded_bytes(1, 100)[..13]);
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn filled_files_are_allocated_and_sparse_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        filled(&a, 1 << 20, 0xaa).unwrap();
        sparse(&b, 1 << 20).unwrap();
        assert!(allocated_bytes(&a).unwrap() >= 1 << 20);
        assert!(allocated_bytes(&b).unwrap() < 1 << 20);
        assert_eq!(std::fs::metadata(&b).unwrap().len(), 1 << 20);
    }
}
