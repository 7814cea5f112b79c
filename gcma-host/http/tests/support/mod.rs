//! What the server tests share: a server over the library's API, a raw HTTP/1.1 client on std
//! sockets (so the tests see exactly what goes over the wire), and process probes.
//!
//! Every wait in these tests is a hang guard: generous, and only there so that a regression fails
//! instead of hanging. No test asserts how long anything took.

#![allow(dead_code, unused_imports)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use gcma_http::{
    HttpServer, Limits, Listen, Reply, Request, DEFAULT_SOCKET_MODE, HANDLER_THREADS,
};

/// How long a test waits for anything before calling it a hang.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// A handler that answers `200 {"method", "path", "body_len"}` to everything.
pub fn echo() -> gcma_http::Handler {
    Arc::new(|r: &Request| {
        Reply::json(
            200,
            &serde_json::json!({"method": r.method, "path": r.path, "body_len": r.body.len()}),
        )
    })
}

/// A TCP server on a free loopback port.
pub fn start_tcp(limits: Limits) -> HttpServer {
    HttpServer::start(
        "test",
        &Listen::Tcp("127.0.0.1:0".parse().unwrap()),
        &limits,
        echo(),
    )
    .expect("server starts")
}

/// A Unix-socket server at `path` with `mode`.
pub fn start_unix(path: &Path, mode: u32) -> Result<HttpServer, String> {
    HttpServer::start(
        "test",
        &Listen::Unix {
            path: path.to_path_buf(),
            mode,
        },
        &Limits::default(),
        echo(),
    )
    .map_err(|e| e.to_string())
}

/// Stops `server` on another thread; `true` if that returned within the hang guard.
pub fn stop_within_guard(server: HttpServer) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        server.stop();
        let _ = tx.send(());
    });
    rx.recv_timeout(HANG_GUARD).is_ok()
}

/// Status code and body of the response on `s`, read until the server closes or the body ends.
pub fn read_response(s: &mut dyn Read) -> std::io::Result<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((head, body)) = split_head(&buf) {
            let len = content_length(&head).unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no status line in {text:?}"),
            )
        })?;
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    Ok((status, body))
}

fn split_head(buf: &[u8]) -> Option<(String, &[u8])> {
    let i = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((
        String::from_utf8_lossy(&buf[..i]).into_owned(),
        &buf[i + 4..],
    ))
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

/// Sends one `GET path` on a fresh TCP connection and reads the answer.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(HANG_GUARD))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )?;
    read_response(&mut s)
}

/// Sends one `GET path` on a fresh Unix-socket connection and reads the answer.
pub fn get_unix(sock: &Path, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(HANG_GUARD))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )?;
    read_response(&mut s)
}

/// Whether `e` is what a read or write sees on a connection the peer closed.
pub fn is_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof
    )
}

/// Whether `e` is a hang-guard timeout on a socket read or write.
pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Threads of this process.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Resident memory of this process, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A fresh, empty directory for this test.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gcma-http-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
