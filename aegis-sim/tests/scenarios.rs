//! Every shipped scenario in `scenarios/` runs with its own seed and gives exactly the outcome
//! written here: request count, status counts, per-target forwards/failures/final state, the
//! full breaker timeline and the rate-limited keys. A change in aegis-policy or in the
//! simulator that moves any of these numbers fails here, and the diff says what moved.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aegis_sim::{Report, RunOptions, Scenario};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

fn run(name: &str) -> Report {
    let path = scenarios_dir().join(format!("{name}.toml"));
    let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    aegis_sim::run(
        &s,
        &RunOptions {
            seed: s.seed,
            trace: false,
            scenario_ref: path.display().to_string(),
        },
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// What a scenario must produce.
struct Expected {
    seed: u64,
    requests: u64,
    statuses: &'static [(u16, u64)],
    /// (target host:port, forwarded, failures, final state), in config order.
    targets: &'static [(&'static str, u64, u64, &'static str)],
    /// `t_ms host:port FROM>TO`.
    transitions: &'static [&'static str],
    /// (key, 429s).
    limited: &'static [(&'static str, u64)],
    store_errors: u64,
    admitted_unchecked: u64,
}

fn host(url: &str) -> &str {
    url.strip_prefix("http://").unwrap_or(url)
}

fn check(name: &str, want: &Expected) {
    let r = run(name);
    assert_eq!(
        r.invariant_violations,
        Vec::new(),
        "{name}: invariants must hold"
    );
    assert_eq!(
        r.expectations_failed,
        Vec::<String>::new(),
        "{name}: the scenario's own [expect] must pass"
    );
    assert_eq!(r.seed, want.seed, "{name}: seed");
    assert_eq!(r.requests, want.requests, "{name}: requests");
    assert_eq!(
        r.responses, want.requests,
        "{name}: one response per request"
    );
    let statuses: BTreeMap<u16, u64> = want.statuses.iter().copied().collect();
    assert_eq!(r.status_counts, statuses, "{name}: status counts");
    let targets: Vec<(&str, u64, u64, &str)> = r
        .per_target
        .iter()
        .map(|t| (host(&t.target), t.requests, t.failures, t.final_state))
        .collect();
    assert_eq!(targets, want.targets, "{name}: per target");
    let transitions: Vec<String> = r
        .transitions
        .iter()
        .map(|t| format!("{} {} {}>{}", t.t_ms, host(&t.target), t.from, t.to))
        .collect();
    assert_eq!(transitions, want.transitions, "{name}: breaker transitions");
    let limited: Vec<(&str, u64)> = r
        .limited_keys
        .iter()
        .map(|k| (k.key.as_str(), k.limited))
        .collect();
    assert_eq!(limited, want.limited, "{name}: rate-limited keys");
    assert_eq!(r.store_errors, want.store_errors, "{name}: store errors");
    assert_eq!(
        r.admitted_unchecked, want.admitted_unchecked,
        "{name}: admitted unchecked"
    );
}

/// The seed README's curl session: 401 without a token, 10×200 then 5×429 for one client,
/// `/users/fail` ×3 opens user-service-1, which is skipped until open_for (60 s) has passed,
/// then one probe closes it.
#[test]
fn seed_walkthrough() {
    check(
        "seed-walkthrough",
        &Expected {
            seed: 1,
            requests: 35,
            statuses: &[(200, 26), (401, 1), (429, 5), (500, 3)],
            targets: &[
                ("user-service-1:3001", 8, 3, "CLOSED"),
                ("user-service-2:3001", 10, 0, "CLOSED"),
                ("user-service-3:3001", 10, 0, "CLOSED"),
                ("product-service-1:3004", 1, 0, "CLOSED"),
                ("product-service-2:3004", 0, 0, "CLOSED"),
                ("product-service-3:3004", 0, 0, "CLOSED"),
            ],
            transitions: &[
                "13506 user-service-1:3001 CLOSED>OPEN",
                "73506 user-service-1:3001 OPEN>HALF_OPEN",
                "75003 user-service-1:3001 HALF_OPEN>CLOSED",
            ],
            limited: &[("/users|ip:10.0.0.2", 5)],
            store_errors: 0,
            admitted_unchecked: 0,
        },
    );
}

