//! The virtio-gcma wire format (`balloon::gcma::proto`): decoding arbitrary bytes never panics,
//! and what decodes re-encodes to the same bytes wherever `balloon/PROTOCOL.md` makes the format
//! canonical.
//!
//! The input is used as the guest would send it: its first [`REQUEST_HEADER_LEN`] bytes are a
//! request header; the bytes after that, zero-padded, are read as a response, a stats entry, a
//! config space, a status code and a writable length.
//!
//! Checked:
//! * `Request::parse` fails with `Short` exactly when fewer than 48 bytes are given;
//! * `RequestHeader` decode/encode is a bijection on 48 bytes;
//! * a header that parses re-encodes to exactly the same 48 bytes (unused fields must be zero, so
//!   a valid request has one encoding), and `from_header(header())` gives the request back;
//! * the request's queue is the high byte of its type and one of the three queues; its lengths
//!   agree with its data direction;
//! * `Response`, `StatEntry` and `Config` round-trip except their reserved bytes, which encode as
//!   zero;
//! * `status::name` names exactly the codes below `status::COUNT`.

use balloon::gcma::proto::{
    queue_of_type, status, Config, DataDir, ParseError, Request, RequestHeader, Response,
    StatEntry, CONFIG_LEN, NUM_QUEUES, PAGE_SIZE, REQUEST_HEADER_LEN, RESPONSE_LEN, STAT_ENTRY_LEN,
};

const TAIL: usize = RESPONSE_LEN + STAT_ENTRY_LEN + CONFIG_LEN + 4 + 8;

/// Runs one input; panics on the first broken property.
pub fn run(data: &[u8]) {
    let parsed = Request::parse(data);
    if data.len() < REQUEST_HEADER_LEN {
        assert_eq!(parsed, Err(ParseError::Short));
    }
    let mut buf = [0u8; REQUEST_HEADER_LEN + TAIL];
    let n = data.len().min(buf.len());
    buf[..n].copy_from_slice(&data[..n]);
    let (head, tail) = buf.split_at(REQUEST_HEADER_LEN);
    let head: &[u8; REQUEST_HEADER_LEN] = head.try_into().expect("48 bytes");

    let h = RequestHeader::decode(head);
    assert_eq!(&h.encode(), head, "header decode/encode is not a bijection");
    assert_eq!(
        queue_of_type(h.req_type),
        ((h.req_type >> 8) & 0xffff) as u16
    );
    let from_header = Request::from_header(&h);
    if data.len() >= REQUEST_HEADER_LEN {
        assert_eq!(parsed, from_header, "parse and from_header disagree");
    }
    match from_header {
        Ok(r) => check_request(&r, &h, head),
        Err(e) => assert_ne!(e, ParseError::Short, "a full header reported Short"),
    }

    let (resp, rest) = tail.split_at(RESPONSE_LEN);
    let (stat, rest) = rest.split_at(STAT_ENTRY_LEN);
    let (cfg, rest) = rest.split_at(CONFIG_LEN);
    let (code, rest) = rest.split_at(4);
    let resp: &[u8; RESPONSE_LEN] = resp.try_into().expect("response bytes");
    let r = Response::decode(resp);
    assert_eq!(r.encode(), zeroed(resp, 4..8), "response round trip");
    let stat: &[u8; STAT_ENTRY_LEN] = stat.try_into().expect("stat bytes");
    let s = StatEntry::decode(stat);
    assert_eq!(s.encode(), zeroed(stat, 4..8), "stat entry round trip");
    let cfg: &[u8; CONFIG_LEN] = cfg.try_into().expect("config bytes");
    let c = Config::decode(cfg);
    assert_eq!(c.encode(), zeroed(cfg, 20..24), "config round trip");

    let code = u32::from_le_bytes(code.try_into().expect("4 bytes"));
    let name = status::name(code);
    assert_eq!(name == "invalid", code as usize >= status::COUNT, "{code}");

    // Any writable length is judged without panicking, by any request.
    let w_len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
    if let Ok(r) = from_header {
        let ok = r.writable_len_ok(w_len);
        let exact = match r.data() {
            DataDir::FromDevice => w_len == PAGE_SIZE + RESPONSE_LEN,
            DataDir::Stats => {
                w_len >= RESPONSE_LEN
                    && w_len - RESPONSE_LEN <= PAGE_SIZE
                    && (w_len - RESPONSE_LEN).is_multiple_of(STAT_ENTRY_LEN)
            }
            _ => w_len == RESPONSE_LEN,
        };
        assert_eq!(ok, exact, "{r:?} with {w_len} writable bytes");
    }
}

fn check_request(r: &Request, h: &RequestHeader, head: &[u8; REQUEST_HEADER_LEN]) {
    assert_eq!(&r.encode(), head, "{r:?} does not re-encode to its bytes");
    assert_eq!(r.header(), *h);
    assert_eq!(Request::from_header(&r.header()), Ok(*r));
    assert_eq!(r.queue(), queue_of_type(h.req_type));
    assert!(usize::from(r.queue()) < NUM_QUEUES, "{r:?}");
    let readable = match r.data() {
        DataDir::ToDevice => REQUEST_HEADER_LEN + PAGE_SIZE,
        _ => REQUEST_HEADER_LEN,
    };
    assert_eq!(r.readable_len(), readable, "{r:?}");
    // The one valid writable length of a fixed-size answer is accepted.
    match r.data() {
        DataDir::FromDevice => assert!(r.writable_len_ok(PAGE_SIZE + RESPONSE_LEN)),
        DataDir::Stats => assert!(r.writable_len_ok(RESPONSE_LEN)),
        _ => assert!(r.writable_len_ok(RESPONSE_LEN)),
    }
}

fn zeroed<const N: usize>(b: &[u8; N], range: std::ops::Range<usize>) -> [u8; N] {
    let mut z = *b;
    z[range].fill(0);
    z
}
