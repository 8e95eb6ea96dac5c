//! The gateway with a real redis-server as its rate-limit store: Redis killed mid-traffic under
//! `on_store_error = "allow"` and `"deny"`, recovery when it returns on the same port, the
//! outage logged once, and two gateways sharing one Redis enforcing one global limit.
#![allow(clippy::disallowed_methods)] // real time: deadlines and Unix windows

use std::time::Duration;

use aegis_testkit::{Gateway, RedisServer, Upstream, wait_for_window_room, wait_until};

fn config(upstream: &Upstream, redis: &RedisServer, on_error: &str, max: u64) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[rate_limit]
store = "redis"
redis_url = "{url}"
key_prefix = "e2e:"
on_store_error = "{on_error}"
command_timeout = "200ms"

[[routes]]
path = "/limited"
targets = [{target:?}]
rate_limit = {{ max = {max}, window = "60s" }}

[[routes]]
path = "/gcra"
targets = [{target:?}]
rate_limit = {{ max = {max}, window = "60s", algorithm = "gcra" }}
"#,
        url = redis.url(),
        target = upstream.url(),
    )
}

fn store_health(gw: &Gateway) -> (u16, serde_json::Value) {
    let r = gw.health();
    let body = r.json();
    (r.status, body["store"].clone())
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn redis_outage_with_allow_admits_marks_and_recovers() {
    let up = Upstream::start("svc");
    let mut redis = RedisServer::start();
    let gw = Gateway::start(
        &config(&up, &redis, "allow", 100_000),
        &[("RUST_LOG", "info")],
    );
    wait_until("the store to be healthy", Duration::from_secs(10), || {
        store_health(&gw).1["healthy"] == true
    });
    let (status, store) = store_health(&gw);
    assert_eq!((status, &store["kind"]), (200, &serde_json::json!("redis")));

    let r = gw.get("/limited", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("ratelimit-limit").is_some(), "{r:?}");
    assert!(r.header("x-aegis-ratelimit").is_none());

    // Kill Redis mid-traffic: every request still succeeds, and once the outage is noticed
    // responses say the limit was not checked.
    redis.stop();
    let mut degraded = 0;
    wait_until(
        "requests marked unavailable",
        Duration::from_secs(10),
        || {
            let r = gw.get("/limited", &[]);
            assert_eq!(r.status, 200, "allow must admit during the outage: {r:?}");
            if r.header("x-aegis-ratelimit") == Some("unavailable") {
                degraded += 1;
            }
            degraded >= 3
        },
    );
    for _ in 0..30 {
        let r = gw.get("/gcra", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-aegis-ratelimit"), Some("unavailable"), "{r:?}");
    }
    wait_until(
        "health to show the store unhealthy",
        Duration::from_secs(5),
        || store_health(&gw).1["healthy"] == false,
    );
    assert_eq!(store_health(&gw).0, 200, "allow: health stays 200");
    let metrics = aegis_testkit::get(gw.admin_addr(), "/gateway/metrics", &[]).text();
    assert!(metrics.contains("aegis_store_errors_total"), "{metrics}");

    // Redis returns on the same port: checks resume by themselves.
    redis.restart();
    wait_until("rate limiting to resume", Duration::from_secs(10), || {
        let r = gw.get("/limited", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        r.header("ratelimit-limit").is_some() && r.header("x-aegis-ratelimit").is_none()
    });
    wait_until(
        "health to show the store healthy",
        Duration::from_secs(5),
        || store_health(&gw).1["healthy"] == true,
    );

    // One warning when the outage began and one line when it ended, not one per request.
    let log = gw.stderr();
    assert_eq!(count(&log, "redis store unavailable"), 1, "{log}");
    assert_eq!(count(&log, "redis store available again"), 1, "{log}");
    // Nor is any other line about Redis repeated per request (30+ requests saw the outage).
    let redis_lines = log
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("redis"))
        .count();
    assert!(
        redis_lines <= 6,
        "{redis_lines} log lines mention redis:\n{log}"
    );
}

#[test]
fn redis_outage_with_deny_answers_503_and_recovers() {
    let up = Upstream::start("svc");
    let mut redis = RedisServer::start();
    let gw = Gateway::start(&config(&up, &redis, "deny", 100_000), &[]);
    wait_until("the store to be healthy", Duration::from_secs(10), || {
        store_health(&gw).1["healthy"] == true
    });
    assert_eq!(gw.get("/limited", &[]).status, 200);

    redis.stop();
    wait_until("requests to be refused", Duration::from_secs(10), || {
        gw.get("/limited", &[]).status == 503
    });
    for _ in 0..20 {
        let r = gw.get("/limited", &[]);
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.json()["error"], "rate_limit_unavailable");
        // Never the store's own words (hosts, OS errors): those are for the log.
        assert_eq!(
            r.json()["message"],
            "the rate-limit store is unavailable; retry shortly",
            "{}",
            r.text()
        );
        assert!(r.header("retry-after").is_some(), "{r:?}");
    }
    wait_until("health to be 503", Duration::from_secs(5), || {
        let (status, store) = store_health(&gw);
        status == 503 && store["healthy"] == false
    });

    redis.restart();
    wait_until("service to resume", Duration::from_secs(10), || {
        gw.get("/limited", &[]).status == 200
    });
    let (status, store) = store_health(&gw);
    assert_eq!((status, &store["healthy"]), (200, &serde_json::json!(true)));
}

#[test]
fn two_gateways_share_one_global_limit() {
    let up = Upstream::start("svc");
    let redis = RedisServer::start();
    let text = config(&up, &redis, "deny", 20);
    let a = Gateway::start(&text, &[]);
    let b = Gateway::start(&text, &[]);
    for gw in [&a, &b] {
        wait_until("the store to be healthy", Duration::from_secs(10), || {
            store_health(gw).1["healthy"] == true
        });
    }

    // Fixed window: 20 per 60 s for this client across both gateways.
    wait_for_window_room(Duration::from_secs(60), Duration::from_secs(10));
    let mut ok = [0, 0];
    let mut limited = 0;
    for i in 0..40 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = gw.get("/limited", &[]);
        match r.status {
            200 => ok[i % 2] += 1,
            429 => {
                limited += 1;
                assert_eq!(r.header("ratelimit-remaining"), Some("0"), "{r:?}");
                assert!(r.header("retry-after").is_some(), "{r:?}");
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok[0] + ok[1], 20, "admitted per gateway {ok:?}");
    assert!(ok[0] > 0 && ok[1] > 0, "{ok:?}");
    assert_eq!(limited, 20);

    // GCRA: a burst of 20 then one every 3 s; the test takes far less than 3 s per request,
    // so at most one more is admitted per 3 s elapsed.
    let started = std::time::Instant::now();
    let mut admitted = 0u64;
    for i in 0..40 {
        let gw = if i % 2 == 0 { &a } else { &b };
        if gw.get("/gcra", &[]).status == 200 {
            admitted += 1;
        }
    }
    let extra = started.elapsed().as_secs() / 3 + 1;
    assert!(
        (20..=20 + extra).contains(&admitted),
        "gcra admitted {admitted} of 40 across two gateways"
    );
}
