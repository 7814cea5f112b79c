//! Who is on the other end of a vhost-user connection, and whether that process still exists.
//!
//! A VMM's mappings of pool memory live as long as its process, not as long as its socket: a VMM
//! that closed the socket (or whose socket broke) may still have grants mapped into a running
//! guest. So the daemon releases what a VMM held only once a pidfd of the peer process says it
//! exited ([`Peer::exited`]); a connection that ends earlier is retired and left to the
//! [`crate::gcma_dev::Reaper`].

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd of the process that connected, taken by the kernel at
/// `connect` time, so it cannot name a process that reused the pid. (Not in `libc` 0.2 for all
/// targets; the value is the same on every Linux architecture with asm-generic socket options.)
const SO_PEERPIDFD: libc::c_int = 77;

/// The process on the other end of a connection.
#[derive(Debug)]
pub struct Peer {
    /// Its pid when it connected.
    pub pid: i32,
    /// Its uid.
    pub uid: u32,
    pidfd: OwnedFd,
}

impl Peer {
    /// The peer of `stream`: its credentials (`SO_PEERCRED`) and a pidfd (`SO_PEERPIDFD`, else
    /// `pidfd_open` of the pid, checked against the credentials once more so that a peer that
    /// exited and whose pid was reused in between is not mistaken for the new process).
    pub fn of(stream: &UnixStream) -> io::Result<Peer> {
        let cred = rustix::net::sockopt::socket_peercred(stream)?;
        let pid = cred.pid.as_raw_nonzero().get();
        let uid = cred.uid.as_raw();
        let pidfd = match peer_pidfd(stream) {
            Ok(fd) => fd,
            Err(_) => {
                let fd =
                    rustix::process::pidfd_open(cred.pid, rustix::process::PidfdFlags::empty())?;
                // The pid could have been reused between connect and pidfd_open only if the peer
                // exited; then its socket end is closed. A peer that still holds it is the one
                // whose pid we read.
                if peer_closed(stream)? {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "peer exited before its pidfd could be taken",
                    ));
                }
                fd
            }
        };
        Ok(Peer { pid, uid, pidfd })
    }

    /// Whether the process has exited (its pidfd is readable).
    pub fn exited(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, timeout 0.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        r > 0 && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// The pidfd (readable once the process exited).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

fn peer_pidfd(stream: &UnixStream) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`, a c_int we own.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if fd < 0 {
        return Err(io::Error::other("SO_PEERPIDFD returned no descriptor"));
    }
    // SAFETY: the kernel just created this descriptor for us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the other end of `stream` is closed (a zero-length peek without blocking).
fn peer_closed(stream: &UnixStream) -> io::Result<bool> {
    let mut b = [0u8; 1];
    // SAFETY: a peek of at most one byte into a local buffer.
    let r = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(false)
}
