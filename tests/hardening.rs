//! Hostile input, end to end (issue "Hardening II"): framing RFC 9112 calls invalid is refused
//! with 400 and the connection closed; an upstream's faulty framing is not relayed as is nor
//! pooled. Each test sends what an attacker or a broken upstream would, over real sockets,
//! and checks both the answer and what reached the upstream.
#![allow(clippy::disallowed_methods)] // real time: socket timeouts

use std::io::{BufReader, Write};
use std::time::Duration;

use aegis_testkit::{
    Gateway, ScriptedUpstream, Then, connect_raw, expect_closed, lossy, raw_exchange, read_response,
};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A gateway with one public route `/` to `target`.
fn gateway(target: &str) -> Gateway {
    Gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\npath = \"/\"\ntargets = [{target:?}]\n"
        ),
        &[("RUST_LOG", "warn")],
    )
}

/// An upstream that answers every request `200 ok` and keeps the connection.
fn ok_upstream() -> ScriptedUpstream {
    ScriptedUpstream::start(|_| {
        Then::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
    })
}

/// Sends `bytes` on a new connection, reads one response, then checks the gateway closes.
fn refused_and_closed(gw: &Gateway, bytes: &[u8]) -> aegis_testkit::Response {
    let s = connect_raw(gw.addr, TIMEOUT);
    let mut w = s.try_clone().unwrap();
    let _ = w.write_all(bytes);
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false).expect("an answer");
    assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
    expect_closed(&mut r, true);
    resp
}

#[test]
fn invalid_chunked_bodies_get_400_and_the_close() {
    let up = ok_upstream();
    let gw = gateway(&up.url());
    let head = "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    for body in [
        // Bare LF in the size line, after the data, in the last chunk, in a trailer.
        &b"2\nab\r\n0\r\n\r\n"[..],
        b"2\r\nab\n0\r\n\r\n",
        b"2\r\nab\r\n0\n\r\n",
        b"2\r\nab\r\n0\r\nX-T: 1\n\r\n",
        // Whitespace after the size with no extension; an extension with a bad byte.
        b"2 \r\nab\r\n0\r\n\r\n",
        b"2;a b\r\nab\r\n0\r\n\r\n",
        b"2;a=\"x\ry\"\r\nab\r\n0\r\n\r\n",
        // A trailer line that is not `name: value`.
        b"2\r\nab\r\n0\r\nnot a field\r\n\r\n",
    ] {
        let mut req = head.as_bytes().to_vec();
        req.extend_from_slice(body);
        let r = refused_and_closed(&gw, &req);
        assert_eq!(r.status, 400, "{:?}: {r:?}", lossy(body));
    }
    // The same body, well formed, goes through (the route works).
    let r = raw_exchange(
        gw.addr,
        format!("{head}2\r\nab\r\n0\r\n\r\n").as_bytes(),
        false,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn two_host_headers_or_a_host_unlike_the_target_get_400_and_the_close() {
    let up = ok_upstream();
    let gw = gateway(&up.url());
    for req in [
        "GET /a HTTP/1.1\r\nHost: one\r\nHost: two\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: one\r\nHost: one\r\n\r\n",
        "GET http://one/a HTTP/1.1\r\nHost: two\r\n\r\n",
    ] {
        let r = refused_and_closed(&gw, req.as_bytes());
        assert_eq!(r.status, 400, "{req:?}: {r:?}");
        assert!(lossy(&r.body).contains("Host"), "{}", lossy(&r.body));
    }
    assert!(up.received().is_empty(), "{:?}", up.received());
}

/// A response with both Transfer-Encoding and Content-Length is relayed by its coding and
/// its connection is not used again.
#[test]
fn an_upstream_response_with_both_framings_is_not_pooled() {
    let up = ScriptedUpstream::start(|_| {
        Then::Answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n\
              3\r\nabc\r\n0\r\n\r\n"
                .to_vec(),
        )
    });
    let gw = gateway(&up.url());
    let s = connect_raw(gw.addr, TIMEOUT);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for _ in 0..2 {
        w.write_all(b"GET /both HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!(
            (resp.status, &resp.body[..]),
            (200, &b"abc"[..]),
            "{resp:?}"
        );
        assert_eq!(resp.header("content-length"), None, "{resp:?}");
    }
    // Two requests over one client connection (one worker, one pool): two upstream
    // connections, since the first was not pooled.
    assert_eq!(up.connections(), 2, "{:?}", up.received());
}

