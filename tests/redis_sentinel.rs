//! `redis+sentinel://`: the gateway asks a Sentinel for the primary and follows its failovers.
//! A planned failover promotes the replica while the old primary lives on: the gateway moves
//! to the new primary as soon as the Sentinel names it (and a demoted primary's READONLY would
//! move it too); a crashed primary shows the configured
//! `on_store_error` until the Sentinel promotes the replica. Limits are exact before, between
//! and after, and a counter written before a failover is still there after it.
#![allow(clippy::disallowed_methods)] // real time: Unix windows

use std::process::Command;
use std::time::Duration;

use aegis_testkit::{Gateway, RedisSentinel, RedisServer, Upstream, concurrent_gets, wait_until};

fn config(upstream: &Upstream, url: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[rate_limit]
store = "redis"
redis_url = "{url}"
key_prefix = "sen:"
on_store_error = "deny"
command_timeout = "500ms"

[[routes]]
path = "/limited"
targets = [{target:?}]
# An hour-long fixed window: the test (a minute at most) never crosses its edge.
rate_limit = {{ max = 5, window = "1h", key = "header:x-client" }}
"#,
        target = upstream.url(),
    )
}

fn healthy(gw: &Gateway) -> bool {
    gw.health().json()["store"]["healthy"] == true
}

fn role(port: u16) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "ROLE"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn in_sync(replica: u16) -> bool {
    let out = Command::new("redis-cli")
        .args(["-p", &replica.to_string(), "INFO", "replication"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).contains("master_link_status:up")
}

/// The replication offset of the server on `port` (a replica's: how much of its primary's
/// stream it has applied).
fn offset(port: u16) -> Option<u64> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "replication"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The keys on the server on `port`.
fn keys(port: u16) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "KEYS", "sen:*"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// 8 requests of `client` at once: how many were admitted and refused.
fn burst(gw: &Gateway, client: &str) -> (usize, usize) {
    let rs = concurrent_gets(&[gw.addr], "/limited", &[("x-client", client)], 8);
    let count = |s| rs.iter().filter(|r| r.status == s).count();
    (count(200), count(429))
}

#[test]
fn sentinel_failovers_are_followed() {
    let mut a = RedisServer::start();
    let mut b = RedisServer::start_with(&[
        "--replicaof".into(),
        "127.0.0.1".into(),
        a.port().to_string(),
    ]);
    wait_until("the replica to sync", Duration::from_secs(20), || {
        in_sync(b.port())
    });
    let sentinel = RedisSentinel::start("aegis", a.port(), 1);
    let up = Upstream::start("svc");
    let gw = Gateway::start(&config(&up, &sentinel.url()), &[]);
    wait_until("the store to be healthy", Duration::from_secs(20), || {
        healthy(&gw)
    });
    assert_eq!(burst(&gw, "before"), (5, 3));

    // A planned failover: b is promoted; a lives on, still a primary until the Sentinel
    // demotes it. The gateway moves to b within about a second (its supervisor asks the
    // Sentinel who the primary is): new counters are written on b, not on a.
    sentinel.failover().expect("SENTINEL FAILOVER");
    wait_until("b to be the primary", Duration::from_secs(20), || {
        sentinel.primary_port() == b.port() && role(b.port()) == "master"
    });
    let mut probe = 0;
    wait_until("new counters written on b", Duration::from_secs(10), || {
        probe += 1;
        let client = format!("probe-{probe}");
        gw.get("/limited", &[("x-client", &client)]).status == 200
            && keys(b.port()).contains(&format!("|header:{client}}}"))
    });
    // The Sentinel demotes a when it next looks at it (up to 10 s); do it now, as it would.
    let demote = Command::new("redis-cli")
        .args([
            "-p",
            &a.port().to_string(),
            "REPLICAOF",
            "127.0.0.1",
            &b.port().to_string(),
        ])
        .output()
        .expect("redis-cli");
    assert!(demote.status.success());
    wait_until("a to be b's replica", Duration::from_secs(20), || {
        role(a.port()) == "slave" && in_sync(a.port())
    });
    assert_eq!(burst(&gw, "planned"), (5, 3));
    // The counter written on a, before the failover, came along.
    assert_eq!(gw.get("/limited", &[("x-client", "before")]).status, 429);

    // The primary crashes once a has every write (replication is asynchronous: a crash before
    // that loses the last counts, as the README says; not what this test is about).
    wait_until(
        "a to have applied all of b's writes",
        Duration::from_secs(10),
        || offset(a.port()).is_some() && offset(a.port()) == offset(b.port()),
    );
    // The primary crashes: deny answers 503 until the Sentinel promotes a again.
    b.stop();
    wait_until(
        "requests refused during the gap",
        Duration::from_secs(20),
        || gw.get("/limited", &[("x-client", "probe-2")]).status == 503,
    );
    assert!(!healthy(&gw));
    wait_until("the Sentinel to promote a", Duration::from_secs(30), || {
        // Once the Sentinel sees b down it may start the failover itself; asking again is
        // harmless (INPROG, or NOGOODSLAVE while a is still linked to b).
        let _ = sentinel.failover();
        sentinel.primary_port() == a.port() && role(a.port()) == "master"
    });
    wait_until(
        "the store to be healthy again",
        Duration::from_secs(20),
        || healthy(&gw),
    );
    assert_eq!(burst(&gw, "crashed"), (5, 3));
    assert_eq!(gw.get("/limited", &[("x-client", "planned")]).status, 429);
    let log = gw.stderr();
    assert!(log.contains("redis store available again"), "{log}");
    a.stop();
}
