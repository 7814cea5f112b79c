//! Defect 4: the Unix socket is created with mode 0600 (or the configured mode), and nothing at
//! its path is removed unless it is a stale socket.

mod support;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::sync::Mutex;

use support::*;

/// The umask is per process: these tests must not overlap.
static SERIAL: Mutex<()> = Mutex::new(());

fn mode_of(p: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_socket_gets_its_mode_whatever_the_umask() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o022) };
    let dir = temp_dir("mode");
    let sock = dir.join("api.sock");
    let server = start_unix(&sock, DEFAULT_SOCKET_MODE).unwrap();
    assert_eq!(mode_of(&sock), 0o600);
    assert_eq!(get_unix(&sock, "/vm").unwrap().0, 200);
    // Nothing else was left beside it.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("api.sock")]);
    drop(server);
    assert!(!sock.exists(), "socket left behind");

    let server = start_unix(&sock, 0o660).unwrap();
    assert_eq!(mode_of(&sock), 0o660);
    drop(server);
    assert!(start_unix(&sock, 0o1777).unwrap_err().contains("mode"));
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn only_a_stale_socket_is_replaced() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("paths");
    let sock = dir.join("api.sock");

    std::fs::write(&sock, b"precious").unwrap();
    let err = start_unix(&sock, 0o600).unwrap_err();
    assert!(
        err.contains(&sock.display().to_string()) && err.contains("regular file"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&sock).unwrap(),
        b"precious",
        "a regular file was replaced"
    );
    std::fs::remove_file(&sock).unwrap();

    std::fs::create_dir(&sock).unwrap();
    let err = start_unix(&sock, 0o600).unwrap_err();
    assert!(err.contains("directory"), "{err}");
    assert!(sock.is_dir());
    std::fs::remove_dir(&sock).unwrap();

    let target = dir.join("target");
    std::fs::write(&target, b"kept").unwrap();
    symlink(&target, &sock).unwrap();
    let err = start_unix(&sock, 0o600).unwrap_err();
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"kept");
    assert!(std::fs::symlink_metadata(&sock)
        .unwrap()
        .file_type()
        .is_symlink());
    std::fs::remove_file(&sock).unwrap();

    // A stale socket (its listener is gone) is replaced.
    drop(UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let first = start_unix(&sock, 0o600).expect("a stale socket is replaced");
    assert_eq!(get_unix(&sock, "/one").unwrap().0, 200);

    // A live one is not, and its server keeps serving.
    let err = start_unix(&sock, 0o600).unwrap_err();
    assert!(err.contains("already in use"), "{err}");
    assert_eq!(get_unix(&sock, "/two").unwrap().0, 200);

    // A server removes its socket when it stops, but not a file that replaced it.
    std::fs::remove_file(&sock).unwrap();
    std::fs::write(&sock, b"new owner").unwrap();
    drop(first);
    assert_eq!(std::fs::read(&sock).unwrap(), b"new owner");
    std::fs::remove_dir_all(&dir).unwrap();
}
