//! Defect 1: a client that declares a body and sends only part of it (or half a request head)
//! must not hold up other clients or the server's shutdown, and gets cut off at the request
//! deadline.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::*;

#[test]
fn a_stalled_request_blocks_neither_other_clients_nor_shutdown() {
    // A deadline far beyond the hang guard: whatever passes here cannot be the stalled clients
    // timing out.
    let server = start_tcp(Limits {
        request_timeout: Duration::from_secs(600),
        ..Limits::default()
    });
    let addr = server.local_addr().unwrap();

    let mut stalled_body = TcpStream::connect(addr).unwrap();
    stalled_body
        .write_all(b"PUT /balloon HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n{")
        .unwrap();
    let mut stalled_head = TcpStream::connect(addr).unwrap();
    stalled_head.write_all(b"GET /vm HTTP/1.1\r\nHost").unwrap();

    for i in 0..5 {
        let (status, body) = get(addr, &format!("/after-{i}"))
            .unwrap_or_else(|e| panic!("request {i} behind a stalled client: {e}"));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!("/after-{i}")), "{body}");
    }

    assert!(
        stop_within_guard(server),
        "stopping the server waited for the stalled clients"
    );
    // Their connections were closed by the stop, not left dangling.
    for s in [&mut stalled_body, &mut stalled_head] {
        s.set_read_timeout(Some(HANG_GUARD)).unwrap();
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(_) => {}
            Err(e) => assert!(is_closed(&e), "stalled client's connection still open: {e}"),
        }
    }
}

#[test]
fn a_request_not_received_in_time_is_cut_off() {
    let server = start_tcp(Limits {
        request_timeout: Duration::from_millis(500),
        ..Limits::default()
    });
    let addr = server.local_addr().unwrap();

    // Body incomplete at the deadline: 408 with the error shape, then the connection closes.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    s.write_all(b"PUT /balloon HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n{")
        .unwrap();
    let (status, body) = read_response(&mut s).expect("an answer to the stalled body");
    assert_eq!(status, 408, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["fault_message"]
        .as_str()
        .unwrap()
        .contains("not received"));
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty()),
        Err(e) => assert!(is_closed(&e), "{e}"),
    }

    // Head incomplete at the deadline: the connection is closed.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    s.write_all(b"GET /vm HTTP/1.1\r\nHo").unwrap();
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert!(is_closed(&e), "half a head kept the connection open: {e}"),
    }

    // An idle keep-alive connection is closed too, after answering what it asked.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert!(is_closed(&e), "idle connection kept open: {e}"),
    }

    // And the server still serves.
    assert_eq!(get(addr, "/still").unwrap().0, 200);
}