/// orders-2 refuses connections from 30 s to 70 s: 3 × 502 open it, a probe every 10 s fails
/// (3 more 502s) until it is back, then the next probe closes it.
#[test]
fn instance_dies() {
    check(
        "instance-dies",
        &Expected {
            seed: 7,
            requests: 7228,
            statuses: &[(200, 7222), (502, 6)],
            targets: &[
                ("orders-1:8080", 2820, 0, "CLOSED"),
                ("orders-2:8080", 1588, 6, "CLOSED"),
                ("orders-3:8080", 2820, 0, "CLOSED"),
            ],
            transitions: &[
                "30164 orders-2:8080 CLOSED>OPEN",
                "40164 orders-2:8080 OPEN>HALF_OPEN",
                "40188 orders-2:8080 HALF_OPEN>OPEN",
                "50188 orders-2:8080 OPEN>HALF_OPEN",
                "50207 orders-2:8080 HALF_OPEN>OPEN",
                "60207 orders-2:8080 OPEN>HALF_OPEN",
                "60224 orders-2:8080 HALF_OPEN>OPEN",
                "70224 orders-2:8080 OPEN>HALF_OPEN",
                "70270 orders-2:8080 HALF_OPEN>CLOSED",
            ],
            limited: &[],
            store_errors: 0,
            admitted_unchecked: 0,
        },
    );
}

/// search-2 is down 4 s of every 10 s from 10 s to 100 s: each period it opens at +125 ms,
/// half-opens after open_for (3 s), its probe fails while still down (+25 ms), and the second
/// probe, after the instance is back, closes it.
#[test]
fn flapping() {
    check(
        "flapping",
        &Expected {
            seed: 3,
            requests: 4800,
            statuses: &[(200, 4764), (502, 36)],
            targets: &[
                ("search-1:9000", 3471, 0, "CLOSED"),
                ("search-2:9000", 1329, 36, "CLOSED"),
            ],
            transitions: &[
                "10125 search-2:9000 CLOSED>OPEN",
                "13125 search-2:9000 OPEN>HALF_OPEN",
                "13150 search-2:9000 HALF_OPEN>OPEN",
                "16150 search-2:9000 OPEN>HALF_OPEN",
                "16185 search-2:9000 HALF_OPEN>CLOSED",
                "20125 search-2:9000 CLOSED>OPEN",
                "23125 search-2:9000 OPEN>HALF_OPEN",
                "23150 search-2:9000 HALF_OPEN>OPEN",
                "26150 search-2:9000 OPEN>HALF_OPEN",
                "26180 search-2:9000 HALF_OPEN>CLOSED",
                "30125 search-2:9000 CLOSED>OPEN",
                "33125 search-2:9000 OPEN>HALF_OPEN",
                "33150 search-2:9000 HALF_OPEN>OPEN",
                "36150 search-2:9000 OPEN>HALF_OPEN",
                "36187 search-2:9000 HALF_OPEN>CLOSED",
                "40125 search-2:9000 CLOSED>OPEN",
                "43125 search-2:9000 OPEN>HALF_OPEN",
                "43150 search-2:9000 HALF_OPEN>OPEN",
                "46150 search-2:9000 OPEN>HALF_OPEN",
                "46182 search-2:9000 HALF_OPEN>CLOSED",
                "50125 search-2:9000 CLOSED>OPEN",
                "53125 search-2:9000 OPEN>HALF_OPEN",
                "53150 search-2:9000 HALF_OPEN>OPEN",
                "56150 search-2:9000 OPEN>HALF_OPEN",
                "56180 search-2:9000 HALF_OPEN>CLOSED",
                "60125 search-2:9000 CLOSED>OPEN",
                "63125 search-2:9000 OPEN>HALF_OPEN",
                "63150 search-2:9000 HALF_OPEN>OPEN",
                "66150 search-2:9000 OPEN>HALF_OPEN",
                "66202 search-2:9000 HALF_OPEN>CLOSED",
                "70125 search-2:9000 CLOSED>OPEN",
                "73125 search-2:9000 OPEN>HALF_OPEN",
                "73150 search-2:9000 HALF_OPEN>OPEN",
                "76150 search-2:9000 OPEN>HALF_OPEN",
                "76204 search-2:9000 HALF_OPEN>CLOSED",
                "80125 search-2:9000 CLOSED>OPEN",
                "83125 search-2:9000 OPEN>HALF_OPEN",
                "83150 search-2:9000 HALF_OPEN>OPEN",
                "86150 search-2:9000 OPEN>HALF_OPEN",
                "86179 search-2:9000 HALF_OPEN>CLOSED",
                "90125 search-2:9000 CLOSED>OPEN",
                "93125 search-2:9000 OPEN>HALF_OPEN",
                "93150 search-2:9000 HALF_OPEN>OPEN",
                "96150 search-2:9000 OPEN>HALF_OPEN",
                "96203 search-2:9000 HALF_OPEN>CLOSED",
            ],
            limited: &[],
            store_errors: 0,
            admitted_unchecked: 0,
        },
    );
}

