//! The simulator and the real gateway agree on retries and on active health checks (issue
//! 15's conformance requirement).
//!
//! Retries: one route over a target that resets every request after reading it and a healthy
//! one, `retries = 1`. GETs and POSTs alternate over the two targets; the simulator
//! (`[traffic] retries = true`, a `reset` fault) and the real `aegis` binary in front of real
//! upstream processes give the same status for every request: a GET that met the reset is
//! retried on the other target (200), a POST is not (502). With an empty retry budget,
//! nothing is retried and the GETs that met the reset get 502 too.
//!
//! Health checks: one route over a target that answers 503 to everything (its probes too)
//! for a while and a healthy one. Requests come in three settled phases: before the fault,
//! once the checks have taken the target out, once they have brought it back. The simulator
//! and the gateway give the same (status, target) for every request and the same standing
//! changes in the same order. The probe instants themselves are jittered (the gateway seeds
//! its jitter from the system), so the real run waits for `/gateway/stats` to show each
//! change instead of comparing times; the simulator checks the time bound
//! (`unhealthy_within_bound`) and the test checks its transition instants against it.
#![allow(clippy::disallowed_methods)] // real time: the real run is paced on the wall clock

use std::path::Path;

use aegis_sim::{RunOptions, Scenario};
use aegis_testkit::{Gateway, ScriptedUpstream, Then, request};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// The requests: (method, path), in order, 100 ms apart.
fn requests() -> Vec<(&'static str, String)> {
    (0..12)
        .map(|i| {
            let m = if i % 4 < 2 { "GET" } else { "POST" };
            (m, format!("/x/{i}"))
        })
        .collect()
}

fn budget(empty: bool) -> &'static str {
    if empty {
        "[gateway.retry_budget]\nratio = 0.0\nmin_per_second = 0\n"
    } else {
        ""
    }
}

/// Runs the scenario `text` on seed 1 with a trace; every invariant must hold.
fn simulate(text: &str, name: &str) -> aegis_sim::Report {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let s = Scenario::from_toml(text, name, root).unwrap_or_else(|e| panic!("{e}"));
    let r = aegis_sim::run(
        &s,
        &RunOptions {
            seed: 1,
            trace: true,
            scenario_ref: name.into(),
        },
    )
    .unwrap();
    assert_eq!(r.invariant_violations, Vec::new(), "{}", r.to_text());
    r
}

fn simulated(empty_budget: bool) -> Vec<u16> {
    let mut text = format!(
        "name = \"conformance-retries\"\nseed = 1\n{}\n[gateway.breaker]\nfailure_threshold = 1000\n\n\
         [[gateway.routes]]\npath = \"/\"\ntargets = [\"http://resets:80\", \"http://good:80\"]\nretries = 1\n\n\
         [traffic]\nretries = true\n\n\
         [upstreams.\"http://resets:80\"]\nfaults = [{{ kind = \"reset\", from = \"0s\", until = \"60s\" }}]\n",
        budget(empty_budget)
    );
    for (i, (m, p)) in requests().iter().enumerate() {
        text.push_str(&format!(
            "\n[[requests]]\nat = \"{}ms\"\nmethod = \"{m}\"\npath = \"{p}\"\n",
            100 * (i + 1)
        ));
    }
    let r = simulate(&text, "conformance-retries");
    r.trace.unwrap().iter().map(|l| l.status).collect()
}

fn real(empty_budget: bool) -> Vec<u16> {
    let resets = ScriptedUpstream::start(|_| Then::Close);
    let good = ScriptedUpstream::start(|_| Then::Answer(OK.to_vec()));
    let top = budget(empty_budget).replace("[gateway.", "[");
    let gw = Gateway::start(
        &format!(
            "{top}\n[server]\nlisten = \"127.0.0.1:0\"\n\n[breaker]\nfailure_threshold = 1000\n\n\
             [[routes]]\npath = \"/\"\ntargets = [{:?}, {:?}]\nretries = 1\n",
            resets.url(),
            good.url()
        ),
        &[],
    );
    requests()
        .iter()
        .map(|(m, p)| {
            let body: &[u8] = if *m == "POST" { b"payload" } else { b"" };
            request(gw.addr, m, p, &[], body).unwrap().status
        })
        .collect()
}

#[test]
fn retries_agree_between_simulator_and_gateway() {
    let sim = simulated(false);
    assert!(sim.contains(&502) && sim.contains(&200), "{sim:?}");
    assert_eq!(sim, real(false), "simulator (left) and gateway (right)");
}

#[test]
fn an_empty_budget_agrees_between_simulator_and_gateway() {
    let sim = simulated(true);
    assert_eq!(sim, real(true), "simulator (left) and gateway (right)");
}

/// The health-check comparison's requests: (phase, path); phase 0 before the fault, 1 while
/// the target is out of rotation, 2 after it is back.
fn health_requests() -> Vec<(usize, String)> {
    (0..3)
        .flat_map(|phase| (0..6).map(move |i| (phase, format!("/p{phase}/{i}"))))
        .collect()
}

const HEALTH_CHECK: &str = "health_check = { path = \"/hc\", interval = \"200ms\", timeout = \"100ms\", unhealthy_after = 2, healthy_after = 2 }";

/// (status, target: "flaky" or "good") per request, and the standing changes in order.
type HealthRun = (Vec<(u16, String)>, Vec<(String, bool)>);

