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

/// An upgrade the gateway does not tunnel (only `server.upgrades`, WebSocket by default) is
/// never forwarded, so a 101 is the upstream's confusion (or a smuggling attempt): 502, and
/// the connection is closed, not left to carry raw bytes.
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
        &[("Connection", "Upgrade"), ("Upgrade", "h2c")],
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

/// A gateway with one route `/` to `target`, breaker opening at the first failure, and
/// `extra` lines for the config (top level).
fn gateway_with(target: &str, extra: &str) -> Gateway {
    Gateway::start(
        &format!(
            "{extra}\n[server]\nlisten = \"127.0.0.1:0\"\n\n[breaker]\nfailure_threshold = 1\n\n\
             [[routes]]\npath = \"/\"\ntargets = [{target:?}]\n"
        ),
        &[("RUST_LOG", "warn")],
    )
}

/// The upstream answers the first request of connection 0 and closes it on the second
/// without a byte (a keep-alive race). What it received is the proof.
fn racing_upstream() -> ScriptedUpstream {
    ScriptedUpstream::start(|r| {
        if r.conn == 0 && r.nth_on_conn == 1 {
            Then::Close
        } else {
            Then::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
        }
    })
}

/// Two requests on one client connection (one worker, one pool): their statuses.
fn two_on_one_connection(gw: &Gateway, first: &str, second: &str) -> (u16, u16) {
    let s = connect_raw(gw.addr, TIMEOUT);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(first.as_bytes()).unwrap();
    let a = read_response(&mut r, false).unwrap().status;
    w.write_all(second.as_bytes()).unwrap();
    let b = read_response(&mut r, false).unwrap().status;
    (a, b)
}

/// RFC 9110 §9.2.2: a POST whose pooled connection the upstream closed under it is not sent
/// again (the upstream may have acted on it); a GET is, on a fresh connection. Neither counts
/// against the breaker: the race is not the target's fault.
#[test]
fn a_post_is_never_replayed_on_a_stale_connection_and_a_get_is() {
    let up = racing_upstream();
    let gw = gateway_with(&up.url(), "");
    let post = "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    let (a, b) = two_on_one_connection(&gw, post, post);
    assert_eq!((a, b), (200, 502));
    let posts = up
        .received()
        .iter()
        .filter(|r| r.head.starts_with("POST"))
        .count();
    assert_eq!(
        posts,
        2,
        "the second POST was sent once, not replayed: {:?}",
        up.received()
    );
    let stats = gw.stats();
    assert_eq!(stats[0]["failures"], 0, "{stats:?}");
    assert_eq!(stats[0]["state"], "CLOSED", "{stats:?}");

    let up = racing_upstream();
    let gw = gateway_with(&up.url(), "");
    let get = "GET /g HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(two_on_one_connection(&gw, get, get), (200, 200));
    let seen: Vec<(usize, usize)> = up
        .received()
        .iter()
        .map(|r| (r.conn, r.nth_on_conn))
        .collect();
    assert_eq!(
        seen,
        [(0, 0), (0, 1), (1, 0)],
        "resent once, on a fresh connection"
    );
}