#[test]
fn an_http10_response_with_transfer_encoding_is_a_502() {
    let up = ScriptedUpstream::start(|_| {
        Then::AnswerAndClose(
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
        )
    });
    let gw = gateway(&up.url());
    let r = aegis_testkit::get(gw.addr, "/ten", &[]);
    assert_eq!(r.status, 502, "{r:?}");
    assert!(lossy(&r.body).contains("HTTP/1.0"), "{}", lossy(&r.body));
}

/// No Upgrade is ever forwarded, so a 101 is the upstream's confusion (or a smuggling
/// attempt): 502, and the connection is closed, not left to carry raw bytes.
#[test]
fn an_unsolicited_101_is_a_502_and_its_connection_is_closed() {
    let up = ScriptedUpstream::start(|_| {
        Then::Answer(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
                .to_vec(),
        )
    });
    let gw = gateway(&up.url());
    let r = aegis_testkit::get(
        gw.addr,
        "/ws",
        &[("Connection", "Upgrade"), ("Upgrade", "websocket")],
    );
    assert_eq!(r.status, 502, "{r:?}");
    assert!(lossy(&r.body).contains("101"), "{}", lossy(&r.body));
    let seen = up.received();
    assert_eq!(seen.len(), 1);
    let head = seen[0].head.to_ascii_lowercase();
    assert!(
        !head.contains("upgrade"),
        "the upgrade was forwarded: {head}"
    );
    // The next request goes on a new upstream connection.
    let r = aegis_testkit::get(gw.addr, "/ws", &[]);
    assert_eq!(r.status, 502);
    assert_eq!(up.connections(), 2);
}

#[test]
fn a_204_never_carries_content_length_to_the_client() {
    let up = ScriptedUpstream::start(|_| {
        Then::Answer(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n".to_vec())
    });
    let gw = gateway(&up.url());
    let r = raw_exchange(gw.addr, b"GET /nc HTTP/1.1\r\nHost: x\r\n\r\n", true).unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.header("x-a"), Some("1"), "{r:?}");
    assert_eq!(r.header("content-length"), None, "{r:?}");
    assert_eq!(r.header("transfer-encoding"), None, "{r:?}");
}

/// `Transfer-Encoding: gzip, chunked`: the body stays gzip-coded, so the client is told.
#[test]
fn a_transfer_coding_besides_chunked_stays_visible_to_the_client() {
    let up = ScriptedUpstream::start(|_| {
        Then::Answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n"
                .to_vec(),
        )
    });
    let gw = gateway(&up.url());
    let r = raw_exchange(gw.addr, b"GET /gz HTTP/1.1\r\nHost: x\r\n\r\n", false).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("transfer-encoding"),
        Some("gzip, chunked"),
        "{r:?}"
    );
    assert_eq!(r.body, b"\x1f\x8b\x08\x00");
    // An HTTP/1.0 client cannot be told: 502 rather than a body it would misread.
    let r = raw_exchange(gw.addr, b"GET /gz HTTP/1.0\r\n\r\n", false).unwrap();
    assert_eq!(r.status, 502, "{r:?}");
}

/// The attacker's paths with a public `/` and an auth route `/secure`: each is refused with
/// 400 and nothing reaches the upstream; header names with `_` never reach it either.
#[test]
fn ambiguous_paths_and_underscore_headers_never_reach_the_upstream() {
    let up = ok_upstream();
    let gw = Gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[auth]\nsecret = \"s\"\n\n\
             [[routes]]\npath = \"/secure\"\ntargets = [{u:?}]\nauth = true\n\n\
             [[routes]]\npath = \"/\"\ntargets = [{u:?}]\n",
            u = up.url()
        ),
        &[("RUST_LOG", "warn")],
    );
    for path in [
        "/secure;x=1/y",
        "/SECURE/x",
        "/secure%2fx",
        "/a/..%2fsecure/x",
        "/secure\\x",
        "/secure%00/x",
        "/secure%20/x",
        "/a/..;/secure/x",
        "/a/%252e%252e/secure/x",
        "/a/%c0%ae%c0%ae/secure/x",
    ] {
        let r = raw_exchange(
            gw.addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            false,
        )
        .unwrap();
        assert_eq!(r.status, 400, "{path}: {r:?}");
    }
    assert!(up.received().is_empty(), "{:?}", up.received());
    let r = aegis_testkit::get(gw.addr, "/public", &[("X_User_Id", "admin"), ("X-Ok", "1")]);
    assert_eq!(r.status, 200, "{r:?}");
    let seen = up.received();
    let head = seen[0].head.to_ascii_lowercase();
    assert!(head.contains("x-ok: 1"), "{head}");
    assert!(!head.contains("x_user_id"), "{head}");
}
