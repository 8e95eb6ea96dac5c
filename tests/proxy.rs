//! Proxy behaviour over real sockets: identity and client-IP headers a client cannot spoof,
//! path normalisation before routing and auth, hop-by-hop stripping both ways, upstream
//! failures (502/504) and request size limits (413/414/431).
#![allow(clippy::disallowed_methods)] // real time: deadlines and Unix windows

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use aegis_testkit::{
    Gateway, RawUpstream, Response, Upstream, bearer, dead_target, mint_token, raw_exchange,
    read_response, request, wait_for_window_room,
};
use serde_json::{Value, json};

const SECRET: &str = "proxy-test-secret";

struct Setup {
    gw: Gateway,
    _up: Upstream,
    _raw: RawUpstream,
}

/// A raw upstream that answers every request with hop-by-hop headers it must not leak.
fn hop_upstream() -> RawUpstream {
    RawUpstream::start(|_head, s| {
        let body = b"{\"service\":\"raw\"}";
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\n\
             Content-Type: application/json\r\n\
             Connection: close, x-resp-hop\r\n\
             X-Resp-Hop: secret\r\n\
             Keep-Alive: timeout=5\r\n\
             Proxy-Connection: keep-alive\r\n\
             Upgrade: foo/1\r\n\
             X-Kept: yes\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(body);
    })
}

fn setup() -> Setup {
    let up = Upstream::start("svc");
    let raw = hop_upstream();
    let u = format!("{:?}", up.url());
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_header_size = "4KiB"
max_uri_length = 1024

[auth]
secret = "{SECRET}"

[[routes]]
path = "/users"
targets = [{u}]
auth = true

[[routes]]
path = "/public"
targets = [{u}]

[[routes]]
path = "/limited"
targets = [{u}]
rate_limit = {{ max = 3, window = "60s" }}

[[routes]]
path = "/dead"
targets = [{dead:?}]

[[routes]]
path = "/slow"
targets = [{u}]
timeout = "300ms"

[[routes]]
path = "/upload"
targets = [{u}]
max_body_size = "1KiB"

[[routes]]
path = "/hop"
targets = [{hop:?}]
"#,
        dead = dead_target(),
        hop = raw.url(),
    );
    Setup {
        gw: Gateway::start(&config, &[]),
        _up: up,
        _raw: raw,
    }
}

fn token() -> String {
    bearer(&mint_token(SECRET, json!({"userId": "test-123"})))
}

/// The request headers the upstream's `/echo` saw: lower-case name → values.
fn echoed(r: &Response) -> serde_json::Map<String, Value> {
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["headers"]
        .as_object()
        .unwrap_or_else(|| panic!("no headers in {}", r.text()))
        .clone()
}

fn values(h: &serde_json::Map<String, Value>, name: &str) -> Vec<String> {
    h.get(name)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn client_cannot_spoof_identity_or_rate_limit_key() {
    let s = setup();
    let gw = &s.gw;

    // On a public route a client-sent x-user-id never reaches the upstream.
    let r = gw.get("/public", &[("x-user-id", "admin")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["userId"], Value::Null, "{}", r.text());

    // On an authenticated route only the verified identity does.
    let r = gw.get(
        "/users/echo",
        &[("Authorization", &token()), ("X-User-Id", "admin")],
    );
    assert_eq!(values(&echoed(&r), "x-user-id"), ["test-123"]);

    // X-Forwarded-For: the peer is appended; Proto and Host are set.
    let r = gw.get(
        "/public/echo",
        &[("X-Forwarded-For", "1.2.3.4"), ("Host", "api.example.test")],
    );
    let h = echoed(&r);
    let xff = values(&h, "x-forwarded-for").join(", ");
    assert!(xff.ends_with("127.0.0.1"), "x-forwarded-for {xff:?}");
    assert_eq!(values(&h, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&h, "x-forwarded-host"), ["api.example.test"]);
    assert_eq!(values(&h, "x-request-id").len(), 1);

    // A new X-Forwarded-For on every request does not buy a new rate-limit budget.
    wait_for_window_room(Duration::from_secs(60), Duration::from_secs(5));
    let answers: Vec<_> = (0..6)
        .map(|i| {
            let xff = format!("10.9.8.{i}");
            gw.get("/limited", &[("X-Forwarded-For", &xff)])
        })
        .collect();
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    // A 429 says why and when to come back.
    for r in &answers[3..] {
        assert_eq!(r.header("ratelimit-remaining"), Some("0"), "{r:?}");
        assert!(r.header("ratelimit-limit").is_some(), "{r:?}");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{r:?}");
        assert_eq!(r.json()["error"], "rate_limited");
    }
}

#[test]
fn paths_are_normalised_before_routing_and_auth() {
    let s = setup();
    let gw = &s.gw;

    let r = gw.get("/usersX", &[("Authorization", &token())]);
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.json()["error"], "not_found");

    // `/public/../users` is `/users`: it needs a token, and the upstream sees `/users`.
    for path in [
        "/public/../users",
        "/public/%2e%2e/users",
        "//users",
        "/%75sers",
    ] {
        let r = gw.get(path, &[]);
        assert_eq!(r.status, 401, "{path}: {r:?}");
        let r = gw.get(path, &[("Authorization", &token())]);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.json()["path"], "/users", "{path}");
        assert_eq!(r.json()["userId"], "test-123");
    }
    // The query passes unchanged.
    let r = gw.get("/public/a?x=1&y=%20", &[]);
    assert_eq!(r.json()["path"], "/public/a?x=1&y=%20");

    let r = gw.get("/public/%zz", &[]);
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"], "bad_request");
}

