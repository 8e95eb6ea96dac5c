//! The JWKS scenarios (`scenarios/jwks-rotation.toml`, `scenarios/idp-outage.toml`): the
//! policy's JWKS cache driven by a simulated IdP gives exactly the written outcome, holds
//! every invariant on other seeds, and a planted bug in the simulated shell is caught.

use std::path::Path;

use aegis_sim::scenario::Plant;
use aegis_sim::{Report, RunOptions, Scenario};

fn load(name: &str) -> (Scenario, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../scenarios/{name}.toml"));
    let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (s, path.display().to_string())
}

fn run_with(s: &Scenario, path: &str, seed: u64) -> Report {
    aegis_sim::run(
        s,
        &RunOptions {
            seed,
            trace: true,
            scenario_ref: path.to_owned(),
        },
    )
    .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn run(name: &str) -> Report {
    let (s, path) = load(name);
    run_with(&s, &path, s.seed)
}

#[test]
fn rotation_refuses_no_valid_token_and_a_flood_costs_one_fetch_per_interval() {
    let r = run("jwks-rotation");
    assert!(r.ok(), "{}", r.to_text());
    // Every refusal is a random kid's; the users' 3,600 requests all went through.
    assert_eq!(r.unauthorized.get("unknown_key"), Some(&1200));
    assert_eq!(r.unauthorized.len(), 1, "{:?}", r.unauthorized);
    let j = r.jwks.as_ref().expect("a jwks report");
    let unknown: Vec<u64> = j
        .fetch_log
        .iter()
        .filter(|(_, why)| *why == "unknown_kid")
        .map(|(t, _)| *t)
        .collect();
    // The rotation's first k2 token at 61 s, then one per 10 s of the 60 s flood.
    assert_eq!(
        unknown,
        [61_000, 90_000, 100_000, 110_000, 120_000, 130_000, 140_000]
    );
    assert_eq!(j.unknown_kid_refused, 1188);
    let trace = r.trace.as_ref().unwrap();
    let first_k2 = trace.iter().find(|l| l.t_ms >= 61_000).unwrap();
    assert_eq!(
        first_k2.status, 200,
        "the first k2 token waited for the refetch"
    );
    // Byte-identical on a second run.
    assert_eq!(r.to_json(), run("jwks-rotation").to_json());
}

#[test]
fn outage_serves_stale_keys_until_max_stale_then_503_until_the_idp_is_back() {
    let r = run("idp-outage");
    assert!(r.ok(), "{}", r.to_text());
    let trace = r.trace.as_ref().unwrap();
    for l in trace {
        let want = if (120_050..151_450).contains(&l.t_ms) {
            503
        } else {
            200
        };
        assert_eq!(l.status, want, "at {} ms", l.t_ms);
    }
    let j = r.jwks.as_ref().unwrap();
    assert_eq!((j.fetches_ok, j.fetches_failed), (2, 7));
    assert_eq!(r.unauthorized.get("keys_unavailable"), Some(&314));
    // The retries back off 1 s, 2 s, 4 s, ... up to jwks_min_refresh (30 s).
    let retries: Vec<u64> = j
        .fetch_log
        .iter()
        .filter(|(_, why)| *why == "retry")
        .map(|(t, _)| *t)
        .collect();
    let gaps: Vec<u64> = retries.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, [2_050, 4_050, 8_050, 16_050, 30_050, 30_050]);
}

/// Other seeds move the clients' draws and the upstream latencies: every invariant and the
/// reference model still hold (the [expect] counts are the shipped seed's, not checked here).
#[test]
fn both_scenarios_hold_their_invariants_on_other_seeds() {
    for name in ["jwks-rotation", "idp-outage"] {
        let (s, path) = load(name);
        for seed in 1..=4 {
            let r = run_with(&s, &path, seed);
            assert_eq!(
                r.invariant_violations,
                Vec::new(),
                "{name} seed {seed}:\n{}",
                r.to_text()
            );
            assert!(r.invariant_checks > 10_000, "{name} seed {seed}");
        }
    }
}

/// A gateway that never refetches on an unknown kid (rotation seen only at the next
/// scheduled refresh, 5 minutes later) refuses the new key's tokens: caught.
#[test]
fn a_shell_that_ignores_rotation_is_caught() {
    let (mut s, path) = load("jwks-rotation");
    s.plant = Some(Plant::IgnoreUnknownKid);
    let r = run_with(&s, &path, s.seed);
    assert!(
        r.invariant_violations
            .iter()
            .any(|v| v.invariant == "published_key_accepted"),
        "{}",
        r.to_text()
    );
    assert!(r.reproduce.is_some());
}

/// A gateway that drops its keys when a refresh fails (no stale-while-error) answers 503
/// from the first failure: the reference model, which keeps the last good keys until
/// `jwks_max_stale`, disagrees.
#[test]
fn a_shell_that_drops_stale_keys_is_caught() {
    let (mut s, path) = load("idp-outage");
    s.plant = Some(Plant::DropKeysOnFailure);
    let r = run_with(&s, &path, s.seed);
    let first = r.invariant_violations.first().expect("a violation");
    assert_eq!(first.invariant, "oracle_agrees", "{}", r.to_text());
    assert!(first.t_ms >= 60_050 && first.t_ms < 61_000, "{first:?}");
}
