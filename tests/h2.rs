//! HTTP/2 (h2c) attacks against a running gateway, end to end: a raw h2 client
//! (`aegis_testkit::h2raw`, frames written by hand) against a real `aegis run`, with an
//! in-process upstream ([`Backend`]) that records everything the gateway sends it. Each attack
//! is refused or bounded, and what matters is checked on both sides: what the client sees
//! (the status, the RST_STREAM or GOAWAY code) and what the upstream never sees.
//!
//! The h2 timers (an idle connection, a stream whose window never opens) are checked to the
//! millisecond on paused time in aegis-tokio/tests/h2_conn.rs; here they run once on real
//! sockets, with generous bounds. README's "HTTP/2 limits" lists every limit tested here.
#![allow(clippy::disallowed_methods)] // real time: deadlines and the timeouts under test

use std::io::{self, Write};
use std::time::{Duration, Instant};

use aegis_testkit::h2raw::{
    self, Ended, H2Conn, code, data, flag, frame, goaway, headers, indexed, literal,
    literal_indexed, request_block, rst_stream, setting, ty,
};
use aegis_testkit::{Backend, Gate, Gateway, request, wait_for, wait_until};

const WAIT: Duration = Duration::from_secs(10);

/// A gateway with one catch-all route to `target`; `server` lines go in `[server]`, `route`
/// lines in the route. One worker: what a test counts does not depend on the machine.
fn gateway(target: &str, server: &str, route: &str) -> Gateway {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n[[routes]]\npath = \"/\"\ntargets = [{target:?}]\n{route}\n"
    );
    Gateway::start_with(&config, &[("RUST_LOG", "warn")], &["--workers", "1"])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The gateway still serves a fresh h2 connection (an attack on one connection is that
/// connection's problem only).
fn still_serves(gw: &Gateway) {
    let mut c = H2Conn::handshake(gw.addr, &[]);
    let r = c.get(1, "/after").response();
    assert_eq!(r.status, 200, "{r:?}");
}

/// The gateway's resident memory, in KiB.
fn rss_kib(gw: &Gateway) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn assert_goaway(frames: &[h2raw::Frame], want: u32) {
    let g = goaway(frames).unwrap_or_else(|| panic!("no GOAWAY; frames: {frames:?}"));
    assert_eq!(
        g.error_code(),
        Some(want),
        "GOAWAY {:?} ({})",
        g.error_code(),
        g.debug_data()
    );
}

// ---------------------------------------------------------------------------------------------
// Resets and floods.

/// CVE-2023-44487: streams opened and reset at once, a thousand in one write. More than
/// `h2_max_pending_resets` reset before the gateway took them up end the connection with
/// ENHANCE_YOUR_CALM; the upstream sees next to none of them.
#[test]
fn rapid_reset_ends_the_connection_with_enhance_your_calm() {
    let b = Backend::ok("hi");
    let gw = gateway(&b.url(), "h2_max_pending_resets = 20", "");
    let mut c = H2Conn::handshake(gw.addr, &[]);
    let mut burst = Vec::new();
    for i in 0..1000 {
        let id = 1 + 2 * i;
        burst.extend_from_slice(&headers(id, &request_block("GET", "/r", &[]), true));
        burst.extend_from_slice(&rst_stream(id, code::CANCEL));
    }
    // The gateway may close before it has read all of it.
    let _ = c.send(&burst);
    let frames = c.until_closed(WAIT);
    assert_goaway(&frames, code::ENHANCE_YOUR_CALM);
    assert!(
        b.heads().len() < 50,
        "{} of 1000 reset streams reached the upstream",
        b.heads().len()
    );
    still_serves(&gw);
}

/// CVE-2024-27316 and kin: a header block that never ends, in empty CONTINUATION frames, and
/// one whose CONTINUATIONs carry ever more header bytes. Both end the connection long before
/// the flood does; nothing reaches the upstream.
#[test]
fn continuation_floods_end_the_connection() {
    let b = Backend::ok("hi");
    let gw = gateway(&b.url(), "", "");
    let before = rss_kib(&gw);

    // 1. 100,000 empty CONTINUATION frames after a HEADERS without END_HEADERS.
    let mut c = H2Conn::handshake(gw.addr, &[]);
    let mut flood = frame(ty::HEADERS, 0, 1, &request_block("GET", "/c", &[]));
    for _ in 0..100_000 {
        flood.extend_from_slice(&frame(ty::CONTINUATION, 0, 1, &[]));
    }
    let _ = c.send(&flood);
    let frames = c.until_closed(WAIT);
    assert_goaway(&frames, code::ENHANCE_YOUR_CALM);

    // 2. 1,000 CONTINUATION frames of 16 KiB of header bytes each (16 MB in all).
    let mut c = H2Conn::handshake(gw.addr, &[]);
    let _ = c.send(&frame(ty::HEADERS, 0, 1, &request_block("GET", "/c", &[])));
    let mut field = Vec::new();
    literal(&mut field, "x-pad", &vec![b'a'; 16_000]);
    let piece = frame(ty::CONTINUATION, 0, 1, &field);
    for _ in 0..1000 {
        if c.send(&piece).is_err() {
            break;
        }
    }
    let frames = c.until_closed(WAIT);
    assert_goaway(&frames, code::ENHANCE_YOUR_CALM);

    assert!(b.heads().is_empty(), "{:?}", b.heads());
    let grown = rss_kib(&gw).saturating_sub(before);
    assert!(grown < 16 * 1024, "the gateway grew by {grown} KiB");
    still_serves(&gw);
}

/// An HPACK bomb: one 4 KB field put in the dynamic table, then referenced 4,000 times by a
/// one-byte index: an 8 KB block that decodes to 16 MB. The decoded size is counted as it
/// grows: past four times `h2_max_header_list_size` the connection ends.
#[test]
fn an_hpack_bomb_ends_the_connection() {
    let b = Backend::ok("hi");
    let gw = gateway(&b.url(), "", "");
    let before = rss_kib(&gw);
    let mut c = H2Conn::handshake(gw.addr, &[]);
    let mut block = request_block("GET", "/bomb", &[]);
    literal_indexed(&mut block, "x-bomb", &[b'a'; 4000]);
    for _ in 0..4000 {
        indexed(&mut block, 62);
    }
    assert!(block.len() < 16_384, "one frame: {}", block.len());
    let _ = c.send(&headers(1, &block, true));
    let frames = c.until_closed(WAIT);
    assert_goaway(&frames, code::ENHANCE_YOUR_CALM);
    assert!(b.heads().is_empty(), "{:?}", b.heads());
    let grown = rss_kib(&gw).saturating_sub(before);
    assert!(grown < 8 * 1024, "the gateway grew by {grown} KiB");
    still_serves(&gw);
}

/// A header list over `h2_max_header_list_size` (but under four times it) is answered 431 on
/// its stream; the connection goes on, and a list within the limit is served.
#[test]
fn a_header_list_over_the_limit_gets_431_and_the_connection_goes_on() {
    let b = Backend::ok("hi");
    let gw = gateway(&b.url(), "h2_max_header_list_size = \"4KiB\"", "");
    let mut c = H2Conn::handshake(gw.addr, &[]);
    let big = "b".repeat(6000);
    let block = request_block("GET", "/big", &[("x-big", &big)]);
    c.send(&headers(1, &block, true)).unwrap();
    let r = c.finish(1, true).response();
    assert_eq!(r.status, 431, "{r:?}");
    let fits = "f".repeat(3000);
    c.send(&headers(
        3,
        &request_block("GET", "/fits", &[("x-fits", &fits)]),
        true,
    ))
    .unwrap();
    let r = c.finish(3, true).response();
    assert_eq!(r.status, 200, "{r:?}");
    let heads = b.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(heads[0].starts_with("GET /fits "), "{heads:?}");
}

/// SETTINGS and PING floods from a client that reads none of the answers: each needs an
/// answer (an ACK, a PONG), and the gateway reads no further frame until it could queue the
/// previous answer, so it stops reading once the client's receive buffer is full. The flood
/// stalls, memory stays flat, and other clients are served meanwhile.
#[test]
fn settings_and_ping_floods_are_bounded_by_backpressure() {
    let b = Backend::ok("hi");
    let gw = gateway(&b.url(), "idle_timeout = \"60s\"", "");
    let before = rss_kib(&gw);
    let ping = h2raw::ping(*b"floodfld");
    let settings = h2raw::settings(&[(setting::INITIAL_WINDOW_SIZE, 65_535)]);
    for (what, one) in [("PING", ping), ("SETTINGS", settings)] {
        let mut c = H2Conn::handshake(gw.addr, &[]);
        // A write that makes no progress for 2 s: the gateway has stopped reading.
        c.s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 4096).collect();
        const FLOOD: usize = 256 << 20;
        let mut sent = 0;
        while sent < FLOOD {
            match c.s.write(&chunk) {
                Ok(n) => sent += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => panic!("{what} flood: {e}"),
            }
        }
        assert!(
            sent < 64 << 20,
            "{what} flood: the gateway took {} MiB without its answers being read",
            sent >> 20
        );
        still_serves(&gw);
        let grown = rss_kib(&gw).saturating_sub(before);
        assert!(
            grown < 16 * 1024,
            "{what} flood: the gateway grew by {grown} KiB"
        );
    }
}

