//! The upstream connection pool: connections an upstream closes after answering are not
//! reused (no request fails because of one), and a pooled connection survives between
//! requests, bodiless answers (HEAD) included.
#![allow(clippy::disallowed_methods)] // real time

use std::io::Write;

use aegis_testkit::{Gateway, RawUpstream, Upstream, one_route_config, request};

#[test]
fn connections_closed_by_the_upstream_are_not_reused() {
    // Answers as if it kept the connection alive (no `Connection: close`), then closes it.
    let up = RawUpstream::start(|_head, s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    });
    let gw = Gateway::start(&one_route_config(&up.url(), ""), &[]);
    for i in 0..20 {
        let r = gw.get("/x", &[]);
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        // No pause: the next request may find the connection closed at checkout, or be sent
        // on it just as it closes (then, a GET, it is sent again on a fresh one): either way
        // it does not fail.
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(up.requests.try_iter().count(), 20);
}

#[test]
fn a_pooled_connection_serves_many_requests() {
    let up = Upstream::start("svc");
    let gw = Gateway::start(&one_route_config(&up.url(), ""), &[]);
    // The upstream reports the client port it saw: one pooled connection per worker thread at
    // most, far fewer than requests.
    let mut ports = std::collections::BTreeSet::new();
    for _ in 0..30 {
        ports.insert(upstream_port(&gw));
    }
    assert!(
        ports.len() <= 4,
        "30 requests used {} upstream connections",
        ports.len()
    );
}

#[test]
fn a_connection_that_answered_a_head_request_is_pooled_again() {
    let up = Upstream::start("svc");
    let gw = Gateway::start(&one_route_config(&up.url(), ""), &[]);
    // HEAD then GET, in turn: were a HEAD answer's connection closed rather than pooled, each
    // GET after one would need a new connection.
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..20 {
        let head = request(gw.addr, "HEAD", "/echo", &[], b"").expect("HEAD");
        assert_eq!(head.status, 200, "HEAD {i}: {head:?}");
        assert!(head.body.is_empty(), "HEAD {i}: {head:?}");
        ports.insert(upstream_port(&gw));
    }
    assert!(
        ports.len() <= 4,
        "20 HEAD and 20 GET requests used {} upstream connections",
        ports.len()
    );
}

/// `GET /echo` through the gateway: the client port the upstream saw (one per upstream
/// connection).
fn upstream_port(gw: &Gateway) -> u64 {
    let r = gw.get("/echo", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["peerPort"].as_u64().expect("peerPort")
}
