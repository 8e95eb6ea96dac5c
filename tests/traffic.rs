//! Upstream traffic management, end to end (issue "Upstream traffic management"): retries on
//! another target under the retry rule and budget, active health checks, weighted and P2C
//! balancing. Upstreams are real servers in the test process that record what they received,
//! so that "not replayed" is counted, not assumed.
#![allow(clippy::disallowed_methods)] // real time: socket timeouts, health check intervals

use aegis_testkit::{Gateway, Received, ScriptedUpstream, Then, dead_target, request};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn ok() -> ScriptedUpstream {
    ScriptedUpstream::start(|_| Then::Answer(OK.to_vec()))
}

/// A gateway with one route `/` over `targets`, `route` lines added to it, `top` lines at the
/// top level. Logs at info (the access lines are checked).
fn gateway(targets: &[String], route: &str, top: &str) -> Gateway {
    let list: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    Gateway::start(
        &format!(
            "{top}\n[server]\nlisten = \"127.0.0.1:0\"\n\n[breaker]\nfailure_threshold = 1000\n\n\
             [[routes]]\npath = \"/\"\ntargets = [{}]\n{route}\n",
            list.join(", ")
        ),
        &[],
    )
}

fn count(seen: &[Received], start: &str) -> usize {
    seen.iter().filter(|r| r.head.starts_with(start)).count()
}

/// A target that resets every request after reading it (the worst case for a proxy: the
/// upstream may have acted on it) beside a healthy one: every GET succeeds through a retry;
/// no POST is ever sent twice.
#[test]
fn a_get_is_retried_after_a_reset_and_a_post_never_is() {
    let resets = ScriptedUpstream::start(|_| Then::Close);
    let good = ok();
    let gw = gateway(&[resets.url(), good.url()], "retries = 1", "");
    for i in 0..6 {
        let r = gw.get(&format!("/get/{i}"), &[]);
        assert_eq!(r.status, 200, "GET {i}: {r:?}");
    }
    assert!(
        count(&resets.received(), "GET") >= 2,
        "round robin sent some to the resetting target"
    );
    let mut failed = 0;
    for i in 0..6 {
        let r = request(gw.addr, "POST", &format!("/post/{i}"), &[], b"payload").unwrap();
        if r.status == 502 {
            failed += 1;
        } else {
            assert_eq!(r.status, 200, "{r:?}");
        }
    }
    let (bad, fine) = (resets.received(), good.received());
    assert_eq!(
        count(&bad, "POST") + count(&fine, "POST"),
        6,
        "each POST sent exactly once"
    );
    assert_eq!(
        failed,
        count(&bad, "POST"),
        "every POST the resetting target got failed there"
    );
    assert!(failed > 0);
    // Retries show in the access log and the metrics.
    gw.wait_logged("attempts=2");
    let metrics = gw.get("/gateway/metrics", &[]).text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("aegis_retries_total{route=\"/\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// A target that refuses connections: the request was never sent, so even a POST goes to
/// another target (with retries = 0).
#[test]
fn what_could_not_be_sent_goes_to_another_target_whatever_its_method() {
    let good = ok();
    let gw = gateway(&[dead_target(), good.url()], "", "");
    for i in 0..4 {
        let r = request(gw.addr, "POST", &format!("/p/{i}"), &[], b"x").unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(count(&good.received(), "POST"), 4);
}

/// 503 from one target: an idempotent request (a PUT, its body kept and sent again; a POST
/// with an Idempotency-Key when the route says so) is retried on the other; a plain POST is
/// answered with the 503.
#[test]
fn statuses_in_retry_on_are_retried_for_idempotent_requests_with_their_bodies() {
    let unavailable = ScriptedUpstream::start(|_| {
        Then::Answer(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec())
    });
    let good = ok();
    let gw = gateway(
        &[unavailable.url(), good.url()],
        "retries = 1\nretry_idempotency_key = true",
        "",
    );
    for i in 0..4 {
        let r = request(gw.addr, "PUT", &format!("/put/{i}"), &[], b"the body").unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let r = request(
            gw.addr,
            "POST",
            "/keyed",
            &[("Idempotency-Key", "k1")],
            b"k",
        )
        .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    for put in good.received().iter().filter(|r| r.head.starts_with("PUT")) {
        assert_eq!(put.body, b"the body", "the kept body is sent whole");
    }
    let mut statuses: Vec<u16> = (0..4)
        .map(|_| {
            request(gw.addr, "POST", "/plain", &[], b"p")
                .unwrap()
                .status
        })
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503, 503]);
}

/// With no budget (ratio 0, no floor), nothing is retried: a retry storm cannot start.
#[test]
fn an_empty_retry_budget_stops_retries() {
    let unavailable = ScriptedUpstream::start(|_| {
        Then::Answer(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec())
    });
    let good = ok();
    let gw = gateway(
        &[unavailable.url(), good.url()],
        "retries = 3",
        "[retry_budget]\nratio = 0.0\nmin_per_second = 0",
    );
    let mut statuses: Vec<u16> = (0..4)
        .map(|i| gw.get(&format!("/{i}"), &[]).status)
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503, 503]);
    assert_eq!(
        unavailable.received().len() + good.received().len(),
        4,
        "no try was repeated"
    );
}

