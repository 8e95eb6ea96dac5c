#![allow(clippy::disallowed_methods)] // real time: a token's exp

//! The cache of accepted tokens ([auth] token_cache) answers what a full check would: a
//! repeated token is served from it (the metrics count the hits), yet a cached token is
//! refused once its `exp` passes, and a reload that changes the secret refuses it at once.
//! (A JWKS rotation that drops a key: tests/jwks.rs.)

use std::time::Duration;

use aegis_testkit::{Gateway, Upstream, bearer, mint_token, unix_millis, wait_until};
use serde_json::json;

fn config(up: &Upstream, secret: &str, cache: usize) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[auth]
secret = "{secret}"
leeway = "0s"
token_cache = {cache}

[[routes]]
path = "/api"
targets = ["{up}"]
auth = true
"#,
        up = up.url()
    )
}

fn metric(gw: &Gateway, name: &str) -> u64 {
    let text = gw.get("/gateway/metrics", &[]).text();
    let line = format!("{name}{{provider=\"auth\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn repeated_tokens_are_served_from_the_cache_until_they_expire() {
    let up = Upstream::start("api");
    let gw = Gateway::start(&config(&up, "s1", 64), &[]);
    // Expires within a few seconds (whole seconds: at least 2 from now).
    let exp = unix_millis() / 1000 + 3;
    let token = mint_token("s1", json!({"userId": "alice", "exp": exp}));
    for _ in 0..10 {
        let r = gw.get("/api", &[("authorization", &bearer(&token))]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["headers"]["x-user-id"][0], "alice");
    }
    // Two workers: each checks the token once in full, then finds it.
    let (hits, misses) = (
        metric(&gw, "aegis_token_cache_hits_total"),
        metric(&gw, "aegis_token_cache_misses_total"),
    );
    assert_eq!(hits + misses, 10);
    assert!(misses <= 2 && hits >= 8, "hits {hits}, misses {misses}");
    assert!(metric(&gw, "aegis_token_cache_entries") >= 1);
    // A forged token with the same claims is never taken for the cached one.
    let forged = mint_token("other", json!({"userId": "alice", "exp": exp}));
    let r = gw.get("/api", &[("authorization", &bearer(&forged))]);
    assert_eq!(
        (r.status, r.json()["reason"].clone()),
        (401, json!("bad_signature"))
    );

    // Past exp the cached token is refused, and says why.
    wait_until("the token to expire", Duration::from_secs(10), || {
        unix_millis() / 1000 > exp
    });
    for _ in 0..4 {
        let r = gw.get("/api", &[("authorization", &bearer(&token))]);
        assert_eq!(
            (r.status, r.json()["reason"].clone()),
            (401, json!("expired"))
        );
    }
}

#[test]
fn a_reload_with_another_secret_refuses_cached_tokens_at_once() {
    let up = Upstream::start("api");
    let gw = Gateway::start(&config(&up, "s1", 64), &[]);
    let token = mint_token(
        "s1",
        json!({"userId": "bob", "exp": unix_millis() / 1000 + 600}),
    );
    for _ in 0..6 {
        assert_eq!(
            gw.get("/api", &[("authorization", &bearer(&token))]).status,
            200
        );
    }
    assert!(metric(&gw, "aegis_token_cache_hits_total") >= 4);

    gw.write_config(&config(&up, "s2", 64));
    gw.signal("HUP");
    let fresh = mint_token(
        "s2",
        json!({"userId": "bob", "exp": unix_millis() / 1000 + 600}),
    );
    wait_until("the new secret to serve", Duration::from_secs(10), || {
        gw.get("/api", &[("authorization", &bearer(&fresh))]).status == 200
    });
    for _ in 0..6 {
        let r = gw.get("/api", &[("authorization", &bearer(&token))]);
        assert_eq!(
            (r.status, r.json()["reason"].clone()),
            (401, json!("bad_signature"))
        );
    }
}

#[test]
fn token_cache_zero_checks_every_token_in_full() {
    let up = Upstream::start("api");
    let gw = Gateway::start(&config(&up, "s1", 0), &[]);
    let token = mint_token(
        "s1",
        json!({"userId": "carol", "exp": unix_millis() / 1000 + 600}),
    );
    for _ in 0..5 {
        assert_eq!(
            gw.get("/api", &[("authorization", &bearer(&token))]).status,
            200
        );
    }
    assert_eq!(metric(&gw, "aegis_token_cache_hits_total"), 0);
    assert_eq!(metric(&gw, "aegis_token_cache_entries"), 0);
}
