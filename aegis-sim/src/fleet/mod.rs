//! The fleet simulator: many gateways, each with several workers, sharing one Redis-like
//! counter store on virtual time, with store latency and outages (`scenarios/fleet-*.toml`).
//! It models what aegis-tokio's Redis store does on a worker (coalescing a key's concurrent
//! requests into one `step_batch` call, pipelining other keys' calls, the negative cache,
//! `command_timeout`, `on_store_error`, health with reconnect backoff) and checks that no key
//! is ever admitted past its limit however the calls interleave.
//!
//! * [`scenario`]: the file format and its validation;
//! * [`model`]: the event loop (gateways, workers, store, supervisors);
//! * [`check`]: the invariants, from the scenario's numbers alone;
//! * [`fuzz`]: random fleets from seeds.

pub mod check;
pub mod fuzz;
pub mod model;
pub mod scenario;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use aegis_policy::config::{LimitAlgorithm, OnStoreError};
use serde::Serialize;

pub use model::{Bug, Outcome};
pub use scenario::{FleetScenario, is_fleet_file, is_fleet_text};

use crate::report::secs;
use crate::violation::Violation;
use scenario::MS;

/// Per key: what its clients saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyReport {
    pub key: String,
    pub requests: u64,
    pub admitted: u64,
    pub limited: u64,
    pub admitted_unchecked: u64,
    /// Most admissions the store made in one fixed window (fixed_window only).
    pub most_in_a_window: u64,
}

/// The outcome of a fleet run: one serialisable document (`--json`, byte-identical for the
/// same scenario and seed) and its readable rendering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetReport {
    pub scenario: String,
    pub seed: u64,
    pub gateways: u32,
    pub workers: u32,
    pub algorithm: &'static str,
    pub limit: String,
    pub on_store_error: &'static str,
    pub virtual_ms: u64,
    pub requests: u64,
    pub status_counts: BTreeMap<u16, u64>,
    pub outcomes: BTreeMap<Outcome, u64>,
    pub store: model::Counts,
    /// Store health transitions the gateways logged (one `down` and one `up` per outage).
    pub health: Vec<model::HealthLog>,
    pub keys: Vec<KeyReport>,
    pub invariant_checks: u64,
    pub invariant_violations: Vec<Violation>,
    pub expectations_failed: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reproduce: Option<String>,
}

impl FleetReport {
    pub fn ok(&self) -> bool {
        self.invariant_violations.is_empty() && self.expectations_failed.is_empty()
    }

    pub fn to_json(&self) -> String {
        crate::report::pretty_json(self)
    }

    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "fleet scenario {} (seed {}): {} gateways × {} workers, one store; {} {} per key, on_store_error = {}",
            self.scenario,
            self.seed,
            self.gateways,
            self.workers,
            self.algorithm,
            self.limit,
            self.on_store_error
        );
        let _ = writeln!(
            o,
            "  {} requests over {} virtual",
            self.requests,
            secs(self.virtual_ms)
        );
        let s: Vec<String> = self
            .status_counts
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect();
        let _ = writeln!(o, "  statuses:  {}", s.join("  "));
        let s: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| {
                format!(
                    "{} {v}",
                    serde_json::to_value(k)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                )
            })
            .collect();
        let _ = writeln!(o, "  outcomes:  {}", s.join(", "));
        let c = &self.store;
        let _ = writeln!(
            o,
            "  store: {} calls for {} requests sent ({} coalesced, largest batch {}, {} pipelined); {} timed out ({} of them applied), {} errors, {} answered at once while down",
            c.calls,
            c.calls + c.coalesced,
            c.coalesced,
            c.max_batch,
            c.pipelined,
            c.timeouts,
            c.applied_after_timeout,
            c.call_errors,
            c.failed_fast
        );
        for h in &self.health {
            let _ = writeln!(
                o,
                "  {} gateway {} store {} ({})",
                secs(h.t_ms),
                h.gateway,
                h.event,
                h.why
            );
        }
        let _ = writeln!(
            o,
            "per key (requests, admitted, 429, admitted unchecked, most in one window):"
        );
        for k in &self.keys {
            let _ = writeln!(
                o,
                "  {:<12} {:>7} {:>7} {:>7} {:>7} {:>7}",
                k.key, k.requests, k.admitted, k.limited, k.admitted_unchecked, k.most_in_a_window
            );
        }
        if self.invariant_violations.is_empty() {
            let _ = writeln!(o, "invariants: all held ({} checks)", self.invariant_checks);
        } else {
            let _ = writeln!(o, "INVARIANT VIOLATED:");
            for v in &self.invariant_violations {
                let _ = writeln!(o, "  at {}: {}: {}", secs(v.t_ms), v.invariant, v.detail);
            }
        }
        for e in &self.expectations_failed {
            let _ = writeln!(o, "EXPECTATION FAILED: {e}");
        }
        if let Some(r) = &self.reproduce {
            let _ = writeln!(o, "reproduce: {r}");
        }
        o
    }
}

