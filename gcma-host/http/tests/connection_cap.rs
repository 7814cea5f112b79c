//! Defect 3: idle connections cost no threads, at most `max_connections` are served at once, and
//! idle ones are closed at the request deadline.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;

use support::*;

/// Thread counts are per process: these tests must not overlap.
static SERIAL: Mutex<()> = Mutex::new(());

fn raise_fd_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from the local struct only.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 256;
        }
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// Sends `GET /probe` on a new connection: `Some(status)`, or `None` if the server closed it
/// without an answer (a refusal too).
fn probe(addr: std::net::SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    if s.write_all(b"GET /probe HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return None;
    }
    match read_response(&mut s) {
        Ok((status, _)) => Some(status),
        Err(e) if is_closed(&e) => None,
        Err(e) => panic!("probe hung or failed: {e}"),
    }
}

#[test]
fn a_thousand_idle_connections_cost_no_threads_and_are_capped() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = (raise_fd_limit(4096).saturating_sub(200) as usize).min(1000);
    let server = start_tcp(Limits {
        request_timeout: Duration::from_secs(600),
        ..Limits::default()
    });
    let addr = server.local_addr().unwrap();
    assert_eq!(get(addr, "/warm").unwrap().0, 200);
    let threads_before = thread_count();

    let idle: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // The server accepts in order: the first 64 hold every slot, so a new request is refused
    // (once the server has caught up with the backlog).
    let mut refused = false;
    for _ in 0..2 * n {
        match probe(addr) {
            Some(200) => continue,
            Some(503) | None => {
                refused = true;
                break;
            }
            Some(other) => panic!("unexpected status {other}"),
        }
    }
    assert!(
        refused,
        "{n} idle connections and a new request is still served"
    );
    let threads = thread_count();
    assert!(
        threads <= threads_before + HANDLER_THREADS + 1,
        "{n} idle connections: {threads} threads, {threads_before} before"
    );

    // A refusal is an answer, not a hang, and says why.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    if let Ok((status, body)) = read_response(&mut s) {
        assert_eq!(status, 503);
        assert!(body.contains("fault_message"), "{body}");
    }

    drop(idle);
    let served = (0..1000).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        probe(addr) == Some(200)
    });
    assert!(served, "slots never came back after the idle clients left");
    assert!(stop_within_guard(server));
}

#[test]
fn idle_connections_are_closed_at_the_deadline() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = start_tcp(Limits {
        request_timeout: Duration::from_millis(300),
        max_connections: 4,
        ..Limits::default()
    });
    let addr = server.local_addr().unwrap();
    let mut idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for s in &mut idle {
        s.set_read_timeout(Some(HANG_GUARD)).unwrap();
        let mut buf = Vec::new();
        match std::io::Read::read_to_end(s, &mut buf) {
            Ok(_) => {}
            Err(e) => assert!(is_closed(&e), "idle connection never closed: {e}"),
        }
    }
    let served = (0..1000).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        probe(addr) == Some(200)
    });
    assert!(served);
}
