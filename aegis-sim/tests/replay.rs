//! `aegis-sim replay` on hand-written access logs (tests/fixtures/*.jsonl): exact counts of
//! what a candidate config would change, the accounting of skipped and malformed lines, the
//! synthesised tokens, and exit 1 with a precise message on unreadable input.

use std::collections::BTreeMap;

use aegis_sim::replay::{ReplayReport, replay_files};

const FIX: &str = "aegis-sim/tests/fixtures";

mod common;
use common::{root, sim};

fn replay_json(log: &str, config: &str) -> (Vec<u8>, serde_json::Value) {
    let o = sim(&[
        "replay",
        "--log",
        &format!("{FIX}/{log}"),
        "--config",
        &format!("{FIX}/{config}"),
        "--json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v = serde_json::from_slice(&o.stdout).expect("--json is JSON");
    (o.stdout, v)
}

fn statuses(v: &serde_json::Value) -> BTreeMap<String, u64> {
    v.as_object()
        .expect("a status map")
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().expect("a count")))
        .collect()
}

fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

fn lib(log: &str, config: &str) -> ReplayReport {
    replay_files(
        &root().join(FIX).join(log),
        &root().join(FIX).join(config),
        20,
    )
    .expect("replays")
}

/// 30 requests from one IP to /users, under a config without a limit; the candidate allows 10
/// per 60 s: the last 20 become 429. /product is untouched, its logged 502 stays a 502.
#[test]
fn thirty_requests_and_a_limit_of_ten() {
    let r = lib("access-30.jsonl", "candidate-max10.toml");
    assert!(r.ok(), "{:?}", r.invariant_violations);
    assert_eq!(r.lines, 38);
    assert_eq!(r.requests, 33);
    assert_eq!(r.span_ms, 29_000);
    assert_eq!(r.other_messages, 2, "the startup and drain lines");
    assert_eq!(r.admin_skipped, 1, "GET /gateway/stats");
    assert_eq!((r.not_json.count, r.not_json.lines.clone()), (1, vec![15]));
    assert_eq!(r.malformed.count, 1);
    assert_eq!(r.malformed.lines[0].line, 28);
    assert_eq!(r.malformed.lines[0].error, "ts_ms: missing");
    assert_eq!(r.out_of_order, 0);
    // The 11th /users request (log line 17, 10 s in) is the first over the limit.
    let c = &r.first_changed[0];
    assert_eq!(
        (c.line, c.t_ms, c.path.as_str(), c.before, c.after),
        (17, 10_000, "/users?page=10", 200, 429)
    );
    assert_eq!(r.first_changed.len(), 20, "lib() lists up to 20");

    let b: Vec<(u16, u64)> = r.status_before.iter().map(|(k, v)| (*k, *v)).collect();
    let a: Vec<(u16, u64)> = r.status_after.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(b, vec![(200, 32), (502, 1)]);
    assert_eq!(a, vec![(200, 12), (429, 20), (502, 1)]);
    assert_eq!(r.changed, 20);
    assert_eq!(r.changes.len(), 1);
    assert_eq!(
        (r.changes[0].from, r.changes[0].to, r.changes[0].requests),
        (200, 429, 20)
    );
    let gl: Vec<(u16, u64, u64)> = r
        .gained_lost
        .iter()
        .map(|(c, g)| (*c, g.gained, g.lost))
        .collect();
    assert_eq!(
        gl,
        vec![(401, 0, 0), (404, 0, 0), (429, 20, 0), (503, 0, 0)]
    );
    assert_eq!(r.limited_keys_total, 1);
    assert_eq!(r.limited_keys[0].key, "/users|ip:203.0.113.7");
    assert_eq!(r.limited_keys[0].limited, 20);
    let routes: Vec<(&str, u64, u64)> = r
        .per_route
        .iter()
        .map(|x| (x.route.as_str(), x.requests, x.changed))
        .collect();
    assert_eq!(routes, vec![("/users", 30, 20), ("/product", 3, 0)]);
    // The candidate round-robins /users as the log did, so each admitted request goes where
    // it went and gets its logged outcome.
    assert_eq!(r.upstream_outcomes.as_logged, 13);
    assert_eq!(r.upstream_outcomes.assumed_ok, 0);
    assert_eq!(r.auth.absent, 33);
    assert_eq!(r.auth.tokens, "none");
}