/// A health-checked target that goes down is taken out of rotation by its checks before any
/// user request fails on it, and comes back when its checks pass again.
#[test]
fn a_target_failing_its_health_checks_is_skipped_before_users_see_errors() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let down = Arc::new(AtomicBool::new(false));
    let flag = down.clone();
    let flaky = ScriptedUpstream::start(move |_| {
        if flag.load(Ordering::SeqCst) {
            Then::AnswerAndClose(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec(),
            )
        } else {
            Then::Answer(OK.to_vec())
        }
    });
    let good = ok();
    let gw = gateway(
        &[flaky.url(), good.url()],
        "health_check = { path = \"/hc\", interval = \"200ms\", timeout = \"100ms\", unhealthy_after = 2, healthy_after = 2 }",
        "",
    );
    let healthy = |gw: &Gateway| -> Vec<bool> {
        gw.stats()
            .iter()
            .map(|s| s["healthy"].as_bool().unwrap())
            .collect()
    };
    aegis_testkit::wait_until(
        "probes of both targets",
        std::time::Duration::from_secs(5),
        || count(&flaky.received(), "GET /hc") >= 2 && count(&good.received(), "GET /hc") >= 2,
    );
    assert_eq!(healthy(&gw), [true, true]);
    down.store(true, Ordering::SeqCst);
    aegis_testkit::wait_until(
        "the checks to take it out",
        std::time::Duration::from_secs(5),
        || healthy(&gw) == [false, true],
    );
    let users_before = flaky
        .received()
        .iter()
        .filter(|r| !r.head.starts_with("GET /hc"))
        .count();
    for i in 0..20 {
        assert_eq!(gw.get(&format!("/u/{i}"), &[]).status, 200);
    }
    let users_after = flaky
        .received()
        .iter()
        .filter(|r| !r.head.starts_with("GET /hc"))
        .count();
    assert_eq!(
        users_before, users_after,
        "no user request went to the unhealthy target"
    );
    let metrics = gw.get("/gateway/metrics", &[]).text();
    assert!(
        metrics.contains(&format!(
            "aegis_target_healthy{{route=\"/\",target=\"{}\"}} 0",
            flaky.url()
        )),
        "{metrics}"
    );
    down.store(false, Ordering::SeqCst);
    aegis_testkit::wait_until(
        "the checks to bring it back",
        std::time::Duration::from_secs(5),
        || healthy(&gw) == [true, true],
    );
    for i in 0..4 {
        assert_eq!(gw.get(&format!("/v/{i}"), &[]).status, 200);
    }
    assert!(
        flaky
            .received()
            .iter()
            .any(|r| r.head.starts_with("GET /v/"))
    );
    gw.wait_logged("fails its health checks");
}

/// Weights within 5 % over 10,000 requests (3:1 here).
#[test]
fn weighted_targets_get_their_share() {
    let heavy = ok();
    let light = ok();
    let gw = Gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npath = \"/\"\n\
             targets = [{{ url = {:?}, weight = 3 }}, {:?}]\n",
            heavy.url(),
            light.url()
        ),
        &[("RUST_LOG", "warn")],
    );
    let s = aegis_testkit::connect_raw(gw.addr, std::time::Duration::from_secs(5));
    let mut w = s.try_clone().unwrap();
    let mut r = std::io::BufReader::new(s);
    for _ in 0..100 {
        // Pipelined in batches of 100: 10,000 requests in a few seconds.
        let batch = "GET /w HTTP/1.1\r\nHost: x\r\n\r\n".repeat(100);
        std::io::Write::write_all(&mut w, batch.as_bytes()).unwrap();
        for _ in 0..100 {
            assert_eq!(
                aegis_testkit::read_response(&mut r, false).unwrap().status,
                200
            );
        }
    }
    let (h, l) = (heavy.received().len() as f64, light.received().len() as f64);
    assert_eq!(h + l, 10_000.0);
    let share = h / (h + l);
    assert!(
        (share - 0.75).abs() <= 0.75 * 0.05,
        "heavy got {share:.3} of the requests"
    );
}