/// Both billing instances hang from 20 s to 50 s: 504s until both circuits are open, then
/// 503 (with Retry-After, checked by the invariants) without trying; probes fail until 50 s,
/// then close both.
#[test]
fn all_down() {
    check(
        "all-down",
        &Expected {
            seed: 11,
            requests: 1800,
            statuses: &[(200, 1176), (503, 607), (504, 17)],
            targets: &[
                ("billing-1:7000", 596, 8, "CLOSED"),
                ("billing-2:7000", 597, 9, "CLOSED"),
            ],
            transitions: &[
                "20700 billing-1:7000 CLOSED>OPEN",
                "20750 billing-2:7000 CLOSED>OPEN",
                "35700 billing-1:7000 OPEN>HALF_OPEN",
                "35750 billing-2:7000 OPEN>HALF_OPEN",
                "36200 billing-1:7000 HALF_OPEN>OPEN",
                "36250 billing-2:7000 HALF_OPEN>OPEN",
                "51200 billing-1:7000 OPEN>HALF_OPEN",
                "51202 billing-1:7000 HALF_OPEN>CLOSED",
                "51250 billing-2:7000 OPEN>HALF_OPEN",
                "51258 billing-2:7000 HALF_OPEN>CLOSED",
            ],
            limited: &[],
            store_errors: 0,
            admitted_unchecked: 0,
        },
    );
}

/// Redis down (then too slow) with on_store_error = deny: 150 limited requests get 503; the
/// heavy client's 429s before and after are unchanged.
#[test]
fn redis_outage_closed() {
    check(
        "redis-outage-closed",
        &Expected {
            seed: 5,
            requests: 360,
            statuses: &[(200, 95), (429, 115), (503, 150)],
            targets: &[
                ("api-1:8000", 48, 0, "CLOSED"),
                ("api-2:8000", 47, 0, "CLOSED"),
            ],
            transitions: &[],
            limited: &[("/api|ip:192.0.2.66", 115)],
            store_errors: 150,
            admitted_unchecked: 0,
        },
    );
}

