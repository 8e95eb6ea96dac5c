//! The `aegis-sim` binary as a user runs it: `--json` is byte-identical for the same scenario
//! and seed, `fuzz --seeds 200` passes, and a bad scenario file exits 1 with an error that
//! names the key.

use std::process::Output;

mod common;
use common::{root, sim};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn same_scenario_and_seed_give_the_same_json_bytes() {
    for name in ["seed-walkthrough", "instance-dies", "flapping"] {
        let path = format!("scenarios/{name}.toml");
        let a = sim(&["run", &path, "--json"]);
        let b = sim(&["run", &path, "--json"]);
        assert_eq!(a.status.code(), Some(0), "{name}: {}", stderr(&a));
        assert!(!a.stdout.is_empty());
        assert_eq!(
            a.stdout, b.stdout,
            "{name}: --json differs between two runs"
        );
        let doc: serde_json::Value = serde_json::from_slice(&a.stdout).expect("--json is JSON");
        for key in [
            "seed",
            "requests",
            "status_counts",
            "per_target",
            "transitions",
            "invariant_violations",
        ] {
            assert!(doc.get(key).is_some(), "{name}: --json lacks {key}");
        }
    }
    // The seed does matter: instance-dies draws latencies and arrivals from it.
    let s7 = sim(&[
        "run",
        "scenarios/instance-dies.toml",
        "--json",
        "--seed",
        "7",
    ]);
    let s8 = sim(&[
        "run",
        "scenarios/instance-dies.toml",
        "--json",
        "--seed",
        "8",
    ]);
    assert_ne!(s7.stdout, s8.stdout, "another seed, another run");
    let s7b = sim(&[
        "run",
        "scenarios/instance-dies.toml",
        "--json",
        "--seed",
        "7",
    ]);
    assert_eq!(s7.stdout, s7b.stdout);
}

#[test]
fn fuzz_200_seeds_passes() {
    let o = sim(&["fuzz", "--seeds", "200"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "fuzz failed:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
    let out = stdout(&o);
    assert!(
        out.starts_with("fuzz: 200 seeds (1..=200), "),
        "unexpected summary: {out}"
    );
    assert!(out.contains("every invariant held"), "{out}");
}

#[test]
fn fuzz_with_a_base_scenario_keeps_its_gateway() {
    let out = aegis_sim::fuzz::fuzz(
        1,
        20,
        Some(
            &aegis_sim::fuzz::Base::load(&root().join("scenarios/seed-walkthrough.toml"))
                .expect("base loads"),
        ),
    )
    .expect("fuzz runs");
    assert_eq!(out.seeds_run, 20);
    assert!(out.failure.is_none(), "{:?}", out.failure.map(|f| f.0));
    assert!(out.requests > 0);
}

#[test]
fn bad_scenarios_exit_1_naming_the_key() {
    let cases = [
        (
            "bad-rate",
            "load[0].rate: -5 is not a rate between 0 and 10000000 requests per second",
        ),
        (
            "bad-fault-kind",
            "upstreams.\"http://api-1:8000\".faults[0].kind: \"melt\" is not a fault",
        ),
        (
            "bad-target",
            "gateway.routes[0].targets[1]: \"htp://api-2\" is not an http URL",
        ),
        ("bad-unknown-key", "load[0].tokenz: unknown field `tokenz`"),
        (
            "bad-store-fault",
            "store_faults[0].until: \"10s\" must be later than from (\"20s\")",
        ),
        (
            "bad-max-age",
            "idp.max_age: \"1500ms\" is not whole seconds (Cache-Control: max-age counts seconds)",
        ),
    ];
    for (file, want) in cases {
        let path = format!("aegis-sim/tests/fixtures/{file}.toml");
        for cmd in ["check", "run"] {
            let o = sim(&[cmd, &path]);
            assert_eq!(o.status.code(), Some(1), "{cmd} {file}");
            assert!(o.stdout.is_empty(), "{cmd} {file}: nothing on stdout");
            let err = stderr(&o);
            assert!(
                err.starts_with(&format!("error: {path}: {want}")),
                "{cmd} {file}: got {err:?}"
            );
        }
    }
    let missing = sim(&["run", "scenarios/no-such-file.toml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("cannot read scenarios/no-such-file.toml"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn check_accepts_every_shipped_scenario() {
    let cases = [
        (
            "all-down",
            "ok: 1 routes, 2 upstreams, 1 loads, 0 scripted requests\n",
        ),
        (
            "flapping",
            "ok: 1 routes, 2 upstreams, 1 loads, 0 scripted requests\n",
        ),
        (
            "instance-dies",
            "ok: 1 routes, 3 upstreams, 1 loads, 0 scripted requests\n",
        ),
        (
            "redis-outage-closed",
            "ok: 1 routes, 2 upstreams, 2 loads, 0 scripted requests\n",
        ),
        (
            "redis-outage-open",
            "ok: 1 routes, 2 upstreams, 2 loads, 0 scripted requests\n",
        ),
        (
            "seed-walkthrough",
            "ok: 2 routes, 6 upstreams, 0 loads, 10 scripted requests\n",
        ),
    ];
    for (name, want) in cases {
        let o = sim(&["check", &format!("scenarios/{name}.toml")]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        assert_eq!(stdout(&o), want, "{name}");
    }
}

#[test]
fn a_failed_expectation_exits_3() {
    // The walkthrough with a wrong expected count: the run itself is fine, the check is not.
    let text = std::fs::read_to_string(root().join("scenarios/seed-walkthrough.toml"))
        .expect("readable")
        .replace("200 = 26", "200 = 27");
    let s = aegis_sim::Scenario::from_toml(&text, "walk", &root().join("scenarios"))
        .expect("still valid");
    let r = aegis_sim::run(
        &s,
        &aegis_sim::RunOptions {
            seed: 1,
            ..Default::default()
        },
    )
    .expect("runs");
    assert!(!r.ok());
    assert_eq!(
        r.expectations_failed,
        vec!["status 200: expected 27, got 26".to_owned()]
    );
}