/// More streams than `h2_max_concurrent_streams` at once: the extra ones are refused with
/// REFUSED_STREAM (safe to retry); the upstream sees only those within the limit.
#[test]
fn streams_beyond_the_concurrency_limit_are_refused() {
    let gate = Gate::default();
    let held = gate.clone();
    let b = Backend::start(move |_, _| {
        held.wait();
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
    });
    let gw = gateway(&b.url(), "h2_max_concurrent_streams = 3", "");
    let mut c = H2Conn::handshake(gw.addr, &[]);
    let mut burst = Vec::new();
    for id in [1, 3, 5, 7, 9] {
        burst.extend_from_slice(&headers(id, &request_block("GET", "/held", &[]), true));
    }
    c.send(&burst).unwrap();
    let mut refused = Vec::new();
    while refused.len() < 2 {
        let f = c.frame().expect("a frame");
        if f.is(ty::RST_STREAM) {
            assert_eq!(f.error_code(), Some(code::REFUSED_STREAM), "{f:?}");
            refused.push(f.stream);
        }
        assert!(!f.is(ty::GOAWAY), "{f:?}");
    }
    refused.sort_unstable();
    assert_eq!(refused, [7, 9]);
    wait_until("three requests upstream", WAIT, || b.heads().len() == 3);
    gate.open();
    for id in [1, 3, 5] {
        let r = c.finish(id, true).response();
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "stream {id}");
    }
    assert_eq!(b.heads().len(), 3);
}

