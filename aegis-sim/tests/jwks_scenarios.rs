//! The JWKS scenarios (`scenarios/jwks-rotation.toml`, `scenarios/idp-outage.toml`): the
//! policy's JWKS cache driven by a simulated IdP gives exactly the written outcome.

use std::path::Path;

use aegis_sim::{Report, RunOptions, Scenario};

fn run(name: &str) -> Report {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../scenarios/{name}.toml"));
    let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    aegis_sim::run(
        &s,
        &RunOptions {
            seed: s.seed,
            trace: true,
            scenario_ref: path.display().to_string(),
        },
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
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
}