/// The same through the binary: --json carries the same numbers and is byte-identical.
#[test]
fn json_is_byte_identical_and_complete() {
    let (bytes1, v) = replay_json("access-30.jsonl", "candidate-max10.toml");
    let (bytes2, _) = replay_json("access-30.jsonl", "candidate-max10.toml");
    assert_eq!(bytes1, bytes2);
    assert_eq!(
        statuses(&v["status_before"]),
        map(&[("200", 32), ("502", 1)])
    );
    assert_eq!(
        statuses(&v["status_after"]),
        map(&[("200", 12), ("429", 20), ("502", 1)])
    );
    assert_eq!(v["changed"], 20);
    assert_eq!(v["gained_lost"]["429"]["gained"], 20);
    assert_eq!(v["limited_keys"][0]["key"], "/users|ip:203.0.113.7");
    assert_eq!(v["malformed"]["lines"][0]["line"], 28);
    assert_eq!(v["not_json"]["lines"][0], 15);
    let text = sim(&[
        "replay",
        "--log",
        &format!("{FIX}/access-30.jsonl"),
        "--config",
        &format!("{FIX}/candidate-max10.toml"),
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("    line 28: ts_ms: missing\n"), "{text}");
    assert!(text.contains("  200 → 429  20\n"), "{text}");
    assert!(
        text.contains("  /users|ip:203.0.113.7                    20 × 429\n"),
        "{text}"
    );
}

/// Logged auth outcomes become tokens the candidate's policy verifies: verified users pass
/// and are limited per user (alice's 3rd and 4th → 429), the rejected and absent stay 401,
/// /public now authenticating turns its 3 header-less requests into 401 (the 2 that sent a
/// header are assumed valid), and /health, a 404 before, is routed now.
fn check_auth(r: &ReplayReport, tokens: &str) {
    assert!(r.ok(), "{:?}", r.invariant_violations);
    assert_eq!(r.auth.tokens, tokens);
    assert_eq!(
        (
            r.auth.verified,
            r.auth.rejected,
            r.auth.absent,
            r.auth.unchecked_anonymous
        ),
        (6, 1, 5, 2)
    );
    let b: Vec<(u16, u64)> = r.status_before.iter().map(|(k, v)| (*k, *v)).collect();
    let a: Vec<(u16, u64)> = r.status_after.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(b, vec![(200, 11), (401, 2), (404, 1)]);
    assert_eq!(a, vec![(200, 7), (401, 5), (429, 2)]);
    let changes: Vec<(u16, u16, u64)> = r
        .changes
        .iter()
        .map(|c| (c.from, c.to, c.requests))
        .collect();
    assert_eq!(changes, vec![(200, 401, 3), (200, 429, 2), (404, 200, 1)]);
    let gl: Vec<(u16, u64, u64)> = r
        .gained_lost
        .iter()
        .map(|(c, g)| (*c, g.gained, g.lost))
        .collect();
    assert_eq!(gl, vec![(401, 3, 0), (404, 0, 1), (429, 2, 0), (503, 0, 0)]);
    let keys: Vec<(&str, u64)> = r
        .limited_keys
        .iter()
        .map(|k| (k.key.as_str(), k.limited))
        .collect();
    assert_eq!(keys, vec![("/users|user:alice", 2)]);
    let routes: Vec<(&str, u64, u64)> = r
        .per_route
        .iter()
        .map(|x| (x.route.as_str(), x.requests, x.changed))
        .collect();
    assert_eq!(
        routes,
        vec![("/users", 8, 2), ("/public", 5, 3), ("/health", 1, 1)]
    );
    assert_eq!(r.upstream_outcomes.as_logged, 6);
    assert_eq!(r.upstream_outcomes.assumed_ok, 1, "/health has no history");
}

#[test]
fn auth_with_the_candidates_secret() {
    check_auth(
        &lib("access-auth.jsonl", "candidate-auth.toml"),
        "candidate_secret",
    );
}

#[test]
fn auth_with_a_public_key_candidate_uses_a_stand_in_key() {
    // Key files resolve against the working directory, as for `aegis run`: use the binary.
    let (_, v) = replay_json("access-auth.jsonl", "candidate-auth-eddsa.toml");
    assert_eq!(v["auth"]["tokens"], "stand_in_key");
    assert_eq!(
        statuses(&v["status_after"]),
        map(&[("200", 7), ("401", 5), ("429", 2)])
    );
    assert_eq!(v["limited_keys"][0]["key"], "/users|user:alice");
}

#[test]
fn unreadable_inputs_exit_1_with_a_precise_message() {
    let log = format!("{FIX}/access-30.jsonl");
    let cfg = format!("{FIX}/candidate-max10.toml");
    let cases: [(&str, &str, &str); 4] = [
        (
            "no-such.jsonl",
            &cfg,
            "error: cannot read the log no-such.jsonl: ",
        ),
        (
            &log,
            "no-such.toml",
            "error: cannot read the config no-such.toml: ",
        ),
        (
            &log,
            "aegis-sim/tests/fixtures/candidate-bad.toml",
            "error: invalid config aegis-sim/tests/fixtures/candidate-bad.toml: routes[0].targets[1]: \"htp://127.0.0.1:3002\" is not an http URL",
        ),
        (
            &cfg,
            &cfg,
            "error: aegis-sim/tests/fixtures/candidate-max10.toml: no access-log lines",
        ),
    ];
    for (log, config, want) in cases {
        let o = sim(&["replay", "--log", log, "--config", config]);
        assert_eq!(o.status.code(), Some(1), "{log} {config}");
        assert!(o.stdout.is_empty());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.starts_with(want), "got {err:?}, want {want:?}");
    }
    let usage = sim(&["replay", "--log", &log]);
    assert_eq!(
        usage.status.code(),
        Some(2),
        "a missing --config is a usage error"
    );
}