/// CVE-2025-8671 ("MadeYouReset"): a client that makes the gateway reset stream after stream
/// (here with a malformed header) loses the connection after `h2_max_error_resets`.
#[test]
fn streams_reset_for_client_errors_are_bounded() {
    let b = Backend::ok("hi");
    let gw = gateway(&b.url(), "h2_max_error_resets = 5", "");
    let mut c = H2Conn::handshake(gw.addr, &[]);
    let mut burst = Vec::new();
    for i in 0..20 {
        let block = request_block("GET", "/bad", &[("connection", "close")]);
        burst.extend_from_slice(&headers(1 + 2 * i, &block, true));
    }
    let _ = c.send(&burst);
    let frames = c.until_closed(WAIT);
    let resets = frames.iter().filter(|f| f.is(ty::RST_STREAM)).count();
    assert!(resets <= 5, "{resets} resets before the GOAWAY");
    assert_goaway(&frames, code::ENHANCE_YOUR_CALM);
    assert!(b.heads().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Malformed requests.

/// Connection-specific fields (RFC 9113 §8.2.2) make a request malformed: each stream is
/// reset with PROTOCOL_ERROR (`te: trailers` alone is allowed). An upper-case field name
/// (§8.2.1) ends the connection. None of them reaches the upstream.
#[test]
fn connection_specific_and_uppercase_fields_are_refused() {
    let b = Backend::ok("hi");
    let gw = gateway(&b.url(), "", "");
    let mut c = H2Conn::handshake(gw.addr, &[]);
    let bad = [
        ("connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "h2c"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("te", "gzip"),
    ];
    for (i, field) in bad.iter().enumerate() {
        let id = 1 + 2 * i as u32;
        c.send(&headers(id, &request_block("GET", "/bad", &[*field]), true))
            .unwrap();
        match c.finish(id, true) {
            Ended::Reset(code::PROTOCOL_ERROR) => {}
            other => panic!("{field:?}: {other:?}"),
        }
    }
    let r = c.get(13, "/plain");
    assert_eq!(r.response().status, 200);
    c.send(&headers(
        15,
        &request_block("GET", "/te-trailers", &[("te", "trailers")]),
        true,
    ))
    .unwrap();
    assert_eq!(c.finish(15, true).response().status, 200);

    let mut c = H2Conn::handshake(gw.addr, &[]);
    c.send(&headers(
        1,
        &request_block("GET", "/upper", &[("X-Upper", "1")]),
        true,
    ))
    .unwrap();
    match c.finish(1, true) {
        Ended::GoAway(code::PROTOCOL_ERROR, _) => {}
        other => panic!("upper-case name: {other:?}"),
    }
    let paths: Vec<String> = b.heads().iter().map(|h| first_line(h)).collect();
    assert_eq!(
        paths,
        ["GET /plain HTTP/1.1", "GET /te-trailers HTTP/1.1"],
        "only the well-formed requests reach the upstream"
    );
}

fn first_line(head: &str) -> String {
    head.lines().next().unwrap_or_default().to_owned()
}

/// Missing, repeated, misplaced or unknown pseudo-header fields (RFC 9113 §8.3) make a request
/// malformed: the stream is reset or answered 400, and the upstream never sees it.
#[test]
fn missing_or_duplicated_pseudo_headers_are_refused() {
    let b = Backend::ok("hi");
    let gw = gateway(&b.url(), "", "");
    let m = (":method", "GET");
    let s = (":scheme", "http");
    let a = (":authority", "x");
    let p = (":path", "/p");
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no :method", vec![s, a, p]),
        ("no :scheme", vec![m, a, p]),
        ("no :path", vec![m, s, a]),
        ("no :path, no :authority", vec![m, s]),
        ("empty :path", vec![m, s, a, (":path", "")]),
        ("two :path", vec![m, s, a, p, (":path", "/q")]),
        ("two :method", vec![m, (":method", "POST"), s, a, p]),
        ("pseudo after a field", vec![m, s, a, ("x-a", "1"), p]),
        ("unknown pseudo", vec![m, s, a, p, (":foo", "1")]),
        ("a :status", vec![m, s, a, p, (":status", "200")]),
    ];
    for (what, fields) in cases {
        let mut c = H2Conn::handshake(gw.addr, &[]);
        c.send(&headers(1, &h2raw::block(&fields), true)).unwrap();
        match c.finish(1, true) {
            Ended::Reset(code::PROTOCOL_ERROR) | Ended::GoAway(code::PROTOCOL_ERROR, _) => {}
            // h2 lets this one through; the gateway refuses it.
            Ended::Response(r) if r.status == 400 && what == "no :path, no :authority" => {
                assert!(r.text().contains(":path"), "{}", r.text());
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    assert!(b.heads().is_empty(), "{:?}", b.heads());
}

/// `host` naming another authority than `:authority` (RFC 9113 §8.3.1), or two `host`
/// fields: 400, never forwarded. The same authority in another case is served.
#[test]
fn an_authority_that_differs_from_host_is_refused() {
    let b = Backend::ok("hi");
    let gw = gateway(&b.url(), "", "");
    let mut c = H2Conn::handshake(gw.addr, &[]);
    let send = |c: &mut H2Conn, id: u32, fields: &[(&str, &str)]| {
        let mut all = vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "a.example"),
            (":path", "/h"),
        ];
        all.extend_from_slice(fields);
        c.send(&headers(id, &h2raw::block(&all), true)).unwrap();
        c.finish(id, true).response()
    };
    let r = send(&mut c, 1, &[("host", "b.example")]);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.text().contains("host"), "{}", r.text());
    let r = send(&mut c, 3, &[("host", "a.example"), ("host", "a.example")]);
    assert_eq!(r.status, 400, "{r:?}");
    let r = send(&mut c, 5, &[("host", "A.Example")]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = send(&mut c, 7, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(b.heads().len(), 2, "{:?}", b.heads());
}

// ---------------------------------------------------------------------------------------------
// Bodies.

/// A body shorter than its `content-length` (RFC 9113 §8.1.1) is malformed: the stream is
/// reset and the upstream never gets a whole request.
#[test]
fn a_body_shorter_than_its_content_length_never_reaches_the_upstream_whole() {
    let b = Backend::ok("hi");
    let gw = gateway(&b.url(), "", "");
    let mut c = H2Conn::handshake(gw.addr, &[]);
    let block = request_block("POST", "/short", &[("content-length", "10")]);
    c.send(&headers(1, &block, false)).unwrap();
    c.send(&data(1, b"abc", true)).unwrap();
    match c.finish(1, true) {
        Ended::Reset(code::PROTOCOL_ERROR) => {}
        other => panic!("{other:?}"),
    }
    // The upstream saw the head at most, then the connection's end.
    if !b.heads().is_empty() {
        let r = wait_for("the upstream's request to end", WAIT, || {
            b.received().first().cloned()
        });
        assert!(!r.complete, "{r:?}");
    }
}

/// A body longer than its `content-length`: the excess is a protocol error, and the upstream
/// must not get a whole request before the client's stream has ended. The declared length is
/// held back until the end of the stream is seen, so the upstream has the head and nothing
/// more when the excess arrives, and the request is cut off there.
#[test]
fn a_body_longer_than_its_content_length_never_reaches_the_upstream_whole() {
    let b = Backend::ok("hi");
    let gw = gateway(&b.url(), "", "");
    let mut c = H2Conn::handshake(gw.addr, &[]);
    let block = request_block("POST", "/long", &[("content-length", "5")]);
    c.send(&headers(1, &block, false)).unwrap();
    c.send(&data(1, b"hello", false)).unwrap();
    wait_until("the request head upstream", WAIT, || !b.heads().is_empty());
    c.send(&data(1, b"x", true)).unwrap();
    match c.finish(1, true) {
        Ended::Reset(code::PROTOCOL_ERROR) => {}
        other => panic!("{other:?}"),
    }
    let r = wait_for("the upstream's request to end", WAIT, || {
        b.received().first().cloned()
    });
    assert!(!r.complete, "the upstream got a whole request: {r:?}");
}

/// A request body that stops arriving gets 408 after the route's `timeout`, as over HTTP/1.1,
/// and the upstream connection that was waiting for it is closed.
#[test]
fn a_stalled_request_body_gets_408_after_the_route_timeout() {
    let b = Backend::ok("hi");
    let gw = gateway(&b.url(), "", "timeout = \"1s\"");
    let mut c = H2Conn::handshake(gw.addr, &[]);
    let block = request_block("POST", "/slow", &[("content-length", "100")]);
    c.send(&headers(1, &block, false)).unwrap();
    c.send(&data(1, &[b'a'; 10], false)).unwrap();
    let start = Instant::now();
    let r = c.finish(1, true).response();
    let took = start.elapsed();
    assert_eq!(r.status, 408, "{r:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    let got = wait_for("the upstream's request to end", WAIT, || {
        b.received().first().cloned()
    });
    assert!(!got.complete, "{got:?}");
}

// ---------------------------------------------------------------------------------------------
// Timers.

/// A client whose flow-control window never opens (SETTINGS_INITIAL_WINDOW_SIZE 0) takes no
/// byte of a large response: its stream is reset (CANCEL) after `idle_timeout`, as an HTTP/1.1
/// client that reads nothing is cut off, and the upstream connection feeding it is closed.
/// Then the connection, with no stream left, is closed after `idle_timeout`.
#[test]
fn a_window_that_never_opens_is_reset_after_idle_timeout() {
    let big = vec![b'z'; 16 << 20];
    let b = Backend::start(move |_, _| {
        let mut r =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", big.len()).into_bytes();
        r.extend_from_slice(&big);
        r
    });
    let gw = gateway(&b.url(), "idle_timeout = \"1s\"", "");
    let mut c = H2Conn::handshake(gw.addr, &[(setting::INITIAL_WINDOW_SIZE, 0)]);
    c.send(&headers(1, &request_block("GET", "/big", &[]), true))
        .unwrap();
    let start = Instant::now();
    let mut status = None;
    let reset = loop {
        let f = c.frame().expect("a frame before the reset");
        match f.ty {
            ty::HEADERS => status = f.status(),
            ty::DATA => panic!("data through a closed window: {f:?}"),
            ty::RST_STREAM => break f,
            ty::GOAWAY => panic!("{f:?}"),
            _ => {}
        }
    };
    let took = start.elapsed();
    assert_eq!(status, Some(200));
    assert_eq!(reset.error_code(), Some(code::CANCEL), "{reset:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "reset after {took:?}"
    );
    wait_until("the upstream connection to be closed", WAIT, || {
        b.write_errors() == 1
    });
    let start = Instant::now();
    let frames = c.until_closed(WAIT);
    let took = start.elapsed();
    assert_goaway(&frames, code::NO_ERROR);
    assert!(took < Duration::from_secs(4), "closed after {took:?}");
}

/// An h2 connection with no open stream is closed (GOAWAY, then the close) after
/// `idle_timeout`, even though its client keeps sending PINGs and answering the gateway's.
#[test]
fn an_idle_connection_is_closed_after_idle_timeout_despite_pings() {
    let b = Backend::ok("hi");
    let gw = gateway(&b.url(), "idle_timeout = \"1s\"", "");
    let mut c = H2Conn::handshake(gw.addr, &[]);
    assert_eq!(c.get(1, "/once").response().status, 200);
    let start = Instant::now();
    // A PING whenever 200 ms pass without a frame from the gateway.
    c.s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut frames = Vec::new();
    loop {
        assert!(start.elapsed() < WAIT, "still open; frames: {frames:?}");
        match c.frame() {
            Ok(f) => {
                if f.is(ty::PING) && !f.has(flag::ACK) {
                    let mut d = [0u8; 8];
                    d.copy_from_slice(&f.payload);
                    c.send(&frame(ty::PING, flag::ACK, 0, &d)).unwrap();
                }
                frames.push(f);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if c.send(&h2raw::ping(*b"stillup!")).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    assert_goaway(&frames, code::NO_ERROR);
    assert!(
        frames.iter().any(|f| f.is(ty::PING) && f.has(flag::ACK)),
        "the client's PINGs were answered: {frames:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// h2c over HTTP/1.1.

/// h2c smuggling: `Upgrade: h2c` over HTTP/1.1 is never acted on (no 101) and never forwarded:
/// the upstream sees neither `Upgrade` nor `HTTP2-Settings` (nor the `Connection` naming them),
/// with or without that `Connection` header.
#[test]
fn an_h2c_upgrade_over_http1_is_not_forwarded() {
    let b = Backend::ok("hi");
    let gw = gateway(&b.url(), "", "");
    let with_connection: &[(&str, &str)] = &[
        ("Connection", "Upgrade, HTTP2-Settings"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
    ];
    let bare: &[(&str, &str)] = &[
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
    ];
    for (i, fields) in [with_connection, bare].into_iter().enumerate() {
        let path = format!("/upgrade/{i}");
        let r = request(gw.addr, "GET", &path, fields, b"").unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let head = wait_for("the request upstream", WAIT, || {
            b.heads().into_iter().find(|h| h.contains(&path))
        });
        let lower = head.to_ascii_lowercase();
        for name in ["upgrade:", "http2-settings:", "connection: upgrade"] {
            assert!(
                !lower.contains(name),
                "{name} reached the upstream:\n{head}"
            );
        }
    }
}

/// A client that opens its windows wide and then reads nothing, on many streams of large
/// responses (a slow-read attack): what the gateway buffers for it is bounded per stream by
/// `h2_max_send_buffer_size` (the upstream is read no further), not by the client's window.
#[test]
fn a_client_that_reads_nothing_costs_at_most_the_send_buffer_per_stream() {
    const STREAMS: u32 = 16;
    let big = std::sync::Arc::new(vec![b'z'; 8 << 20]);
    let b = Backend::start(move |_, _| {
        let mut r =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", big.len()).into_bytes();
        r.extend_from_slice(&big);
        r
    });
    let gw = gateway(&b.url(), "idle_timeout = \"60s\"", "");
    still_serves(&gw);
    let before = rss_kib(&gw);
    let max = (1u32 << 31) - 1;
    let mut c = H2Conn::handshake(gw.addr, &[(setting::INITIAL_WINDOW_SIZE, max)]);
    let mut burst = h2raw::window_update(0, max - 65_535);
    for i in 0..STREAMS {
        burst.extend_from_slice(&headers(
            1 + 2 * i,
            &request_block("GET", "/big", &[]),
            true,
        ));
    }
    c.send(&burst).unwrap();
    wait_until("every stream upstream", WAIT, || {
        let big = b
            .heads()
            .iter()
            .filter(|h| h.starts_with("GET /big "))
            .count();
        big == STREAMS as usize
    });
    // Memory grows while the buffers fill, then stays: wait until it has grown and the last
    // ten readings (half a second or more) agree.
    let mut readings: Vec<u64> = Vec::new();
    wait_until("the gateway's memory to grow and settle", WAIT, || {
        readings.push(rss_kib(&gw));
        let last = &readings[readings.len().saturating_sub(10)..];
        let (lo, hi) = (last.iter().min().unwrap(), last.iter().max().unwrap());
        last.len() == 10 && hi - lo < 256 && *lo > before + 512
    });
    let last = *readings.last().unwrap();
    let grown = last.saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "{STREAMS} unread streams cost {grown} KiB"
    );
}