/// Runs a fleet scenario with `seed` (and, in tests, a planted bug).
pub fn run(
    sc: &FleetScenario,
    seed: u64,
    bug: Option<Bug>,
    scenario_ref: &str,
) -> Result<FleetReport, String> {
    let out = model::Model::new(sc, seed, bug)?.run();
    let checked = check::check(sc, &out.requests);
    let mut status_counts = BTreeMap::new();
    let mut outcomes = BTreeMap::new();
    let mut keys: BTreeMap<u32, KeyReport> = BTreeMap::new();
    let mut windows: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    for r in &out.requests {
        let k = keys.entry(r.key).or_insert_with(|| KeyReport {
            key: check::key_name(r.key),
            requests: 0,
            admitted: 0,
            limited: 0,
            admitted_unchecked: 0,
            most_in_a_window: 0,
        });
        k.requests += 1;
        let Some(&(_, outcome)) = r.answers.first() else {
            continue;
        };
        *status_counts.entry(outcome.status()).or_insert(0) += 1;
        *outcomes.entry(outcome).or_insert(0) += 1;
        match outcome {
            Outcome::Admitted => {
                k.admitted += 1;
                if sc.limit.algorithm == LimitAlgorithm::FixedWindow {
                    let w = r.decided_wall_ms.unwrap_or(r.wall_ms) / sc.limit.window_ms;
                    *windows.entry((r.key, w)).or_insert(0) += 1;
                }
            }
            Outcome::Limited | Outcome::CachedRefusal => k.limited += 1,
            Outcome::AdmittedUnchecked => k.admitted_unchecked += 1,
            Outcome::DeniedStoreError => {}
        }
    }
    for ((key, _), n) in windows {
        if let Some(k) = keys.get_mut(&key) {
            k.most_in_a_window = k.most_in_a_window.max(n);
        }
    }
    let mut report = FleetReport {
        scenario: sc.name.clone(),
        seed,
        gateways: sc.gateways,
        workers: sc.workers,
        algorithm: match sc.limit.algorithm {
            LimitAlgorithm::FixedWindow => "fixed_window",
            LimitAlgorithm::Gcra => "gcra",
        },
        limit: format!("{} per {}ms", sc.limit.max, sc.limit.window_ms),
        on_store_error: match sc.on_store_error {
            OnStoreError::Allow => "allow",
            OnStoreError::Deny => "deny",
        },
        virtual_ms: out.end / MS,
        requests: out.requests.len() as u64,
        status_counts,
        outcomes,
        store: out.counts,
        health: out.health,
        keys: keys.into_values().collect(),
        invariant_checks: checked.checks,
        invariant_violations: checked.violations,
        expectations_failed: Vec::new(),
        reproduce: None,
    };
    report.expectations_failed = expectations(sc, &report);
    if !report.ok() && !scenario_ref.is_empty() {
        report.reproduce = Some(format!("aegis-sim run {scenario_ref} --seed {seed}"));
    }
    Ok(report)
}

fn expectations(sc: &FleetScenario, r: &FleetReport) -> Vec<String> {
    let e = &sc.expect;
    let mut failed = Vec::new();
    if let Some(n) = e.requests
        && n != r.requests
    {
        failed.push(format!("requests: expected {n}, got {}", r.requests));
    }
    for (code, n) in &e.status_counts {
        let got = r.status_counts.get(code).copied().unwrap_or(0);
        if got != *n {
            failed.push(format!("status {code}: expected {n}, got {got}"));
        }
    }
    let at_least = [
        ("coalesced", e.coalesced_at_least, r.store.coalesced),
        ("pipelined", e.pipelined_at_least, r.store.pipelined),
        (
            "cached refusals",
            e.cached_refusals_at_least,
            r.outcomes
                .get(&Outcome::CachedRefusal)
                .copied()
                .unwrap_or(0),
        ),
        (
            "calls applied after their timeout",
            e.applied_after_timeout_at_least,
            r.store.applied_after_timeout,
        ),
    ];
    for (what, want, got) in at_least {
        if let Some(want) = want
            && got < want
        {
            failed.push(format!("{what}: expected at least {want}, got {got}"));
        }
    }
    if let Some(n) = e.admitted_unchecked {
        let got = r
            .outcomes
            .get(&Outcome::AdmittedUnchecked)
            .copied()
            .unwrap_or(0);
        if got != n {
            failed.push(format!("admitted unchecked: expected {n}, got {got}"));
        }
    }
    if let Some(n) = e.outages_logged {
        let got = r.health.iter().filter(|h| h.event == "down").count() as u64;
        if got != n {
            failed.push(format!("store outages logged: expected {n}, got {got}"));
        }
    }
    failed
}
