//! The simulator tells the truth about the gateway: `scenarios/seed-walkthrough.toml`, with a
//! short `open_for`, runs through `aegis-sim` and against the real `aegis` binary in front of
//! six real upstreams, and both give the same status *and* the same target for every request.
#![allow(clippy::disallowed_methods)] // real time: the real run is paced on the wall clock

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use aegis_sim::{RunOptions, Scenario};
use aegis_testkit::{Gateway, Upstream, bearer, mint_token, wait_for_window_room};
use serde_json::json;

const SECRET: &str = "your_secret_key_here";

/// The shipped scenario with `open_for = "3s"` and its later steps moved accordingly: the
/// circuit opens at 13.5 s, the "meanwhile" traffic runs at 14 s, the probe round at 18 s.
fn short_scenario() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("scenarios/seed-walkthrough.toml")).unwrap();
    let text = text.split("[expect]").next().unwrap().to_owned();
    let swap = |t: String, from: &str, to: &str| {
        assert!(
            t.contains(from),
            "seed-walkthrough.toml no longer has {from:?}"
        );
        t.replacen(from, to, 1)
    };
    let text = swap(text, "open_for = \"60s\"", "open_for = \"3s\"");
    let text = swap(
        text,
        "at = \"20s\"\nevery = \"1s\"",
        "at = \"14s\"\nevery = \"100ms\"",
    );
    swap(text, "at = \"75s\"", "at = \"18s\"")
}

#[test]
fn seed_walkthrough_matches_between_simulator_and_gateway() {
    // 1. The simulator's answer, request by request.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scenario = Scenario::from_toml(&short_scenario(), "seed-walkthrough-3s", root)
        .unwrap_or_else(|e| panic!("{e}"));
    let report = aegis_sim::run(
        &scenario,
        &RunOptions {
            seed: 1,
            trace: true,
            scenario_ref: "seed-walkthrough-3s".into(),
        },
    )
    .unwrap();
    assert!(report.ok(), "{}", report.to_json());
    let trace = report.trace.expect("trace requested");
    assert_eq!(trace.len(), 35);
    let sim: Vec<(u16, Option<String>)> = trace
        .iter()
        .map(|l| {
            let name = l.target.as_ref().map(|t| {
                t.trim_start_matches("http://")
                    .split(':')
                    .next()
                    .unwrap()
                    .to_owned()
            });
            (l.status, name)
        })
        .collect();

    // 2. The same requests, in the same order and on the same schedule, through the real
    //    gateway. The config is the scenario's, with real addresses; the loopback client
    //    speaks for the scenario's client IPs through X-Forwarded-For from a trusted proxy.
    let ups: Vec<Upstream> = ["user", "product"]
        .iter()
        .flat_map(|k| (1..=3).map(move |i| Upstream::start(&format!("{k}-service-{i}"))))
        .collect();
    let list = |v: &[Upstream]| {
        v.iter()
            .map(|u| format!("{:?}", u.url()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
trusted_proxies = ["127.0.0.1/32"]

[auth]
secret = "{SECRET}"

[breaker]
failure_threshold = 3
open_for = "3s"

[[routes]]
path = "/users"
targets = [{}]
auth = true
rate_limit = {{ max = 10, window = "60s" }}

[[routes]]
path = "/product"
targets = [{}]
auth = true
"#,
        list(&ups[..3]),
        list(&ups[3..]),
    );
    let gw = Gateway::start(&config, &[("RUST_LOG", "warn")]);
    let token = bearer(&mint_token(SECRET, json!({"userId": "test-123"})));
    // The scenario's 15 fast requests must share one fixed window, as they do in the sim.
    wait_for_window_room(Duration::from_secs(60), Duration::from_secs(25));

    let start = Instant::now();
    let mut real = Vec::new();
    for (l, step) in trace.iter().zip(&scenario_tokens(&trace)) {
        let due = start + Duration::from_millis(l.t_ms);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let mut headers = vec![("X-Forwarded-For", l.client.as_str())];
        if *step {
            headers.push(("Authorization", token.as_str()));
        }
        let r = gw.get(&l.path, &headers);
        real.push((r.status, r.header("x-upstream").map(str::to_owned)));
    }
    for (i, (s, r)) in sim.iter().zip(&real).enumerate() {
        assert_eq!(
            s, r,
            "request {i} ({} {} at {} ms): simulator {s:?}, gateway {r:?}",
            trace[i].client, trace[i].path, trace[i].t_ms
        );
    }
    assert_eq!(sim, real);
}

/// Which requests carry a token: in seed-walkthrough only the very first one has none.
fn scenario_tokens(trace: &[aegis_sim::report::TraceLine]) -> Vec<bool> {
    (0..trace.len()).map(|i| i != 0).collect()
}
