//! Defect 2: a huge request head must be refused after a few KiB, not buffered.

mod support;

use std::io::Write;
use std::net::TcpStream;

use support::*;

#[test]
fn a_huge_head_is_refused_without_being_buffered() {
    let server = start_tcp(Limits::default());
    let addr = server.local_addr().unwrap();
    let rss_before = rss_kib();

    const TOTAL: usize = 256 << 20;
    let mut s = TcpStream::connect(addr).unwrap();
    // If the server stops reading without closing, writes block: the guard turns that into an
    // error, which is as good a refusal as a reset.
    s.set_write_timeout(Some(HANG_GUARD)).unwrap();
    s.write_all(b"GET /vm HTTP/1.1\r\nHost: t\r\nX-Big: ")
        .unwrap();
    let chunk = vec![b'a'; 64 << 10];
    let mut sent = 0;
    let refused = loop {
        if sent >= TOTAL {
            break None;
        }
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break Some(e),
        }
    };
    let grew_kib = rss_kib().saturating_sub(rss_before);
    assert!(
        refused.is_some(),
        "the server read a {} MiB header line to the end",
        TOTAL >> 20
    );
    let e = refused.unwrap();
    assert!(is_closed(&e) || is_timeout(&e), "unexpected error: {e}");
    assert!(
        grew_kib < 64 << 10,
        "memory grew by {grew_kib} KiB while {sent} header bytes were sent"
    );
    assert_eq!(get(addr, "/still").unwrap().0, 200);
}

#[test]
fn heads_are_limited_to_the_configured_size() {
    let server = start_tcp(Limits::default());
    let addr = server.local_addr().unwrap();
    let request = |filler: usize| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(HANG_GUARD)).unwrap();
        let head = format!(
            "GET /vm HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Fill: {}\r\n\r\n",
            "f".repeat(filler)
        );
        s.write_all(head.as_bytes()).unwrap();
        (head.len(), read_response(&mut s))
    };
    let (len, r) = request(7 * 1024);
    assert!(len < 8 * 1024);
    assert_eq!(r.unwrap().0, 200, "a {len}-byte head is within the limit");
    let (len, r) = request(8 * 1024);
    assert!(len > 8 * 1024);
    match r {
        Ok((status, _)) => assert_eq!(status, 431, "a {len}-byte head"),
        // The server may close before the client reads its answer.
        Err(e) => assert!(is_closed(&e), "{e}"),
    }
}