fn pairs(m: &BTreeMap<u16, u64>) -> Vec<(u16, u64)> {
    m.iter().map(|(k, v)| (*k, *v)).collect()
}

/// A log in which one of two instances refused every connection (the old breaker never
/// opened): the candidate opens its circuit after 3 failures, and the requests it moves to
/// the healthy instance get that instance's answers (its logged history), not the 502s.
#[test]
fn a_tighter_breaker_moves_traffic_off_the_failing_instance() {
    let r = lib("access-failing.jsonl", "candidate-breaker.toml");
    assert!(r.ok(), "{:?}", r.invariant_violations);
    assert_eq!(r.other_messages, 1);
    assert_eq!(pairs(&r.status_before), vec![(200, 10), (502, 10)]);
    assert_eq!(pairs(&r.status_after), vec![(200, 17), (502, 3)]);
    assert_eq!(r.changed, 7);
    // The moved requests were connection failures on 3002; 3001 was up, and no HTTP answer
    // to their paths is logged: assumed 200.
    let u = &r.upstream_outcomes;
    assert_eq!((u.as_logged, u.assumed_ok), (13, 7));
    let tr: Vec<String> = r
        .transitions
        .iter()
        .map(|t| format!("{} {} {}>{}", t.t_ms, t.target, t.from, t.to))
        .collect();
    // Virtual time starts at the first ts_ms (request 0 logged 5 ms after it started); the
    // third 502 is request 5, logged at +501 ms, answered 1 ms later.
    assert_eq!(
        tr,
        vec![
            "497 http://127.0.0.1:3002 CLOSED>OPEN",
            "60497 http://127.0.0.1:3002 OPEN>HALF_OPEN",
        ]
    );
}