fn health_simulated() -> HealthRun {
    // The fault runs from 2 s to 5 s; phase k's requests start at 0.5 s + 3 s × k, 100 ms
    // apart: each phase starts well after the bound (2 × (220 ms + 100 ms) = 640 ms) that
    // the checks have to act within.
    let mut text = format!(
        "name = \"conformance-health\"\nseed = 1\n\n[gateway.breaker]\nfailure_threshold = 1000\n\n\
         [[gateway.routes]]\npath = \"/\"\ntargets = [\"http://flaky:80\", \"http://good:80\"]\n{HEALTH_CHECK}\n\n\
         [upstreams.\"http://flaky:80\"]\nfaults = [{{ kind = \"status\", status = 503, from = \"2s\", until = \"5s\" }}]\n"
    );
    for (phase, path) in health_requests() {
        let i: u64 = path.rsplit('/').next().unwrap().parse().unwrap();
        text.push_str(&format!(
            "\n[[requests]]\nat = \"{}ms\"\nmethod = \"GET\"\npath = \"{path}\"\n",
            500 + 3000 * phase as u64 + 100 * i
        ));
    }
    let r = simulate(&text, "conformance-health");
    let name = |url: &str| {
        url.trim_start_matches("http://")
            .trim_end_matches(":80")
            .to_owned()
    };
    let transitions = r
        .traffic
        .as_ref()
        .map(|t| t.health_transitions.clone())
        .unwrap_or_default();
    // The checks acted within their bound of the fault's start and end (the bound to come
    // back: healthy_after × (interval × 1.1 + timeout) = 640 ms too).
    let at: Vec<u64> = transitions.iter().map(|h| h.t_ms).collect();
    assert!(
        at.len() == 2 && (2000..=2640).contains(&at[0]) && (5000..=5640).contains(&at[1]),
        "{transitions:?}"
    );
    let served = r
        .trace
        .unwrap()
        .iter()
        .map(|l| (l.status, l.target.as_deref().map(name).unwrap_or_default()))
        .collect();
    let changes = transitions
        .iter()
        .map(|h| (name(&h.target), h.healthy))
        .collect();
    (served, changes)
}

fn health_real() -> HealthRun {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    let down = Arc::new(AtomicBool::new(false));
    let flag = down.clone();
    let flaky = ScriptedUpstream::start(move |_| {
        Then::Answer(if flag.load(Ordering::SeqCst) {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nflaky".to_vec()
        })
    });
    let good = ScriptedUpstream::start(|_| {
        Then::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood".to_vec())
    });
    let gw = Gateway::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[breaker]\nfailure_threshold = 1000\n\n\
             [[routes]]\npath = \"/\"\ntargets = [{:?}, {:?}]\n{HEALTH_CHECK}\n",
            flaky.url(),
            good.url()
        ),
        &[],
    );
    let standing = |want: [bool; 2]| {
        aegis_testkit::wait_until(
            &format!("/gateway/stats to show the targets' health as {want:?}"),
            Duration::from_secs(20),
            || {
                let now: Vec<bool> = gw
                    .stats()
                    .iter()
                    .map(|s| s["healthy"].as_bool().unwrap())
                    .collect();
                now == want
            },
        );
    };
    let mut served = Vec::new();
    for (phase, path) in health_requests() {
        if phase == 1 && !down.load(Ordering::SeqCst) {
            down.store(true, Ordering::SeqCst);
            standing([false, true]);
        }
        if phase == 2 && down.load(Ordering::SeqCst) {
            down.store(false, Ordering::SeqCst);
            standing([true, true]);
        }
        let r = request(gw.addr, "GET", &path, &[], b"").unwrap();
        served.push((r.status, String::from_utf8_lossy(&r.body).into_owned()));
    }
    let (flaky_url, good_url) = (flaky.url(), good.url());
    let changes = gw
        .stderr()
        .lines()
        .filter_map(|l| {
            let healthy = if l.contains("passes its health checks") {
                true
            } else if l.contains("fails its health checks") {
                false
            } else {
                return None;
            };
            let who = if l.contains(&format!("target {flaky_url} ")) {
                "flaky"
            } else if l.contains(&format!("target {good_url} ")) {
                "good"
            } else {
                panic!("a health change of an unknown target: {l}")
            };
            Some((who.to_owned(), healthy))
        })
        .collect();
    (served, changes)
}

#[test]
fn health_checks_agree_between_simulator_and_gateway() {
    let sim = health_simulated();
    // Round robin over both, then only the good one, then both again; no request failed.
    let want_targets: Vec<&str> = (0..18)
        .map(|i| match (i / 6, i % 2) {
            (1, _) | (_, 1) => "good",
            _ => "flaky",
        })
        .collect();
    assert_eq!(
        sim.0,
        want_targets
            .iter()
            .map(|t| (200, (*t).to_owned()))
            .collect::<Vec<_>>(),
        "the simulator's (status, target) per request"
    );
    assert_eq!(
        sim.1,
        [("flaky".to_owned(), false), ("flaky".to_owned(), true)]
    );
    let real = health_real();
    assert_eq!(
        sim.0, real.0,
        "simulator (left) and gateway (right): requests"
    );
    assert_eq!(
        sim.1, real.1,
        "simulator (left) and gateway (right): standing changes"
    );
}