/// Idle upstream connections: one the upstream closes is closed by the gateway too (no
/// CLOSE_WAIT left), and every one is closed after `[upstream] idle_timeout`.
#[test]
fn idle_upstream_connections_are_reaped() {
    // The upstream answers keep-alive, then closes right away (its own idle timeout, short).
    let up = ScriptedUpstream::start(|_| {
        Then::AnswerAndClose(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
    });
    let port = up.addr.port();
    let gw = gateway_with(&up.url(), "[upstream]\nidle_timeout = \"60s\"");
    assert_eq!(aegis_testkit::get(gw.addr, "/a", &[]).status, 200);
    aegis_testkit::wait_until(
        "the gateway to close the connection the upstream closed",
        Duration::from_secs(5),
        || {
            let s = aegis_testkit::tcp_states_to(port);
            !s.contains(&aegis_testkit::TCP_CLOSE_WAIT)
                && !s.contains(&aegis_testkit::TCP_ESTABLISHED)
        },
    );

    // An upstream that keeps its connections: the gateway closes them after idle_timeout.
    let up = ok_upstream();
    let port = up.addr.port();
    let gw = gateway_with(&up.url(), "[upstream]\nidle_timeout = \"500ms\"");
    assert_eq!(aegis_testkit::get(gw.addr, "/a", &[]).status, 200);
    assert!(aegis_testkit::tcp_states_to(port).contains(&aegis_testkit::TCP_ESTABLISHED));
    aegis_testkit::wait_until(
        "the idle connection to close",
        Duration::from_secs(5),
        || !aegis_testkit::tcp_states_to(port).contains(&aegis_testkit::TCP_ESTABLISHED),
    );
}

/// A reload that removes a target closes the pooled connections to it.
#[test]
fn a_reload_closes_connections_to_removed_targets() {
    let old = ok_upstream();
    let new = ok_upstream();
    let config = |t: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nidle_timeout = \"60s\"\n\
             [[routes]]\npath = \"/\"\ntargets = [{t:?}]\n"
        )
    };
    let gw = Gateway::start(&config(&old.url()), &[("RUST_LOG", "warn")]);
    assert_eq!(aegis_testkit::get(gw.addr, "/a", &[]).status, 200);
    let port = old.addr.port();
    assert!(aegis_testkit::tcp_states_to(port).contains(&aegis_testkit::TCP_ESTABLISHED));
    gw.write_config(&config(&new.url()));
    gw.signal("HUP");
    aegis_testkit::wait_until("the reload to apply", Duration::from_secs(5), || {
        aegis_testkit::get(gw.addr, "/b", &[]).status == 200 && !new.received().is_empty()
    });
    aegis_testkit::wait_until(
        "the old target's connection to close",
        Duration::from_secs(5),
        || !aegis_testkit::tcp_states_to(port).contains(&aegis_testkit::TCP_ESTABLISHED),
    );
}

/// Runs `n` GETs of `path` at once, each on its own connection: their statuses, sorted.
fn concurrent(gw: &Gateway, path: &str, n: usize) -> Vec<u16> {
    let addr = gw.addr;
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let path = path.to_owned();
            std::thread::spawn(move || aegis_testkit::get(addr, &path, &[]).status)
        })
        .collect();
    let mut got: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    got.sort_unstable();
    got
}

/// `[upstream] max_requests_per_target`: past the bound requests wait in line up to
/// `pending_timeout`, past `max_pending_per_target` they get 503 at once; none counts against
/// the breaker.
#[test]
fn requests_in_flight_to_a_target_are_bounded() {
    let up = aegis_testkit::Upstream::start("svc");
    let gw = gateway_with(
        &up.url(),
        "[upstream]\nmax_requests_per_target = 2\nmax_pending_per_target = 1\npending_timeout = \"300ms\"",
    );
    assert_eq!(
        concurrent(&gw, "/slow?sleep_ms=1500", 4),
        [200, 200, 503, 503]
    );
    let stats = gw.stats();
    assert_eq!(
        (stats[0]["failures"].as_u64(), stats[0]["state"].as_str()),
        (Some(0), Some("CLOSED"))
    );
    // The slots came back.
    assert_eq!(concurrent(&gw, "/quick", 2), [200, 200]);
}

/// `server.max_requests_per_ip`: one client cannot hold more requests in flight than that.
#[test]
fn requests_in_flight_per_client_ip_are_bounded() {
    let up = aegis_testkit::Upstream::start("svc");
    let gw = Gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_requests_per_ip = 2\n\n\
             [[routes]]\npath = \"/\"\ntargets = [{:?}]\n",
            up.url()
        ),
        &[("RUST_LOG", "warn")],
    );
    assert_eq!(concurrent(&gw, "/slow?sleep_ms=1500", 3), [200, 200, 429]);
    assert_eq!(concurrent(&gw, "/quick", 2), [200, 200]);
}