/// The same outage with on_store_error = allow: the same 150 requests pass unchecked (200),
/// nothing else changes.
#[test]
fn redis_outage_open() {
    check(
        "redis-outage-open",
        &Expected {
            seed: 5,
            requests: 360,
            statuses: &[(200, 245), (429, 115)],
            targets: &[
                ("api-1:8000", 123, 0, "CLOSED"),
                ("api-2:8000", 122, 0, "CLOSED"),
            ],
            transitions: &[],
            limited: &[("/api|ip:192.0.2.66", 115)],
            store_errors: 150,
            admitted_unchecked: 150,
        },
    );
}

/// A scenario added to scenarios/ without a test above fails here.
#[test]
fn every_shipped_scenario_is_asserted() {
    // The JWKS scenarios are asserted in tests/jwks_scenarios.rs, the traffic ones in
    // tests/traffic_scenarios.rs (with their own [expect]).
    let tested = [
        "all-down",
        "flapping",
        "health-flap",
        "idp-outage",
        "instance-dies",
        "jwks-rotation",
        "p2c",
        "redis-outage-closed",
        "redis-outage-open",
        "retry-storm",
        "seed-walkthrough",
        "sticky",
        "websocket",
        "weights",
    ];
    let mut shipped: Vec<String> = std::fs::read_dir(scenarios_dir())
        .expect("scenarios/ is readable")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        // Fleet scenarios are asserted in tests/fleet.rs.
        .filter(|p| !aegis_sim::fleet::is_fleet_file(p))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    shipped.sort();
    assert_eq!(
        shipped, tested,
        "add an exact-outcome test for each scenario"
    );
}

/// Every scenario file states what it expects (statuses, and its breakers' timeline or
/// liveness) in its own `[expect]`, so that `aegis-sim run` fails, and not only this test,
/// when the outcome moves: a scenario cannot pass by merely running.
#[test]
fn every_shipped_scenario_states_its_expectations() {
    for entry in std::fs::read_dir(scenarios_dir()).expect("scenarios/ is readable") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_none_or(|x| x != "toml") || aegis_sim::fleet::is_fleet_file(&path) {
            continue;
        }
        let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            s.expect.states_outcome(),
            "{}: [expect] must state status counts or bounds and the breakers' timeline (transitions, transition_count or all_closed_at_end)",
            path.display()
        );
        let r = run(path
            .file_stem()
            .and_then(|x| x.to_str())
            .unwrap_or_default());
        assert_eq!(
            r.expectations_failed,
            Vec::<String>::new(),
            "{}",
            path.display()
        );
    }
}

/// The walkthrough with open_for = 3 s, run by the simulator, gives the same status and the
/// same upstream for each of its 35 requests as the real gateway did (`aegis demo
/// --open-for 3s`, recorded by tests/fixtures/record-walkthrough.py): 401, 10 × 200 then
/// 5 × 429, three /users/fail to user-service-1 opening its circuit, traffic skipping it,
/// and after open_for the probe to user-service-1 succeeding.
#[test]
fn walkthrough_matches_the_recorded_real_gateway() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let s = Scenario::load(&dir.join("walkthrough-open-for-3s.toml")).expect("loads");
    let r = aegis_sim::run(
        &s,
        &RunOptions {
            seed: s.seed,
            trace: true,
            scenario_ref: String::new(),
        },
    )
    .expect("runs");
    assert!(r.ok(), "{:?}", r.invariant_violations);
    let sim: Vec<String> = r
        .trace
        .expect("traced")
        .iter()
        .map(|l| {
            // `http://user-service-1:3001` → `user-service-1`, as the x-upstream header says.
            let up = l.target.as_deref().map_or("-", |t| {
                let h = host(t);
                h.split(':').next().unwrap_or(h)
            });
            format!(
                "{}.{:03}s {} {} {} {up}",
                l.t_ms / 1000,
                l.t_ms % 1000,
                l.client,
                l.path,
                l.status
            )
        })
        .collect();
    let real: Vec<String> = std::fs::read_to_string(dir.join("walkthrough-open-for-3s.real.txt"))
        .expect("recorded")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(real.len(), 35);
    assert_eq!(sim, real);
}
