//! A simulated identity provider for JWKS scenarios (`[idp]`): which keys its JWKS document
//! publishes over virtual time, which key signs the clients' tokens, when its endpoint is
//! down, and how long a fetch takes. The gateway side is the policy's own `Jwks` state
//! machine, driven here exactly as the gateway's fetch task drives it: every "fetch now?" is
//! the policy's; a request whose token names an unknown kid is held while the refetch it
//! caused (or one in flight) runs, then checked again, as the gateway does.
//!
//! Keys are HS256 `oct` JWKs (`sim-key-<kid>`), so the simulator can sign tokens for them;
//! the document goes through the same `parse_jwks` as a fetched one.
//!
//! Besides driving the cache, this module checks its schedule against rules restated from
//! the config's values (never from the cache's own fields): one unknown-kid fetch per
//! `jwks_refetch_interval`; a failing fetch retried no sooner than its backoff (1 s, 2 s, 4 s,
//! ... capped at `jwks_min_refresh`); a scheduled refresh no sooner than the fetched keys'
//! refresh time.

use std::sync::Arc;
use std::time::Duration;

use aegis_policy::jwks::{self, FetchReason, Jwks, Refetch};
use aegis_policy::{KeySet, Nanos, Policy, ProviderId};

use crate::report::JwksReport;
use crate::scenario::{IdpSpec, ScenarioError};
use crate::violation::Violation;

