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
    assert!(gw.stderr().contains("attempts=2"), "{}", gw.stderr());
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
