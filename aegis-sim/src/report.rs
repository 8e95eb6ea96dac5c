//! The outcome of a run: one serialisable document (`--json`, byte-identical for the same
//! scenario and seed: BTreeMaps and Vecs only, no floats) and its readable rendering.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::violation::Violation;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetReport {
    pub route: String,
    pub target: String,
    /// Requests forwarded to it.
    pub requests: u64,
    /// Outcomes the breaker counted as failures (5xx by default, connect errors, timeouts).
    pub failures: u64,
    pub final_state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransitionReport {
    pub t_ms: u64,
    pub route: String,
    pub target: String,
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitedKey {
    /// `route|ip:10.0.0.1`, `route|user:alice`, `route|header:k`.
    pub key: String,
    /// Requests answered 429.
    pub limited: u64,
}

/// One request as the client saw it (`--trace`): what a conformance test compares with the
/// real gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceLine {
    pub t_ms: u64,
    pub client: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub target: Option<String>,
}

/// What the IdP and the JWKS cache did, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JwksReport {
    pub fetches_ok: u64,
    pub fetches_failed: u64,
    pub unknown_kid_fetches: u64,
    pub unknown_kid_refused: u64,
    /// Requests held while a refetch ran, then checked again.
    pub held: u64,
    /// Virtual ms of every fetch start and its reason.
    pub fetch_log: Vec<(u64, &'static str)>,
}

/// A target's health-check standing changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    pub t_ms: u64,
    pub route: String,
    pub target: String,
    pub healthy: bool,
}

/// Upstream traffic management: retries, health checks, tunnels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrafficReport {
    /// Tries after a request's first.
    pub retries: u64,
    pub health_probes: u64,
    pub health_transitions: Vec<HealthReport>,
    /// Long-lived (tunnel) requests forwarded, and the most open at once.
    pub tunnels: u64,
    pub max_tunnels_open: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    /// Virtual time at which the run ended (every outcome in).
    pub virtual_ms: u64,
    pub requests: u64,
    pub responses: u64,
    pub status_counts: BTreeMap<u16, u64>,
    /// How requests ended: `forwarded`, `upstream_error` (502), `upstream_timeout` (504), or
    /// the policy's reason label.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// 401s by reason (`missing`, `expired`, `bad_signature`, ...).
    pub unauthorized: BTreeMap<&'static str, u64>,
    pub store_errors: u64,
    /// Requests admitted without a rate-limit check because the store failed.
    pub admitted_unchecked: u64,
    pub per_target: Vec<TargetReport>,
    pub transitions: Vec<TransitionReport>,
    pub limited_keys: Vec<LimitedKey>,
    pub invariant_checks: u64,
    pub invariant_violations: Vec<Violation>,
    /// Failed `[expect]` entries of the scenario.
    pub expectations_failed: Vec<String>,
    /// `[idp]` scenarios: the JWKS fetches and unknown-kid decisions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksReport>,
    /// Scenarios with retries, health checks or tunnels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reproduce: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<Vec<TraceLine>>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.invariant_violations.is_empty() && self.expectations_failed.is_empty()
    }

    /// The `--json` document (pretty, newline-terminated).
    pub fn to_json(&self) -> String {
        pretty_json(self)
    }

    /// The readable summary.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "scenario {} (seed {}): {} requests over {} virtual",
            self.scenario,
            self.seed,
            self.requests,
            secs(self.virtual_ms)
        );
        let statuses: Vec<String> = self
            .status_counts
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect();
        let _ = writeln!(o, "  statuses:  {}", statuses.join("  "));
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(o, "  outcomes:  {}", outcomes.join(", "));
        if !self.unauthorized.is_empty() {
            let u: Vec<String> = self
                .unauthorized
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(o, "  401 by reason: {}", u.join(", "));
        }
        if let Some(j) = &self.jwks {
            let _ = writeln!(
                o,
                "  jwks: {} fetches ok, {} failed; unknown kid: {} refetches, {} refused; {} requests held for a refetch",
                j.fetches_ok,
                j.fetches_failed,
                j.unknown_kid_fetches,
                j.unknown_kid_refused,
                j.held
            );
            let log: Vec<String> = j
                .fetch_log
                .iter()
                .map(|(t, why)| format!("{} {why}", secs(*t)))
                .collect();
            let _ = writeln!(o, "  jwks fetches: {}", log.join(", "));
        }
        if let Some(t) = &self.traffic {
            let _ = writeln!(
                o,
                "  traffic: {} retries, {} health probes, {} tunnels (at most {} open)",
                t.retries, t.health_probes, t.tunnels, t.max_tunnels_open
            );
            for h in &t.health_transitions {
                let _ = writeln!(
                    o,
                    "  health: {} {} on {} {}",
                    secs(h.t_ms),
                    h.target,
                    h.route,
                    if h.healthy { "healthy" } else { "UNHEALTHY" }
                );
            }
        }
        if self.store_errors > 0 {
            let _ = writeln!(
                o,
                "  store errors: {} ({} admitted unchecked)",
                self.store_errors, self.admitted_unchecked
            );
        }
        let _ = writeln!(
            o,
            "per target (forwarded, failures, final state; breaker timeline):"
        );
        for t in &self.per_target {
            let _ = writeln!(
                o,
                "  {:<10} {:<32} {:>7} {:>6}  {}",
                t.route, t.target, t.requests, t.failures, t.final_state
            );
            let timeline: Vec<String> = self
                .transitions
                .iter()
                .filter(|x| x.route == t.route && x.target == t.target)
                .map(|x| format!("{} {}", secs(x.t_ms), x.to))
                .collect();
            if !timeline.is_empty() {
                let _ = writeln!(o, "      CLOSED → {}", timeline.join(" → "));
            }
        }
        if !self.limited_keys.is_empty() {
            let _ = writeln!(o, "rate-limited keys:");
            for k in self.limited_keys.iter().take(20) {
                let _ = writeln!(o, "  {:<40} {} × 429", k.key, k.limited);
            }
            if self.limited_keys.len() > 20 {
                let _ = writeln!(o, "  ... and {} more", self.limited_keys.len() - 20);
            }
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
        if let Some(trace) = &self.trace {
            let _ = writeln!(o, "trace (t, client, request, status, target):");
            for l in trace {
                let _ = writeln!(
                    o,
                    "  {:>10} {:<15} {} {} → {} {}",
                    secs(l.t_ms),
                    l.client,
                    l.method,
                    l.path,
                    l.status,
                    l.target.as_deref().unwrap_or("-")
                );
            }
        }
        o
    }
}

/// `12.345s`, from milliseconds, with integer arithmetic.
pub fn secs(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

/// A `--json` document: pretty, newline-terminated, byte-identical for equal values.
pub(crate) fn pretty_json<T: Serialize>(v: &T) -> String {
    let mut s =
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    s.push('\n');
    s
}