/// The secret of a simulated key.
pub fn secret(kid: &str) -> String {
    format!("sim-key-{kid}")
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The schedule rules, from the provider's config.
#[derive(Debug, Clone, Copy)]
struct Rules {
    refetch_interval: u64,
    min_refresh: u64,
    max_refresh: u64,
}

#[derive(Debug)]
pub struct SimIdp {
    pub spec: IdpSpec,
    pub provider: ProviderId,
    providers: usize,
    jwks: Jwks,
    rules: Rules,
    /// When the fetch in flight completes, and its reason.
    pub in_flight_until: Option<u64>,
    in_flight_reason: Option<FetchReason>,
    last_unknown_fetch: Option<u64>,
    /// Consecutive failed fetches, and when the last one failed.
    failures: u32,
    failed_at: u64,
    unscheduled_failure: bool,
    /// When the last good keys are due for a refresh.
    fresh_until: Option<u64>,
    pub report: JwksReport,
    /// Violations found while answering the pipeline (moved to the driver's by the run).
    pub violations: Vec<Violation>,
}

impl SimIdp {
    pub fn new(spec: IdpSpec, policy: &Policy) -> Result<SimIdp, ScenarioError> {
        let want = if spec.provider == "auth" {
            ""
        } else {
            spec.provider.as_str()
        };
        let idx = policy
            .providers()
            .iter()
            .position(|(n, _)| n == want)
            .ok_or_else(|| {
                ScenarioError::new(
                    "idp.provider",
                    format!("{:?} is not an auth provider of the gateway", spec.provider),
                )
            })?;
        let cfg = policy.config().providers()[idx]
            .1
            .jwks
            .clone()
            .ok_or_else(|| {
                ScenarioError::new(
                    "idp.provider",
                    format!("{:?} has no jwks_url", spec.provider),
                )
            })?;
        Ok(SimIdp {
            rules: Rules {
                refetch_interval: ns(cfg.refetch_interval),
                min_refresh: ns(cfg.min_refresh),
                max_refresh: ns(cfg.max_refresh),
            },
            jwks: Jwks::new(cfg, Nanos::ZERO),
            provider: ProviderId(idx),
            providers: policy.providers().len(),
            spec,
            in_flight_until: None,
            in_flight_reason: None,
            last_unknown_fetch: None,
            failures: 0,
            failed_at: 0,
            unscheduled_failure: false,
            fresh_until: None,
            report: JwksReport::default(),
            violations: Vec::new(),
        })
    }

    /// Starts the fetch the cache wants at `t`, if any: when it completes. Checks the fetch
    /// against the schedule rules.
    pub fn poll(&mut self, t: u64, violations: &mut Vec<Violation>) -> Option<u64> {
        let reason = self.jwks.poll_fetch(Nanos(t))?;
        self.report.fetch_log.push((t / 1_000_000, reason.label()));
        let mut broke = |invariant: &'static str, detail: String| {
            violations.push(Violation {
                t_ms: t / 1_000_000,
                invariant,
                detail,
            });
        };
        // Keys past their refresh with no failure pending are refreshed then, not later: a
        // policy that misread the IdP's max-age (or ignored it) is late here.
        if let Some(late) = self.refresh_overdue(t) {
            broke("jwks_refresh_on_time", late);
        }
        if reason == FetchReason::UnknownKid {
            if let Some(last) = self.last_unknown_fetch
                && t.saturating_sub(last) < self.rules.refetch_interval
            {
                broke(
                    "one_unknown_kid_fetch_per_interval",
                    format!(
                        "unknown-kid fetches at {} ms and {} ms",
                        last / 1_000_000,
                        t / 1_000_000
                    ),
                );
            }
            self.last_unknown_fetch = Some(t);
        } else if self.failures > 0 && !self.unscheduled_failure {
            // Backoff: 1 s after the first failure, doubled per failure, at most
            // min_refresh (and never under a second).
            let cap = self.rules.min_refresh.max(1_000_000_000);
            let shift = (self.failures - 1).min(20);
            let pause = 1_000_000_000u64.saturating_mul(1 << shift).min(cap);
            if t < self.failed_at.saturating_add(pause) {
                broke(
                    "jwks_retry_backoff_respected",
                    format!(
                        "a {} fetch at {} ms, {} ms after failure number {} (backoff {} ms)",
                        reason.label(),
                        t / 1_000_000,
                        (t - self.failed_at) / 1_000_000,
                        self.failures,
                        pause / 1_000_000
                    ),
                );
            }
        } else if let Some(fresh) = self.fresh_until
            && t < fresh
        {
            broke(
                "jwks_refresh_not_early",
                format!(
                    "a {} fetch at {} ms though the keys are fresh until {} ms",
                    reason.label(),
                    t / 1_000_000,
                    fresh / 1_000_000
                ),
            );
        }
        let done = t.saturating_add(self.spec.fetch_latency);
        self.in_flight_until = Some(done);
        self.in_flight_reason = Some(reason);
        Some(done)
    }

    /// Why the keys are overdue at `t`: good keys whose refresh was due before `t` (by the
    /// IdP's max-age, clamped as configured), no fetch since, and none failing.
    fn refresh_overdue(&self, t: u64) -> Option<String> {
        let due = self.fresh_until?;
        (t > due && self.failures == 0 && self.in_flight_until.is_none()).then(|| {
            format!(
                "keys due for a refresh at {} ms (max-age {}) still not refetched at {} ms",
                due / 1_000_000,
                self.spec
                    .max_age
                    .map_or("none".to_owned(), |m| format!("{}s", m.as_secs())),
                t / 1_000_000
            )
        })
    }

    /// At the end of a run (virtual time `end`): a refresh that never came.
    pub fn check_end(&self, end: u64, violations: &mut Vec<Violation>) {
        if let Some(late) = self.refresh_overdue(end) {
            violations.push(Violation {
                t_ms: end / 1_000_000,
                invariant: "jwks_refresh_on_time",
                detail: late,
            });
        }
    }

    /// When the cache next wants a fetch, if nothing else happens.
    pub fn next_wake(&self) -> Option<u64> {
        self.jwks.poll_timeout().map(|n| n.0)
    }

    /// The fetch in flight completes at `t`: the kids of the document published at `t`, or
    /// `None` for a failure during an outage.
    pub fn complete(&mut self, t: u64) -> Option<Vec<String>> {
        self.in_flight_until = None;
        let reason = self.in_flight_reason.take();
        let published: Option<Vec<String>> = if self.spec.down_at(t) {
            None
        } else {
            Some(
                self.spec
                    .published_at(t)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            )
        };
        let result = match &published {
            None => Err("connection refused (simulated IdP outage)".to_owned()),
            Some(kids) => {
                let keys: Vec<serde_json::Value> = kids
                    .iter()
                    .map(|kid| {
                        serde_json::json!({"kty": "oct", "kid": kid, "alg": "HS256", "use": "sig",
                            "k": b64url(secret(kid).as_bytes())})
                    })
                    .collect();
                let doc = serde_json::json!({ "keys": keys }).to_string();
                // The header the endpoint sends, read by the policy's own parser.
                let cache_control = self
                    .spec
                    .max_age
                    .map(|m| format!("public, max-age={}", m.as_secs()));
                jwks::parse_jwks(
                    doc.as_bytes(),
                    cache_control.as_deref().and_then(jwks::max_age),
                )
            }
        };
        // What counts as a failure for the schedule: no document, or one without keys.
        let good = published.as_ref().is_some_and(|k| !k.is_empty());
        if good {
            self.report.fetches_ok += 1;
            self.failures = 0;
            let refresh = self.spec.max_age.map_or(self.rules.max_refresh, ns).clamp(
                self.rules.min_refresh,
                self.rules.max_refresh.max(self.rules.min_refresh),
            );
            self.fresh_until = Some(t.saturating_add(refresh));
        } else {
            self.report.fetches_failed += 1;
            self.failures += 1;
            self.failed_at = t;
            // A failed unknown-kid fetch leaves the refresh schedule as it was, when that was
            // sooner than the first retry: no backoff to hold it to.
            self.unscheduled_failure =
                self.failures == 1 && reason == Some(FetchReason::UnknownKid);
        }
        let _ = self.jwks.on_fetched(Nanos(t), result);
        self.report.unknown_kid_fetches = self.jwks.counters.unknown_kid_fetches;
        self.report.unknown_kid_refused = self.jwks.counters.unknown_kid_refused;
        published.filter(|k| !k.is_empty())
    }

    /// The fetched keys at `t`, indexed by provider (what the pipeline reads).
    pub fn keys(&self, t: u64) -> Vec<Option<Arc<KeySet>>> {
        let mut v = vec![None; self.providers];
        v[self.provider.0] = self.jwks.keys(Nanos(t)).cloned();
        v
    }

    /// A token named an unknown kid at `t`: whether the request is held for a refetch.
    /// Invariant `unknown_kid_refetch_when_allowed`: the refetch is refused only within
    /// `jwks_refetch_interval` of the last unknown-kid fetch or while a fetch is in flight.
    pub fn on_unknown_kid(&mut self, t: u64) -> bool {
        let r = self.jwks.on_unknown_kid(Nanos(t));
        self.report.unknown_kid_refused = self.jwks.counters.unknown_kid_refused;
        let refused = matches!(r, Refetch::Refused { .. });
        if refused && !self.refetch_limited(t) {
            self.violations.push(Violation {
                t_ms: t / 1_000_000,
                invariant: "unknown_kid_refetch_when_allowed",
                detail: format!(
                    "an unknown kid at {} ms was refused a refetch; the last unknown-kid fetch began at {:?} ms (interval {} ms)",
                    t / 1_000_000,
                    self.last_unknown_fetch.map(|l| l / 1_000_000),
                    self.rules.refetch_interval / 1_000_000
                ),
            });
        }
        !refused
    }

    /// Whether an unknown-kid fetch started within `jwks_refetch_interval` before `t`, or one
    /// is in flight (the only reasons a token naming a kid the gateway lacks may be refused
    /// without a refetch).
    pub fn refetch_limited(&self, t: u64) -> bool {
        self.in_flight_until.is_some()
            || self
                .last_unknown_fetch
                .is_some_and(|l| t.saturating_sub(l) < self.rules.refetch_interval)
    }
}

fn b64url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64url_without_padding() {
        assert_eq!(super::b64url(b"sim-key-k1"), "c2ltLWtleS1rMQ");
        assert_eq!(super::b64url(b"ab"), "YWI");
    }
}
