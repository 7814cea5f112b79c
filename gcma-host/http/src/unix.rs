//! Unix socket paths: what may be replaced, and creating a socket with its final mode.
//!
//! `bind(2)` creates the socket file with the process umask, and a `chmod` afterwards leaves a
//! window where another user may connect. So the socket is bound inside a fresh directory only the
//! server's user can enter (mode `0700`), given its mode there, and renamed into place with
//! `RENAME_NOREPLACE`, so nothing that appeared at the path meanwhile is overwritten either.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{RenameFlags, CWD};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::HttpError;

/// Mode of a new control socket unless configured otherwise: only its owner may connect.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// A socket file this server created; dropping it removes the file if it is still the same one.
#[derive(Debug)]
pub(crate) struct BoundSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl BoundSocket {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        // Remove only our socket: another server may have replaced a socket we no longer serve.
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.dev() == self.dev && m.ino() == self.ino {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("cannot remove socket {}: {e}", self.path.display());
                }
            }
        }
    }
}

fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_fifo() {
        "named pipe"
    } else if t.is_block_device() || t.is_char_device() {
        "device node"
    } else {
        "special file"
    }
}

/// Whether a server accepts connections on the socket at `path`: `Ok(true)` live, `Ok(false)`
/// stale (connection refused). The probe never blocks: a live server whose backlog is full is
/// live too.
fn is_live(path: &Path) -> Result<bool, HttpError> {
    let err = |what, e: Errno| HttpError::Unix {
        what,
        path: path.to_path_buf(),
        source: e.into(),
    };
    let addr = SocketAddrUnix::new(path).map_err(|e| err("probe socket", e))?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| err("probe socket", e))?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) | Err(Errno::AGAIN) | Err(Errno::INPROGRESS) => Ok(true),
        Err(Errno::CONNREFUSED) | Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(err("tell whether a server listens on", e)),
    }
}

/// Makes `path` free for a new socket: nothing there, or a stale socket (removed when
/// `remove_stale`). Anything else is an error and is left untouched.
fn clear(path: &Path, remove_stale: bool) -> Result<(), HttpError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(HttpError::Unix {
                what: "inspect",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(HttpError::NotASocket {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    if is_live(path)? {
        return Err(HttpError::SocketInUse(path.to_path_buf()));
    }
    if !remove_stale {
        return Ok(());
    }
    log::info!("removing stale socket {}", path.display());
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(HttpError::Unix {
            what: "remove stale socket",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Removes a directory and what is in it when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates a listening socket at `path` with permission bits `mode`.
pub(crate) fn bind(path: &Path, mode: u32) -> Result<(UnixListener, BoundSocket), HttpError> {
    if mode & !0o777 != 0 {
        return Err(HttpError::InvalidMode(mode));
    }
    let io_err = |what: &'static str, source: std::io::Error| HttpError::Unix {
        what,
        path: path.to_path_buf(),
        source,
    };
    if path.file_name().is_none() {
        return Err(io_err(
            "create socket",
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path does not name a file",
            ),
        ));
    }
    clear(path, true)?;

    static NEXT: AtomicU64 = AtomicU64::new(0);
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Short, so that the temporary socket path stays within `sun_path` whenever the final one
    // is within it by a dozen bytes.
    let dir = parent.join(format!(
        ".{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| io_err("create a private directory beside", e))?;
    let dir = TempDir(dir);
    let tmp = dir.0.join("s");
    let listener = UnixListener::bind(&tmp).map_err(|e| io_err("create socket", e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_err("set the mode of socket", e))?;
    match rustix::fs::renameat_with(CWD, &tmp, CWD, path, RenameFlags::NOREPLACE) {
        Ok(()) => {}
        Err(Errno::EXIST) => {
            // Something appeared at the path since it was cleared: report what it is.
            clear(path, false)?;
            return Err(io_err(
                "create socket",
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "another file appeared at the path meanwhile",
                ),
            ));
        }
        Err(e) => return Err(io_err("put in place socket", e.into())),
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_err("inspect", e))?;
    Ok((
        listener,
        BoundSocket {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    ))
}