/// The same log through a candidate that keeps only the failing instance: once its circuit
/// is open every request is a 503 from the gateway.
#[test]
fn no_healthy_target_left_gains_503s() {
    let r = lib("access-failing.jsonl", "candidate-breaker-one.toml");
    assert!(r.ok(), "{:?}", r.invariant_violations);
    assert_eq!(pairs(&r.status_after), vec![(200, 1), (502, 3), (503, 16)]);
    let changes: Vec<(u16, u16, u64)> = r
        .changes
        .iter()
        .map(|c| (c.from, c.to, c.requests))
        .collect();
    assert_eq!(changes, vec![(200, 503, 8), (502, 503, 8), (200, 502, 1)]);
    assert_eq!(r.gained_lost[&503].gained, 16);
    let u = &r.upstream_outcomes;
    // Request 0 (a 200 from 3001) comes before anything is known of 3002: its own answer.
    // Request 2 (a 200 from 3001) comes after 3002 refused request 1: 3002 is down, 502.
    assert_eq!(
        (
            u.as_logged,
            u.target_down,
            u.answer_from_other_target,
            u.assumed_ok
        ),
        (2, 1, 1, 0)
    );
}

/// A log recorded from the real gateway (`aegis run --log-format json`, three
/// `aegis upstream`s; curl: 30 × /product, /users without and with a bad token, 6 ×
/// /users/fail interleaved with /users/N under a valid token, a 404, /gateway/stats) replayed
/// through the config that recorded it changes nothing: the same targets are picked and the
/// breaker opens when the gateway's did (its log line says 0.798 s after the first request).
#[test]
fn a_recorded_log_through_its_own_config_changes_nothing() {
    let r = lib("recorded.jsonl", "recorded-old.toml");
    assert!(r.ok(), "{:?}", r.invariant_violations);
    assert_eq!(
        (r.lines, r.requests, r.other_messages, r.admin_skipped),
        (50, 45, 4, 1)
    );
    assert_eq!(r.malformed.count + r.not_json.count, 0);
    assert_eq!(
        pairs(&r.status_before),
        vec![(200, 36), (401, 2), (404, 1), (500, 6)]
    );
    assert_eq!(r.status_after, r.status_before);
    assert_eq!(r.changed, 0);
    assert_eq!(r.upstream_outcomes.as_logged, 42, "every forward as logged");
    assert_eq!(
        (r.auth.verified, r.auth.rejected, r.auth.absent),
        (12, 1, 32)
    );
    let tr: Vec<(u64, &str)> = r.transitions.iter().map(|t| (t.t_ms, t.to)).collect();
    assert_eq!(tr, vec![(798, "OPEN"), (60_798, "HALF_OPEN")]);
}

/// The same log through a candidate with a limit on /product and a breaker that opens after
/// 2 failures: 20 × 429, and the /users/fail requests it moves to the other instance still
/// fail (their own HTTP answer), so nothing else changes.
#[test]
fn a_recorded_log_through_a_candidate() {
    let r = lib("recorded.jsonl", "candidate-recorded.toml");
    assert!(r.ok(), "{:?}", r.invariant_violations);
    assert_eq!(
        pairs(&r.status_after),
        vec![(200, 16), (401, 2), (404, 1), (429, 20), (500, 6)]
    );
    let changes: Vec<(u16, u16, u64)> = r
        .changes
        .iter()
        .map(|c| (c.from, c.to, c.requests))
        .collect();
    assert_eq!(changes, vec![(200, 429, 20)]);
    assert_eq!(r.limited_keys[0].key, "/product|ip:127.0.0.1");
    assert_eq!(r.limited_keys[0].limited, 20);
    assert_eq!(
        (
            r.upstream_outcomes.as_logged,
            r.upstream_outcomes.answer_from_other_target
        ),
        (19, 3)
    );
    let tr: Vec<(u64, &str)> = r.transitions.iter().map(|t| (t.t_ms, t.to)).collect();
    assert_eq!(tr, vec![(692, "OPEN"), (60_692, "HALF_OPEN")]);
}
