//! Serving vhost-user devices on Unix sockets: a listening socket per device, and an accept
//! loop that builds a fresh backend for every frontend connection.
//!
//! A device type plugs in through [`DeviceFactory`]. Disks take one frontend at a time
//! ([`serve_one_at_a_time`]): a disk belongs to one VM, and when its frontend goes (a VM exits,
//! or QEMU reconnects after this daemon restarted) the next connection starts afresh against the
//! same disk. A device that many VMMs use at once over one socket (virtio-gcma for our `vmm`)
//! needs a loop that keeps accepting while earlier connections run; `VhostUserDaemon::start`
//! accepts exactly one connection per daemon value, so such a loop starts a new daemon per
//! accepted connection and waits for each on its own thread, with the same factory trait.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// Errors setting up a socket.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be created.
    #[error("cannot listen on {path}: {reason}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A live process already serves this socket.
    #[error("{0} is in use by a running process")]
    InUse(PathBuf),
    /// Something that is not a socket sits at the path; it is left alone.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
}

/// A kind of vhost-user device the daemon serves.
pub trait DeviceFactory: Send + Sync + 'static {
    /// The backend one connection gets.
    type Backend: VhostUserBackend<Bitmap = (), Vring = VringRwLock> + Clone + 'static;

    /// A name for threads and log lines.
    fn name(&self) -> String;

    /// A backend for the next connection, reading guest memory through `mem`.
    fn backend(&self, mem: GuestMemoryAtomic<GuestMemoryMmap<()>>) -> Self::Backend;

    /// A frontend connected to the last backend made.
    fn connected(&self);

    /// That connection ended.
    fn disconnected(&self);
}

/// Binds `path`. A stale socket file (nobody listening) is replaced; a live one is an error, and
/// so is anything else at the path (a mistyped path must not delete a file).
pub fn listen(path: &Path) -> Result<Listener, ServeError> {
    check_path(path)?;
    Listener::new(path, true).map_err(|e| ServeError::Listen {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Like [`listen`], for a service that accepts connections itself (virtio-gcma: it needs each
/// peer's credentials, see `crate::gcma_dev`).
pub fn listen_unix(path: &Path) -> Result<std::os::unix::net::UnixListener, ServeError> {
    check_path(path)?;
    let _ = std::fs::remove_file(path);
    std::os::unix::net::UnixListener::bind(path).map_err(|e| ServeError::Listen {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Refuses a path that is not a socket, or a socket a live process serves.
fn check_path(path: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServeError::NotASocket(path.to_path_buf()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::InUse(path.to_path_buf()));
        }
    }
    Ok(())
}

/// Serves `factory` on `listener`, one connection at a time, until `stop` is set (checked
/// between connections; a shutdown exits the process rather than waiting here).
pub fn serve_one_at_a_time<F: DeviceFactory>(
    mut listener: Listener,
    factory: Arc<F>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    let name = factory.name();
    std::thread::Builder::new()
        .name(format!("{name}-accept"))
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                if let Err(e) = serve_connection(&mut listener, &*factory) {
                    log::error!("{name}: {e}");
                    // A listener that fails to accept would fail again at once.
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            }
        })
}

/// Accepts one connection on `listener` and serves it until the frontend goes.
fn serve_connection<F: DeviceFactory>(
    listener: &mut Listener,
    factory: &F,
) -> Result<(), vhost_user_backend::Error> {
    let name = factory.name();
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let backend = factory.backend(mem.clone());
    let mut daemon = VhostUserDaemon::new(name.clone(), backend, mem)?;
    daemon.start(listener)?;
    factory.connected();
    log::info!("{name}: frontend connected");
    let result = daemon.wait();
    factory.disconnected();
    match &result {
        Ok(()) => log::info!("{name}: frontend disconnected"),
        Err(e) => log::warn!("{name}: connection ended: {e}"),
    }
    // Dropping the daemon stops and joins its vring worker threads.
    drop(daemon);
    match result {
        // A frontend going away mid-message is an ordinary disconnect.
        Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_replaces_only_stale_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(listen(&file), Err(ServeError::NotASocket(_))));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

        let sock = dir.path().join("swap.sock");
        let live = listen(&sock).unwrap();
        assert!(matches!(listen(&sock), Err(ServeError::InUse(_))));
        drop(live);

        // The file of a socket nobody listens on any more is stale: it is replaced.
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        listen(&stale).unwrap();
    }
}