/// `balance = "p2c"`: of two targets, the one with fewer requests in flight gets the next;
/// a slow target holds more in flight, so the fast one gets most of the traffic.
#[test]
fn p2c_sends_more_to_the_target_with_fewer_requests_in_flight() {
    let slow = ScriptedUpstream::start(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        Then::Answer(OK.to_vec())
    });
    let fast = ok();
    let gw = gateway(&[slow.url(), fast.url()], "balance = \"p2c\"", "");
    let addr = gw.addr;
    let clients: Vec<_> = (0..8)
        .map(|c| {
            std::thread::spawn(move || {
                for i in 0..10 {
                    let r = aegis_testkit::get(addr, &format!("/p/{c}/{i}"), &[]);
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let (s, f) = (slow.received().len(), fast.received().len());
    assert_eq!(s + f, 80);
    assert!(f > 60, "the fast target got {f} of 80");
}

/// `balance = "hash"`: every request of a key (here the `x-user` header) goes to one target,
/// the keys spread over all targets, and a second gateway process sends each key to the same
/// target (no state is shared: the ranking is a function of the key and the target URLs).
/// When a target leaves (its health checks fail) only its keys move, and they come back with
/// it.
#[test]
fn hash_keeps_each_key_on_one_target_and_moves_only_a_lost_targets_keys() {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let named = |name: &'static str, down: Option<Arc<AtomicBool>>| {
        ScriptedUpstream::start(move |r| {
            let failing = down.as_ref().is_some_and(|d| d.load(Ordering::SeqCst));
            if failing && r.head.starts_with("GET /hc") {
                Then::Answer(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec(),
                )
            } else {
                Then::Answer(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{name}").into_bytes(),
                )
            }
        })
    };
    let down = Arc::new(AtomicBool::new(false));
    let ups = [
        named("a", None),
        named("b", Some(down.clone())),
        named("c", None),
    ];
    let urls: Vec<String> = ups.iter().map(ScriptedUpstream::url).collect();
    let route = "balance = \"hash\"\nhash_on = \"header:x-user\"\n\
                 health_check = { path = \"/hc\", interval = \"200ms\", timeout = \"100ms\", unhealthy_after = 2, healthy_after = 2 }";
    let gw = gateway(&urls, route, "");
    let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let served = |gw: &Gateway, user: &str| -> String {
        let r = gw.get("/x", &[("x-user", user)]);
        assert_eq!(r.status, 200, "{r:?}");
        r.text()
    };
    // Every request of a user on one target.
    let mut home: HashMap<&str, String> = HashMap::new();
    for u in &users {
        let first = served(&gw, u);
        for _ in 0..2 {
            assert_eq!(served(&gw, u), first, "{u} moved");
        }
        home.insert(u, first);
    }
    for name in ["a", "b", "c"] {
        let n = home.values().filter(|h| *h == name).count();
        assert!(n >= 8, "{n} of 60 users on {name}: {home:?}");
    }
    // Another gateway process, same config: the same target for every user.
    let gw2 = gateway(&urls, route, "");
    for u in &users {
        assert_eq!(
            served(&gw2, u),
            home[u.as_str()],
            "{u} on the second gateway"
        );
    }
    drop(gw2);
    let healthy = |gw: &Gateway| -> Vec<bool> {
        gw.stats()
            .iter()
            .map(|s| s["healthy"].as_bool().unwrap())
            .collect()
    };
    // b leaves: only b's users move, none to b.
    down.store(true, Ordering::SeqCst);
    aegis_testkit::wait_until(
        "b out of rotation",
        std::time::Duration::from_secs(20),
        || healthy(&gw) == [true, false, true],
    );
    for u in &users {
        let now = served(&gw, u);
        if home[u.as_str()] == "b" {
            assert_ne!(now, "b", "{u}");
        } else {
            assert_eq!(now, home[u.as_str()], "{u} moved though its target stayed");
        }
    }
    // b is back: every user is home again.
    down.store(false, Ordering::SeqCst);
    aegis_testkit::wait_until(
        "b back in rotation",
        std::time::Duration::from_secs(20),
        || healthy(&gw) == [true, true, true],
    );
    for u in &users {
        assert_eq!(served(&gw, u), home[u.as_str()], "{u} after b came back");
    }
}