#[test]
fn hop_by_hop_headers_are_stripped_both_ways() {
    let s = setup();
    let gw = &s.gw;

    let r = gw.get(
        "/public/echo",
        &[
            ("Connection", "keep-alive, x-hop"),
            ("X-Hop", "must-not-pass"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "x-trail"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("Proxy-Connection", "keep-alive"),
            ("X-End-To-End", "kept"),
        ],
    );
    let h = echoed(&r);
    for name in [
        "x-hop",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(!h.contains_key(name), "{name} reached the upstream: {h:?}");
    }
    for v in values(&h, "connection") {
        assert!(!v.to_ascii_lowercase().contains("x-hop"), "connection: {v}");
    }
    assert_eq!(values(&h, "x-end-to-end"), ["kept"]);

    // Response direction: the upstream's hop-by-hop headers stop at the gateway.
    let r = gw.get("/hop", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-kept"), Some("yes"));
    for name in ["x-resp-hop", "keep-alive", "proxy-connection", "upgrade"] {
        assert!(r.header(name).is_none(), "{name} reached the client: {r:?}");
    }
    assert_eq!(r.json()["service"], "raw");
}

#[test]
fn upstream_failures_are_502_and_504() {
    let s = setup();
    let gw = &s.gw;

    // Nothing listens on the target: 502 naming it as a bad gateway.
    let r = gw.get("/dead", &[]);
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.json()["error"], "bad_gateway");
    assert!(r.header("x-request-id").is_some());

    // The upstream answers after the route's 300ms timeout: 504, promptly.
    let t = Instant::now();
    let r = gw.get("/slow?sleep_ms=5000", &[]);
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.json()["error"], "gateway_timeout");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "504 took {:?}",
        t.elapsed()
    );
    // Within the timeout it passes.
    let r = gw.get("/slow?sleep_ms=10", &[]);
    assert_eq!(r.status, 200, "{r:?}");

    // An upstream's own status passes through unchanged.
    let r = gw.get("/public?status=418", &[]);
    assert_eq!(r.status, 418, "{r:?}");
}

#[test]
fn size_limits_are_413_414_431() {
    let s = setup();
    let gw = &s.gw;

    // 431: one header over the 4KiB limit.
    let big = "a".repeat(8 * 1024);
    let r = request(gw.addr, "GET", "/public", &[("X-Big", &big)], b"")
        .expect("a 431 response, not a dropped connection");
    assert_eq!(r.status, 431, "{r:?}");

    // 414: a URI over 1024 bytes.
    let path = format!("/public/{}", "b".repeat(2000));
    let r = request(gw.addr, "GET", &path, &[], b"").expect("a 414 response");
    assert_eq!(r.status, 414, "{r:?}");

    // Under the body limit: streamed to the upstream, which counts it.
    let r = request(gw.addr, "POST", "/upload", &[], &[b'x'; 1000]).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["bodyBytes"], 1000);

    // 413 on a declared Content-Length over the limit, before any body is sent.
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n",
        gw.addr
    );
    let r = raw_exchange(gw.addr, head.as_bytes(), false).expect("a 413 response");
    assert_eq!(r.status, 413, "{r:?}");

    // 413 on a chunked body that grows past the limit while it streams.
    let mut conn = TcpStream::connect(gw.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "POST /upload HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        gw.addr
    )
    .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        // 4 × 512 bytes: the limit (1KiB) is crossed by the third chunk.
        for _ in 0..4 {
            if writer
                .write_all(format!("200\r\n{}\r\n", "y".repeat(512)).as_bytes())
                .is_err()
            {
                return;
            }
        }
        let _ = writer.write_all(b"0\r\n\r\n");
    });
    let r = read_response(&mut conn, false).expect("a 413 response to a chunked body");
    let _ = feeder.join();
    assert_eq!(r.status, 413, "{r:?}");
}
