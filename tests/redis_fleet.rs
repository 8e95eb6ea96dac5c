//! Three gateway processes share one counter store, a single Redis and then a Redis Cluster,
//! and 1,000 requests in flight at once against a limit of 100 admit exactly 100 (a fixed
//! window, and GCRA with a burst of 100), however the requests land on the gateways and their
//! workers: each gateway coalesces its workers' concurrent requests into few calls, and the
//! store's atomic step admits exactly the first 100 of all of them.
#![allow(clippy::disallowed_methods)] // real time: Unix windows

use std::net::SocketAddr;
use std::time::Duration;

use aegis_testkit::{
    Gateway, RedisCluster, RedisServer, Upstream, concurrent_gets, wait_for_window_room, wait_until,
};

fn config(upstream: &Upstream, store: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
# Every test connection comes from 127.0.0.1: lift the per-IP caps above the 1,000.
max_connections_per_ip = 5000
max_requests_per_ip = 5000

[rate_limit]
store = "redis"
{store}
key_prefix = "fleet:"
# A store error would be a 503: the test allows none.
on_store_error = "deny"
command_timeout = "3s"

[[routes]]
path = "/fixed"
targets = [{target:?}]
rate_limit = {{ max = 100, window = "60s" }}

[[routes]]
path = "/gcra"
targets = [{target:?}]
# One more every 36 s after the burst of 100: none within the test.
rate_limit = {{ max = 100, window = "1h", algorithm = "gcra" }}
"#,
        target = upstream.url(),
    )
}

fn metric(gw: &Gateway, name: &str) -> u64 {
    let text = aegis_testkit::get(gw.admin_addr(), "/gateway/metrics", &[]).text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}"))
}

fn three_gateways_admit_exactly_100(store: &str) {
    let up = Upstream::start("svc");
    let text = config(&up, store);
    let gateways: Vec<Gateway> = (0..3).map(|_| Gateway::start(&text, &[])).collect();
    for gw in &gateways {
        wait_until("the store to be healthy", Duration::from_secs(20), || {
            gw.health().json()["store"]["healthy"] == true
        });
    }
    let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.addr).collect();
    wait_for_window_room(Duration::from_secs(60), Duration::from_secs(10));
    for path in ["/fixed", "/gcra"] {
        let responses = concurrent_gets(&addrs, path, &[], 1000);
        let ok = responses.iter().filter(|r| r.status == 200).count();
        let limited: Vec<_> = responses.iter().filter(|r| r.status == 429).collect();
        assert_eq!(
            (ok, limited.len()),
            (100, 900),
            "{path}: statuses other than 200/429: {:?}",
            responses
                .iter()
                .filter(|r| r.status != 200 && r.status != 429)
                .map(|r| (r.status, r.text()))
                .take(3)
                .collect::<Vec<_>>()
        );
        assert!(limited.iter().all(|r| r.header("retry-after").is_some()));
    }
    // Every gateway took part: each made Redis calls of its own.
    for gw in &gateways {
        assert!(metric(gw, "aegis_store_calls_total") > 0);
    }
}

#[test]
fn three_gateways_on_one_redis_admit_exactly_100_of_1000() {
    let redis = RedisServer::start();
    three_gateways_admit_exactly_100(&format!("redis_url = {:?}", redis.url()));
}

#[test]
fn three_gateways_on_a_cluster_admit_exactly_100_of_1000() {
    let cluster = RedisCluster::start(3, 0);
    three_gateways_admit_exactly_100(&format!("redis_cluster_nodes = {:?}", cluster.urls()));
}