/// `server.max_connections_per_ip` and `server.max_connections`: a connection past a cap
/// gets a 503 with `Retry-After` and the close, before it sends anything.
#[test]
fn client_connections_are_capped_with_a_clear_answer() {
    let up = ok_upstream();
    for (cap, tag) in [
        ("max_connections_per_ip = 2", "client"),
        ("max_connections = 2", "connections"),
    ] {
        let gw = Gateway::start(
            &format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n{cap}\n\n[[routes]]\npath = \"/\"\ntargets = [{:?}]\n",
                up.url()
            ),
            &[("RUST_LOG", "warn")],
        );
        let kept: Vec<_> = (0..2).map(|_| connect_raw(gw.addr, TIMEOUT)).collect();
        // Both are served (and so counted) before the third arrives.
        for s in &kept {
            let mut w = s.try_clone().unwrap();
            w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            assert_eq!(read_response(&mut r, false).unwrap().status, 200);
        }
        let third = connect_raw(gw.addr, TIMEOUT);
        let mut r = BufReader::new(third);
        let resp = read_response(&mut r, false).expect("an answer without a request");
        assert_eq!(resp.status, 503, "{resp:?}");
        assert_eq!(resp.header("retry-after"), Some("1"));
        assert!(lossy(&resp.body).contains(tag), "{}", lossy(&resp.body));
        expect_closed(&mut r, true);
        drop(kept);
        aegis_testkit::wait_until("the cap to free", Duration::from_secs(5), || {
            aegis_testkit::get(gw.addr, "/again", &[]).status == 200
        });
    }
}

/// A gateway out of file descriptors cannot connect upstream: it answers 503 and logs it as
/// its own trouble; the target's breaker does not count it (with `failure_threshold = 1` it
/// would open).
#[test]
fn running_out_of_file_descriptors_is_not_an_upstream_failure() {
    let up = ok_upstream();
    const NOFILE: usize = 64;
    let gw = Gateway::start_with(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[breaker]\nfailure_threshold = 1\n\n\
             [[routes]]\npath = \"/\"\ntargets = [{:?}]\n",
            up.url()
        ),
        &[
            ("RUST_LOG", "warn"),
            ("AEGIS_TEST_NOFILE", &NOFILE.to_string()),
        ],
        &["--workers", "1"],
    )
    .unwrap();
    // Descriptors below the limit (one inherited above it does not take a slot).
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", gw.pid()))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
            .filter(|&fd| fd < NOFILE)
            .count()
    };
    // Take every descriptor the gateway has left with idle client connections.
    let mut clients = Vec::new();
    for _ in 0..NOFILE {
        if fds() >= NOFILE {
            break;
        }
        let before = fds();
        clients.push(connect_raw(gw.addr, TIMEOUT));
        aegis_testkit::wait_until(
            "the connection to be accepted",
            Duration::from_secs(5),
            || fds() > before,
        );
    }
    assert_eq!(fds(), NOFILE);
    let mut w = clients[0].try_clone().unwrap();
    w.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let resp = read_response(&mut BufReader::new(clients[0].try_clone().unwrap()), false).unwrap();
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(resp.header("retry-after"), Some("1"));
    drop(clients);
    let stats = aegis_testkit::wait_for("a free descriptor", Duration::from_secs(5), || {
        aegis_testkit::raw_exchange(
            gw.addr,
            b"GET /gateway/stats HTTP/1.1\r\nHost: x\r\n\r\n",
            false,
        )
        .ok()
        .filter(|r| r.status == 200)
    });
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    assert_eq!(stats[0]["failures"], 0, "{stats}");
    assert_eq!(stats[0]["state"], "CLOSED", "{stats}");
    gw.wait_logged("cannot reach an upstream");
}
