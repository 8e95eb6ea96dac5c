//! `aegis-sim replay` reproduces a Redis outage window from the gateway's own log lines
//! (`redis store unavailable ...` / `redis store available again`, as
//! aegis-tokio/src/state/redis.rs writes them): requests inside it meet a failing store, and
//! the candidate's `on_store_error` decides them.

use aegis_sim::replay::{AccessLog, ReplayOptions, replay, replay_files};

mod common;
use common::{root, sim};

const FIX: &str = "aegis-sim/tests/fixtures";

#[test]
fn an_outage_in_the_log_is_replayed_and_on_store_error_decides() {
    let log = root().join(FIX).join("access-redis-outage.jsonl");
    // The recording gateway denied during the outage: the same config gives the same 503s.
    let deny = replay_files(
        &log,
        &root().join(FIX).join("candidate-outage-deny.toml"),
        10,
    )
    .expect("replays");
    assert!(deny.ok(), "{:?}", deny.invariant_violations);
    assert_eq!(deny.changed, 0, "{}", deny.to_text());
    assert_eq!(deny.store_outages.len(), 1);
    let w = &deny.store_outages[0];
    assert_eq!((w.from_ms, w.until_ms, w.line), (1990, Some(4180), 13));
    assert_eq!(deny.store_errors, 11);
    assert!(
        deny.to_text()
            .contains("store outage 1.990s-4.180s replayed (11 requests met it)")
    );
    // allow: the 11 requests inside the window are admitted (unchecked), nothing else moves.
    let allow = replay_files(
        &log,
        &root().join(FIX).join("candidate-outage-allow.toml"),
        10,
    )
    .expect("replays");
    assert_eq!(allow.changed, 11, "{}", allow.to_text());
    assert_eq!(allow.status_after.get(&200), Some(&30));
    assert!(allow.to_json().contains("\"store_outages\""));
}

#[test]
fn without_its_outage_lines_the_store_never_fails() {
    let text = std::fs::read_to_string(root().join(FIX).join("access-redis-outage.jsonl"))
        .expect("readable");
    let stripped: String = text
        .lines()
        .filter(|l| !l.contains("\"redis store "))
        .map(|l| format!("{l}\n"))
        .collect();
    let log = AccessLog::parse(stripped.as_bytes());
    assert!(log.store_outages.is_empty());
    let config =
        aegis_sim::replay::load_config(&root().join(FIX).join("candidate-outage-deny.toml"))
            .expect("valid");
    let r = replay(&log, config, &ReplayOptions::default()).expect("replays");
    // The 503s the gateway gave during the outage are gone: the outage is what made them
    // (those requests now count against the limit of 20, so the last ten are 429).
    assert_eq!(r.status_after.get(&503), None, "{}", r.to_text());
    assert_eq!(r.status_after.get(&429), Some(&10), "{}", r.to_text());
    assert_eq!(r.store_errors, 0);
}

#[test]
fn an_outage_still_open_when_the_log_ends_lasts_to_the_end() {
    let text = std::fs::read_to_string(root().join(FIX).join("access-redis-outage.jsonl"))
        .expect("readable");
    let cut: String = text
        .lines()
        .filter(|l| !l.contains("available again"))
        .map(|l| format!("{l}\n"))
        .collect();
    let log = AccessLog::parse(cut.as_bytes());
    assert_eq!(log.store_outages.len(), 1);
    assert_eq!(log.store_outages[0].until_ms, u64::MAX);
    let config =
        aegis_sim::replay::load_config(&root().join(FIX).join("candidate-outage-deny.toml"))
            .expect("valid");
    let r = replay(&log, config, &ReplayOptions::default()).expect("replays");
    // Every request from 1.99 s on meets the store down: 20 of the 30.
    assert_eq!(r.store_errors, 20, "{}", r.to_text());
    assert_eq!(r.store_outages[0].until_ms, None);
}

#[test]
fn the_cli_says_which_outage_it_replayed() {
    let o = sim(&[
        "replay",
        "--log",
        &format!("{FIX}/access-redis-outage.jsonl"),
        "--config",
        &format!("{FIX}/candidate-outage-allow.toml"),
    ]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("store outage 1.990s-4.180s replayed (11 requests met it)"),
        "{out}"
    );
}
