//! The gateway on a real Redis Cluster (`redis_cluster_nodes`): counters of many clients spread
//! over the masters by their hash tags, each limit exact; a master killed mid-traffic shows
//! the configured `on_store_error` during the gap, and once its replica is promoted the limits
//! are exact again.
#![allow(clippy::disallowed_methods)] // real time: Unix windows

use std::thread;
use std::time::Duration;

use aegis_testkit::{
    Gateway, RedisCluster, Upstream, concurrent_gets, wait_for_window_room, wait_until,
};

const PREFIX: &str = "cl:";

fn config(upstream: &Upstream, cluster: &RedisCluster, on_error: &str, max: u64) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_requests_per_ip = 5000

[rate_limit]
store = "redis"
redis_cluster_nodes = {nodes:?}
key_prefix = "{PREFIX}"
on_store_error = "{on_error}"
command_timeout = "500ms"

[[routes]]
path = "/limited"
targets = [{target:?}]
# An hour-long fixed window: the test (a minute at most) never crosses its edge.
rate_limit = {{ max = {max}, window = "1h", key = "header:x-client" }}

[[routes]]
path = "/gcra"
targets = [{target:?}]
rate_limit = {{ max = {max}, window = "1h", algorithm = "gcra", key = "header:x-client" }}
"#,
        nodes = cluster.urls(),
        target = upstream.url(),
    )
}

fn healthy(gw: &Gateway) -> bool {
    gw.health().json()["store"]["healthy"] == true
}

/// The hash tag of a client's counter on a route (what the cluster hashes).
fn tag(route: &str, client: &str) -> String {
    format!("{{{route}|header:{client}}}")
}

/// `n` requests at once from `client`: (admitted, limited).
fn burst(gw: &Gateway, path: &str, client: &str, n: usize) -> (usize, usize) {
    let rs = concurrent_gets(&[gw.addr], path, &[("x-client", client)], n);
    let ok = rs.iter().filter(|r| r.status == 200).count();
    let limited = rs.iter().filter(|r| r.status == 429).count();
    assert_eq!(
        ok + limited,
        n,
        "{path} {client}: {:?}",
        rs.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    (ok, limited)
}

/// A GCRA burst never gets more than `max`. It may get one fewer: each request is decided at
/// its arrival time, and two workers' requests can reach Redis out of that order; one decided
/// after a later-stamped one finds a little less credit than it would have in order (README,
/// Rate-limit algorithms).
fn gcra_within(admitted: usize, max: usize, client: &str) {
    assert!(
        admitted <= max && admitted + 2 >= max,
        "/gcra {client}: {admitted} admitted, limit {max}"
    );
}

#[test]
fn limits_are_exact_on_every_master() {
    let cluster = RedisCluster::start(3, 0);
    let up = Upstream::start("svc");
    let gw = Gateway::start(&config(&up, &cluster, "deny", 5), &[]);
    wait_until("the store to be healthy", Duration::from_secs(20), || {
        healthy(&gw)
    });
    wait_for_window_room(Duration::from_secs(60), Duration::from_secs(10));
    let clients: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
    for c in &clients {
        assert_eq!(burst(&gw, "/limited", c, 12), (5, 7), "/limited {c}");
        gcra_within(burst(&gw, "/gcra", c, 12).0, 5, c);
    }
    // The counters live on all three masters, each under its hash tag's slot: a fixed
    // window's key (which names its window) hashes with its counter.
    let masters: Vec<u16> = clients
        .iter()
        .map(|c| cluster.master_of_slot(cluster.keyslot(&tag("/limited", c))))
        .collect();
    for m in cluster.live_ports() {
        assert!(
            masters.contains(&m),
            "no counter on the master on {m}: {masters:?}"
        );
    }
    let keys = cluster
        .cli(masters[0], &["KEYS", &format!("{PREFIX}*")])
        .unwrap();
    let key = keys
        .lines()
        .find(|k| k.contains(&tag("/limited", &clients[0])))
        .unwrap_or_else(|| panic!("no key of c0 on its master: {keys}"));
    let hour = aegis_testkit::unix_millis() / 3_600_000 * 3_600_000;
    assert!(key.ends_with(&format!(":{hour}")), "{key}");
    assert_eq!(
        cluster.keyslot(key),
        cluster.keyslot(&tag("/limited", &clients[0]))
    );
}

/// A client name whose counter on `route` lives on the master on `port`.
fn client_on(cluster: &RedisCluster, route: &str, port: u16, not: &[&str]) -> String {
    (0..1000)
        .map(|i| format!("k{i}"))
        .find(|c| {
            !not.contains(&c.as_str())
                && cluster.master_of_slot(cluster.keyslot(&tag(route, c))) == port
        })
        .expect("a client on that master")
}

#[test]
fn a_failover_shows_on_store_error_then_exact_limits() {
    let mut cluster = RedisCluster::start(3, 1);
    let up = Upstream::start("svc");
    let gw = Gateway::start(&config(&up, &cluster, "deny", 10), &[]);
    wait_until("the store to be healthy", Duration::from_secs(20), || {
        healthy(&gw)
    });
    wait_for_window_room(Duration::from_secs(60), Duration::from_secs(20));

    let victim = cluster.master_of_slot(cluster.keyslot(&tag("/limited", "k0")));
    let replica = cluster.replica_of(victim);
    let before = client_on(&cluster, "/limited", victim, &[]);
    assert_eq!(gw.get("/limited", &[("x-client", &before)]).status, 200);

    // The master dies: requests get the configured answer (deny: 503), and health says so.
    cluster.kill(victim);
    wait_until(
        "requests refused during the gap",
        Duration::from_secs(30),
        || gw.get("/limited", &[("x-client", &before)]).status == 503,
    );
    let r = gw.get("/limited", &[("x-client", &before)]);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["error"], "rate_limit_unavailable");
    // Generous: with every test of the suite running beside it, the supervisor's PING of the
    // dead master can take a few rounds to fail.
    wait_until("health to say so", Duration::from_secs(30), || {
        !healthy(&gw)
    });
    // And it keeps saying so until a replica takes over: the supervisor's checks (one a
    // second) ask every master, so a cluster answering on its other masters is not Up.
    for _ in 0..12 {
        thread::sleep(Duration::from_millis(250));
        assert!(!healthy(&gw), "health says Up with a master dead");
    }

    // Its replica takes over: service resumes by itself, and limits are exact again, on the
    // promoted node's slots and on the others.
    cluster.failover(replica);
    wait_until(
        "the store to be healthy again",
        Duration::from_secs(30),
        || healthy(&gw),
    );
    wait_until(
        "requests to be served again",
        Duration::from_secs(10),
        || gw.get("/limited", &[("x-client", &before)]).status != 503,
    );
    let moved = client_on(&cluster, "/limited", replica, &[&before]);
    assert_eq!(
        cluster.master_of_slot(cluster.keyslot(&tag("/limited", &moved))),
        replica
    );
    let elsewhere = (0..1000)
        .map(|i| format!("e{i}"))
        .find(|c| cluster.master_of_slot(cluster.keyslot(&tag("/limited", c))) != replica)
        .unwrap();
    for c in [&moved, &elsewhere] {
        assert_eq!(burst(&gw, "/limited", c, 30), (10, 20), "/limited {c}");
        gcra_within(burst(&gw, "/gcra", c, 30).0, 10, c);
    }
    let log = gw.stderr();
    assert_eq!(log.matches("redis store unavailable").count(), 1, "{log}");
    assert_eq!(
        log.matches("redis store available again").count(),
        1,
        "{log}"
    );
}
