//! A simulated identity provider for JWKS scenarios (`[idp]`): which keys its JWKS document
//! publishes over virtual time, which key signs the clients' tokens, when its endpoint is
//! down, and how long a fetch takes. The gateway side is the policy's own `Jwks` state
//! machine, driven here exactly as the gateway's fetch task drives it: every "fetch now?" is
//! the policy's; a request whose token names an unknown kid is held while the refetch it
//! caused (or one in flight) runs, then checked again, as the gateway does.
//!
//! Keys are HS256 `oct` JWKs (`sim-key-<kid>`), so the simulator can sign tokens for them;
//! the document goes through the same `parse_jwks` as a fetched one.

use std::sync::Arc;

use aegis_policy::jwks::{self, FetchReason, Jwks, Refetch};
use aegis_policy::{KeySet, Nanos, Policy, ProviderId};

use crate::driver::Violation;
use crate::report::JwksReport;
use crate::scenario::{IdpSpec, ScenarioError};

/// The secret of a simulated key.
pub fn secret(kid: &str) -> String {
    format!("sim-key-{kid}")
}

#[derive(Debug)]
pub struct SimIdp {
    spec: IdpSpec,
    pub provider: ProviderId,
    providers: usize,
    jwks: Jwks,
    refetch_interval: u64,
    /// When the fetch in flight completes.
    pub in_flight_until: Option<u64>,
    last_unknown_fetch: Option<u64>,
    pub report: JwksReport,
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
            refetch_interval: u64::try_from(cfg.refetch_interval.as_nanos()).unwrap_or(u64::MAX),
            jwks: Jwks::new(cfg, Nanos::ZERO),
            provider: ProviderId(idx),
            providers: policy.providers().len(),
            spec,
            in_flight_until: None,
            last_unknown_fetch: None,
            report: JwksReport::default(),
        })
    }

    /// The key ids that sign tokens at `t`.
    pub fn signing_kid(&self, t: u64) -> &str {
        self.spec
            .signing
            .iter()
            .rev()
            .find(|(_, from)| *from <= t)
            .or(self.spec.signing.first())
            .map_or("", |(k, _)| k.as_str())
    }

    /// Starts the fetch the cache wants at `t`, if any: when it completes. A second
    /// unknown-kid fetch within `jwks_refetch_interval` is a violation.
    pub fn poll(&mut self, t: u64, violations: &mut Vec<Violation>) -> Option<u64> {
        let reason = self.jwks.poll_fetch(Nanos(t))?;
        self.report.fetch_log.push((t / 1_000_000, reason.label()));
        if reason == FetchReason::UnknownKid {
            if let Some(last) = self.last_unknown_fetch
                && t.saturating_sub(last) < self.refetch_interval
            {
                violations.push(Violation {
                    t_ms: t / 1_000_000,
                    invariant: "one_unknown_kid_fetch_per_interval",
                    detail: format!(
                        "unknown-kid fetches at {} ms and {} ms",
                        last / 1_000_000,
                        t / 1_000_000
                    ),
                });
            }
            self.last_unknown_fetch = Some(t);
        }
        let done = t.saturating_add(self.spec.fetch_latency);
        self.in_flight_until = Some(done);
        Some(done)
    }

    /// When the cache next wants a fetch, if nothing else happens.
    pub fn next_wake(&self) -> Option<u64> {
        self.jwks.poll_timeout().map(|n| n.0)
    }

    /// The fetch in flight completes at `t`: the document published at `t`, or a failure
    /// during an outage.
    pub fn complete(&mut self, t: u64) {
        self.in_flight_until = None;
        let down = self.spec.outages.iter().any(|(f, u)| *f <= t && t < *u);
        let result = if down {
            Err("connection refused (simulated IdP outage)".to_owned())
        } else {
            let keys: Vec<serde_json::Value> = self
                .spec
                .keys
                .iter()
                .filter(|(_, f, u)| *f <= t && t < *u)
                .map(|(kid, _, _)| {
                    serde_json::json!({"kty": "oct", "kid": kid, "alg": "HS256", "use": "sig",
                        "k": b64url(secret(kid).as_bytes())})
                })
                .collect();
            let doc = serde_json::json!({ "keys": keys }).to_string();
            jwks::parse_jwks(doc.as_bytes(), self.spec.max_age)
        };
        match &result {
            Ok(_) => self.report.fetches_ok += 1,
            Err(_) => self.report.fetches_failed += 1,
        }
        let _ = self.jwks.on_fetched(Nanos(t), result);
        self.report.unknown_kid_fetches = self.jwks.counters.unknown_kid_fetches;
        self.report.unknown_kid_refused = self.jwks.counters.unknown_kid_refused;
    }

    /// The fetched keys at `t`, indexed by provider (what the pipeline reads).
    pub fn keys(&self, t: u64) -> Vec<Option<Arc<KeySet>>> {
        let mut v = vec![None; self.providers];
        v[self.provider.0] = self.jwks.keys(Nanos(t)).cloned();
        v
    }

    /// A token named an unknown kid at `t`: whether the request is held for a refetch.
    pub fn on_unknown_kid(&mut self, t: u64) -> bool {
        let r = self.jwks.on_unknown_kid(Nanos(t));
        self.report.unknown_kid_refused = self.jwks.counters.unknown_kid_refused;
        !matches!(r, Refetch::Refused { .. })
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
