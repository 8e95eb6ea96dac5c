//! Keys from an identity provider's JWKS URL: the document's parsing, and the state machine
//! that decides when to fetch it. The fetch itself is the driver's (the gateway's HTTP client,
//! the simulator's virtual IdP); every "fetch now?" is answered here, with time passed in.
//!
//! ```text
//!            new(now) ── poll_fetch ──▶ Startup ─┐
//!                                                ▼
//!   ┌──────────────── on_fetched(Ok) ◀── fetch in flight ──▶ on_fetched(Err) ───────┐
//!   ▼                                       ▲  ▲  ▲                                 ▼
//! FRESH until fetched + clamp(max-age,      │  │  └─ Retry: backoff 1 s, 2 s, ... ◀─ FAILING
//!   min_refresh, max_refresh) ── Scheduled ─┘  │     up to min_refresh; the last good keys
//!   on_unknown_kid: Started unless an unknown- │     serve until fresh_until + max_stale,
//!   kid fetch began within refetch_interval ───┘     then none (KeysUnavailable)
//! ```
//!
//! Calling contract: call [`Jwks::poll_fetch`] whenever time passes or [`Jwks::on_unknown_kid`]
//! said `Started`; each `Some` it returns is one fetch to run, whose result goes to
//! [`Jwks::on_fetched`] (exactly once). Sleep until [`Jwks::poll_timeout`] otherwise. At most
//! one fetch is in flight.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use serde_json::Value;

pub use crate::auth::JwksConfig;
use crate::auth::{JwtAlgorithm, Key, KeyFamily, KeySet};
use crate::time::Nanos;

/// First pause after a failed fetch; doubled per failure up to `min_refresh`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Why a fetch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchReason {
    Startup,
    Scheduled,
    Retry,
    UnknownKid,
}

impl FetchReason {
    pub fn label(self) -> &'static str {
        match self {
            FetchReason::Startup => "startup",
            FetchReason::Scheduled => "scheduled",
            FetchReason::Retry => "retry",
            FetchReason::UnknownKid => "unknown_kid",
        }
    }
}

/// The answer to a token with an unknown `kid`.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refetch {
    /// A fetch was asked for ([`Jwks::poll_fetch`] returns it): wait for it, then check again.
    Started,
    /// A fetch is already running: wait for it.
    InFlight,
    /// An unknown-kid fetch began less than `refetch_interval` ago: not before `next`.
    Refused { next: Nanos },
}

/// A successful fetch: the parsed keys and the response's `Cache-Control: max-age`.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub keys: KeySet,
    pub max_age: Option<Duration>,
    /// Keys of the document left out (unknown `kty`/`crv`/`alg`, `use` other than `sig`), with
    /// why: for the log.
    pub skipped: Vec<String>,
}

/// What a fetch result changed, for the driver's log (it logs a failure once, and the
/// recovery once).
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// New keys; `recovered`: fetches had been failing.
    Updated {
        keys: usize,
        recovered: bool,
        next: Nanos,
    },
    /// The first failure after a success (or the first fetch failing).
    FirstFailure { error: String, retry: Nanos },
    /// Still failing.
    StillFailing { retry: Nanos },
}

/// The JWKS cache of one provider. See the module docs for the diagram and the contract.
#[derive(Debug, Clone)]
pub struct Jwks {
    cfg: JwksConfig,
    keys: Option<Arc<KeySet>>,
    /// The current keys are fresh until then (the next refresh is due).
    fresh_until: Nanos,
    /// The last good keys are used until then (`fresh_until + max_stale`).
    usable_until: Nanos,
    fetched_at: Option<Nanos>,
    /// When the next scheduled (or retry) fetch is due.
    next_fetch: Nanos,
    next_reason: FetchReason,
    in_flight: Option<FetchReason>,
    wanted: bool,
    last_unknown_kid_fetch: Option<Nanos>,
    failures: u32,
    last_error: Option<String>,
    pub counters: JwksCounters,
}

/// Totals for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JwksCounters {
    pub fetch_ok: u64,
    pub fetch_failed: u64,
    pub unknown_kid_fetches: u64,
    pub unknown_kid_refused: u64,
}

/// A snapshot for `/gateway/health` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksStatus {
    /// Usable keys now.
    pub ready: bool,
    pub keys: usize,
    /// Past its refresh time (the last refresh failed) but still within `max_stale`.
    pub stale: bool,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// Time since the last successful fetch.
    pub age: Option<Duration>,
    pub counters: JwksCounters,
}

impl Jwks {
    /// A cache with no keys; the first [`Jwks::poll_fetch`] returns [`FetchReason::Startup`].
    pub fn new(cfg: JwksConfig, now: Nanos) -> Jwks {
        Jwks {
            cfg,
            keys: None,
            fresh_until: Nanos::ZERO,
            usable_until: Nanos::ZERO,
            fetched_at: None,
            next_fetch: now,
            next_reason: FetchReason::Startup,
            in_flight: None,
            wanted: false,
            last_unknown_kid_fetch: None,
            failures: 0,
            last_error: None,
            counters: JwksCounters::default(),
        }
    }

    pub fn config(&self) -> &JwksConfig {
        &self.cfg
    }

    /// A fetch to run now, if one is due (at most one runs at a time).
    pub fn poll_fetch(&mut self, now: Nanos) -> Option<FetchReason> {
        if self.in_flight.is_some() {
            return None;
        }
        let reason = if self.wanted {
            self.wanted = false;
            self.last_unknown_kid_fetch = Some(now);
            self.counters.unknown_kid_fetches += 1;
            FetchReason::UnknownKid
        } else if now >= self.next_fetch {
            self.next_reason
        } else {
            return None;
        };
        self.in_flight = Some(reason);
        Some(reason)
    }

    /// When [`Jwks::poll_fetch`] will next return a fetch, if nothing else happens (`None`:
    /// a fetch is in flight or wanted now).
    pub fn poll_timeout(&self) -> Option<Nanos> {
        if self.in_flight.is_some() || self.wanted {
            return None;
        }
        Some(self.next_fetch)
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// A token named a `kid` that no key has: fetch now, unless an unknown-kid fetch began
    /// within `refetch_interval` (startup and scheduled fetches do not count).
    pub fn on_unknown_kid(&mut self, now: Nanos) -> Refetch {
        if self.in_flight.is_some() || self.wanted {
            return Refetch::InFlight;
        }
        if let Some(last) = self.last_unknown_kid_fetch {
            let next = last.saturating_add(self.cfg.refetch_interval);
            if now < next {
                self.counters.unknown_kid_refused += 1;
                return Refetch::Refused { next };
            }
        }
        self.wanted = true;
        Refetch::Started
    }

    /// The result of the fetch [`Jwks::poll_fetch`] started.
    pub fn on_fetched(&mut self, now: Nanos, result: Result<Fetched, String>) -> FetchOutcome {
        self.in_flight = None;
        let result = result.and_then(|f| {
            if f.keys.is_empty() {
                let why = if f.skipped.is_empty() {
                    "the document holds no keys".to_owned()
                } else {
                    format!(
                        "the document holds no usable key ({})",
                        f.skipped.join("; ")
                    )
                };
                Err(why)
            } else {
                Ok(f)
            }
        });
        match result {
            Ok(f) => {
                self.counters.fetch_ok += 1;
                let recovered = self.failures > 0 && self.keys.is_some();
                let refresh = f.max_age.unwrap_or(self.cfg.max_refresh).clamp(
                    self.cfg.min_refresh,
                    self.cfg.max_refresh.max(self.cfg.min_refresh),
                );
                let fresh_until = now.saturating_add(refresh);
                let n = f.keys.len();
                self.keys = Some(Arc::new(f.keys));
                self.fresh_until = fresh_until;
                self.usable_until = fresh_until.saturating_add(self.cfg.max_stale);
                self.fetched_at = Some(now);
                self.next_fetch = fresh_until;
                self.next_reason = FetchReason::Scheduled;
                self.failures = 0;
                self.last_error = None;
                FetchOutcome::Updated {
                    keys: n,
                    recovered,
                    next: fresh_until,
                }
            }
            Err(e) => {
                self.counters.fetch_failed += 1;
                self.failures = self.failures.saturating_add(1);
                let shift = (self.failures - 1).min(20);
                let pause = FIRST_RETRY
                    .saturating_mul(1 << shift)
                    .min(self.cfg.min_refresh.max(FIRST_RETRY));
                let retry = now.saturating_add(pause);
                // An unknown-kid fetch that fails leaves the schedule as it was, unless that
                // was sooner than the retry.
                self.next_fetch = if self.failures == 1 && self.next_fetch > now {
                    self.next_fetch.min(retry)
                } else {
                    retry
                };
                self.next_reason = if self.keys.is_some() || self.fetched_at.is_some() {
                    FetchReason::Retry
                } else {
                    // Until the first success, every fetch is still the startup fetch.
                    FetchReason::Startup
                };
                let first = self.failures == 1;
                self.last_error = Some(e.clone());
                if first {
                    FetchOutcome::FirstFailure {
                        error: e,
                        retry: self.next_fetch,
                    }
                } else {
                    FetchOutcome::StillFailing {
                        retry: self.next_fetch,
                    }
                }
            }
        }
    }

    /// The keys to verify with at `now`: the last good set until `max_stale` past its refresh
    /// time, then none.
    pub fn keys(&self, now: Nanos) -> Option<&Arc<KeySet>> {
        self.keys.as_ref().filter(|_| now < self.usable_until)
    }

    /// When the current keys stop being usable (`None`: there are none).
    pub fn usable_until(&self) -> Option<Nanos> {
        self.keys.as_ref().map(|_| self.usable_until)
    }

    pub fn status(&self, now: Nanos) -> JwksStatus {
        let ready = self.keys(now).is_some();
        JwksStatus {
            ready,
            keys: self.keys(now).map_or(0, |k| k.len()),
            stale: ready && self.failures > 0 && now >= self.fresh_until,
            consecutive_failures: self.failures,
            last_error: self.last_error.clone(),
            age: self.fetched_at.map(|t| now.since(t)),
            counters: self.counters,
        }
    }
}

/// `max-age` of a `Cache-Control` value (`no-cache`/`no-store` count as zero, so the floor
/// applies); `None` when it has none.
pub fn max_age(cache_control: &str) -> Option<Duration> {
    let mut out = None;
    for d in cache_control.split(',') {
        let d = d.trim();
        let (name, value) = d.split_once('=').unwrap_or((d, ""));
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "max-age" => {
                let v = value.trim().trim_matches('"');
                if let Ok(secs) = v.parse::<u64>() {
                    out = Some(Duration::from_secs(secs));
                }
            }
            "no-cache" | "no-store" => return Some(Duration::ZERO),
            _ => {}
        }
    }
    out
}

/// Parses a JWKS document (`{"keys": [...]}`). Keys this gateway cannot use are skipped and
/// named in [`Fetched::skipped`], never fatal: an IdP may publish encryption keys or new key
/// types beside its signing keys. A document that is not a JWKS is an error.
pub fn parse_jwks(body: &[u8], max_age: Option<Duration>) -> Result<Fetched, String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the JWKS has no \"keys\" array")?;
    let mut keys = KeySet::default();
    let mut skipped = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let kid = v.get("kid").and_then(Value::as_str);
        let name = kid.map_or_else(|| format!("keys[{i}]"), |k| format!("kid {k:?}"));
        match jwk_key(v) {
            Ok(k) => {
                if let Some(kid) = &k.kid
                    && keys.by_kid(kid).is_some()
                {
                    skipped.push(format!("{name}: a second key with this kid"));
                    continue;
                }
                keys.keys.push(k);
            }
            Err(why) => skipped.push(format!("{name}: {why}")),
        }
    }
    Ok(Fetched {
        keys,
        max_age,
        skipped,
    })
}

fn jwk_key(v: &Value) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(v.clone()).map_err(|e| {
        let kty = v.get("kty").and_then(Value::as_str).unwrap_or("?");
        format!("unsupported key (kty {kty:?}): {e}")
    })?;
    if let Some(u) = &jwk.common.public_key_use
        && *u != PublicKeyUse::Signature
    {
        return Err("not a signing key (use is not \"sig\")".into());
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => {
            Some(jwk_alg(a).ok_or_else(|| format!("alg {a:?} is not a signature algorithm here"))?)
        }
    };
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyFamily::EcP256,
            EllipticCurve::P384 => KeyFamily::EcP384,
            ref c => return Err(format!("curve {c:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => KeyFamily::Ed25519,
            ref c => return Err(format!("curve {c:?} is not supported")),
        },
        AlgorithmParameters::OctetKey(_) => KeyFamily::Hmac,
        _ => return Err("unsupported key type".into()),
    };
    if let Some(a) = alg
        && a.family() != family
    {
        return Err(format!("alg {} does not fit a {}", a.name(), family.name()));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(Key::new(jwk.common.key_id.clone(), alg, family, key))
}

fn jwk_alg(a: KeyAlgorithm) -> Option<JwtAlgorithm> {
    JwtAlgorithm::from_name(&format!("{a:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn cfg() -> JwksConfig {
        JwksConfig {
            url: "https://idp/jwks".into(),
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(600),
            refetch_interval: Duration::from_secs(10),
            max_stale: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            ready_timeout: Duration::from_secs(10),
        }
    }

    fn doc(kids: &[&str]) -> Fetched {
        let keys: Vec<Value> = kids
            .iter()
            .map(|k| serde_json::json!({"kty": "oct", "kid": k, "k": "c2VjcmV0", "alg": "HS256"}))
            .collect();
        parse_jwks(
            serde_json::json!({"keys": keys}).to_string().as_bytes(),
            None,
        )
        .unwrap()
    }

    fn at(s: u64) -> Nanos {
        Nanos(s * S)
    }

    #[test]
    fn startup_then_scheduled_by_max_age_within_floor_and_ceiling() {
        let mut j = Jwks::new(cfg(), at(0));
        assert!(j.keys(at(0)).is_none());
        assert_eq!(j.poll_fetch(at(0)), Some(FetchReason::Startup));
        assert_eq!(j.poll_fetch(at(0)), None, "one fetch at a time");
        let mut f = doc(&["a"]);
        f.max_age = Some(Duration::from_secs(5));
        assert!(matches!(
            j.on_fetched(at(1), Ok(f)),
            FetchOutcome::Updated { keys: 1, .. }
        ));
        // max-age 5 s is raised to the 60 s floor.
        assert_eq!(j.poll_timeout(), Some(at(61)));
        assert_eq!(j.poll_fetch(at(60)), None);
        assert_eq!(j.poll_fetch(at(61)), Some(FetchReason::Scheduled));
        let mut f = doc(&["a"]);
        f.max_age = Some(Duration::from_secs(86_400));
        let _ = j.on_fetched(at(62), Ok(f));
        // A day is lowered to the 600 s ceiling; no max-age means the ceiling too.
        assert_eq!(j.poll_timeout(), Some(at(662)));
    }

    #[test]
    fn unknown_kid_refetches_at_most_once_per_interval() {
        let mut j = Jwks::new(cfg(), at(0));
        let _ = j.poll_fetch(at(0));
        let _ = j.on_fetched(at(0), Ok(doc(&["a"])));
        assert_eq!(j.on_unknown_kid(at(5)), Refetch::Started);
        assert_eq!(j.on_unknown_kid(at(5)), Refetch::InFlight);
        assert_eq!(j.poll_fetch(at(5)), Some(FetchReason::UnknownKid));
        assert_eq!(j.on_unknown_kid(at(5)), Refetch::InFlight);
        let _ = j.on_fetched(at(5), Ok(doc(&["a", "b"])));
        assert_eq!(j.on_unknown_kid(at(6)), Refetch::Refused { next: at(15) });
        assert_eq!(j.on_unknown_kid(at(14)), Refetch::Refused { next: at(15) });
        assert_eq!(j.on_unknown_kid(at(15)), Refetch::Started);
        assert_eq!(j.counters.unknown_kid_refused, 2);
        // The startup and scheduled fetches do not count against the interval.
        let mut j = Jwks::new(cfg(), at(0));
        let _ = j.poll_fetch(at(0));
        let _ = j.on_fetched(at(0), Ok(doc(&["a"])));
        assert_eq!(j.on_unknown_kid(at(0)), Refetch::Started);
    }

    #[test]
    fn stale_while_error_until_the_ceiling_then_none() {
        let mut j = Jwks::new(cfg(), at(0));
        let _ = j.poll_fetch(at(0));
        let _ = j.on_fetched(at(0), Ok(doc(&["a"])));
        // Fresh until 600 s; usable until 600 + 3600 s.
        assert_eq!(j.poll_fetch(at(600)), Some(FetchReason::Scheduled));
        let first = j.on_fetched(at(600), Err("connection refused".into()));
        assert_eq!(
            first,
            FetchOutcome::FirstFailure {
                error: "connection refused".into(),
                retry: at(601)
            }
        );
        assert!(j.status(at(600)).stale);
        let mut t = 601;
        let mut retries = 0;
        while t < 4300 {
            if let Some(r) = j.poll_fetch(at(t)) {
                assert_eq!(r, FetchReason::Retry);
                assert!(matches!(
                    j.on_fetched(at(t), Err("down".into())),
                    FetchOutcome::StillFailing { .. }
                ));
                retries += 1;
            }
            assert_eq!(j.keys(at(t)).is_some(), t < 4200, "at {t}s");
            t += 1;
        }
        // Backoff 1, 2, 4, ... capped at the 60 s floor: about 60 retries in the hour, not 3600.
        assert!((55..=70).contains(&retries), "{retries}");
        let st = j.status(at(4250));
        assert!(!st.ready && st.last_error.as_deref() == Some("down"));
        let _ = j.poll_fetch(at(4300));
        let ok = j.on_fetched(at(4300), Ok(doc(&["b"])));
        assert!(matches!(
            ok,
            FetchOutcome::Updated {
                recovered: true,
                ..
            }
        ));
        assert!(j.keys(at(4300)).is_some());
    }

    #[test]
    fn parses_cache_control_and_skips_unusable_keys() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            max_age("Max-Age=\"7\", must-revalidate"),
            Some(Duration::from_secs(7))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("private"), None);
        let body = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "XYZ", "kid": "future"},
            {"kty": "oct", "kid": "h", "k": "b3RoZXI"},
            {"kty": "oct", "kid": "bad-alg", "k": "c2VjcmV0", "alg": "RS256"},
        ]});
        let f = parse_jwks(body.to_string().as_bytes(), None).unwrap();
        assert_eq!(f.keys.kids(), ["h"]);
        assert_eq!(f.skipped.len(), 4, "{:?}", f.skipped);
        assert!(parse_jwks(b"[]", None).unwrap_err().contains("keys"));
        assert!(
            parse_jwks(b"<html>", None)
                .unwrap_err()
                .contains("not JSON")
        );
        // A document with no usable key is a failed fetch: the old keys stay.
        let mut j = Jwks::new(cfg(), at(0));
        let _ = j.poll_fetch(at(0));
        let _ = j.on_fetched(at(0), Ok(doc(&["a"])));
        let _ = j.poll_fetch(at(600));
        let empty = parse_jwks(br#"{"keys":[{"kty":"XYZ"}]}"#, None).unwrap();
        assert!(matches!(
            j.on_fetched(at(600), Ok(empty)),
            FetchOutcome::FirstFailure { .. }
        ));
        assert_eq!(j.keys(at(601)).unwrap().kids(), ["a"]);
    }
    fn auth_cfg() -> crate::auth::AuthConfig {
        crate::auth::AuthConfig {
            algorithms: vec![JwtAlgorithm::HS256],
            secret: Some(crate::auth::Secret("s3cret".into())),
            public_key_pem: None,
            user_claim: "userId".into(),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            require_exp: true,
            token_cache: 0,
            keys: Vec::new(),
            jwks: None,
        }
    }

    #[test]
    fn fetched_keys_verify_and_their_absence_is_not_the_clients_fault() {
        let mut c = auth_cfg();
        c.secret = None;
        c.jwks = Some(JwksConfig {
            url: "https://idp/jwks".into(),
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(600),
            refetch_interval: Duration::from_secs(10),
            max_stale: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            ready_timeout: Duration::from_secs(5),
        });
        let v = crate::auth::Verifier::new(&c).unwrap();
        let claims = serde_json::json!({"userId": "u", "exp": 1_800_000_000 + 60});
        let t = {
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            h.kid = Some("k1".into());
            jsonwebtoken::encode(
                &h,
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(b"secret").unwrap(),
            )
            .unwrap()
        };
        assert_eq!(
            v.verify_token(&t, crate::time::UnixMillis(1_800_000_000_000))
                .unwrap_err(),
            crate::auth::AuthFailure::KeysUnavailable
        );
        let doc = br#"{"keys":[{"kty":"oct","kid":"k1","k":"c2VjcmV0","alg":"HS256"}]}"#;
        let set = parse_jwks(doc, None).unwrap().keys;
        assert_eq!(
            v.verify_token_with(&t, Some(&set), crate::time::UnixMillis(1_800_000_000_000))
                .unwrap(),
            "u"
        );
        let other = br#"{"keys":[{"kty":"oct","kid":"k2","k":"c2VjcmV0"}]}"#;
        let set = parse_jwks(other, None).unwrap().keys;
        assert_eq!(
            v.verify_token_with(&t, Some(&set), crate::time::UnixMillis(1_800_000_000_000))
                .unwrap_err(),
            crate::auth::AuthFailure::UnknownKey
        );
        // A JWK whose alg is not the token's is refused.
        let rs = br#"{"keys":[{"kty":"oct","kid":"k1","k":"c2VjcmV0","alg":"HS384"}]}"#;
        let set = parse_jwks(rs, None).unwrap().keys;
        assert_eq!(
            v.verify_token_with(&t, Some(&set), crate::time::UnixMillis(1_800_000_000_000))
                .unwrap_err(),
            crate::auth::AuthFailure::KeyMismatch
        );
    }

    /// One step of the property test: time passes, a token names an unknown kid, or the
    /// fetch in flight ends.
    #[derive(Debug, Clone)]
    enum Op {
        Tick { millis: u64 },
        UnknownKid,
        FetchOk { max_age_s: Option<u64> },
        FetchErr,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (1u64..120_000).prop_map(|millis| Op::Tick { millis }),
            3 => Just(Op::UnknownKid),
            2 => proptest::option::of(0u64..2_000).prop_map(|max_age_s| Op::FetchOk { max_age_s }),
            2 => Just(Op::FetchErr),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(500))]
        /// Against a reference model: one fetch at a time; unknown-kid fetches at least
        /// `refetch_interval` apart; keys usable exactly until the last success's refresh
        /// time (max-age within the floor and ceiling) plus `max_stale`; time never goes back
        /// in a decision.
        #[test]
        fn the_cache_matches_its_reference_model(ops in proptest::collection::vec(op(), 1..200)) {
            let c = cfg();
            let mut j = Jwks::new(c.clone(), Nanos::ZERO);
            let mut now = Nanos::ZERO;
            let mut in_flight = false;
            let mut last_unknown: Option<Nanos> = None;
            let mut usable_until: Option<Nanos> = None;
            for op in ops {
                match op {
                    Op::Tick { millis } => now = now.saturating_add(Duration::from_millis(millis)),
                    Op::UnknownKid => {
                        let r = j.on_unknown_kid(now);
                        if in_flight {
                            proptest::prop_assert_eq!(r, Refetch::InFlight);
                        }
                    }
                    Op::FetchOk { max_age_s } if in_flight => {
                        let mut f = doc(&["a"]);
                        f.max_age = max_age_s.map(Duration::from_secs);
                        let _ = j.on_fetched(now, Ok(f));
                        let refresh = max_age_s
                            .map_or(c.max_refresh, Duration::from_secs)
                            .clamp(c.min_refresh, c.max_refresh);
                        usable_until = Some(now.saturating_add(refresh).saturating_add(c.max_stale));
                        in_flight = false;
                    }
                    Op::FetchErr if in_flight => {
                        let _ = j.on_fetched(now, Err("down".into()));
                        in_flight = false;
                    }
                    Op::FetchOk { .. } | Op::FetchErr => {}
                }
                if let Some(reason) = j.poll_fetch(now) {
                    proptest::prop_assert!(!in_flight, "a second fetch while one is in flight");
                    in_flight = true;
                    if reason == FetchReason::UnknownKid {
                        if let Some(last) = last_unknown {
                            proptest::prop_assert!(now.since(last) >= c.refetch_interval);
                        }
                        last_unknown = Some(now);
                    }
                } else if !in_flight {
                    // Nothing due: the next fetch is in the future.
                    let next = j.poll_timeout().unwrap();
                    proptest::prop_assert!(next > now, "due at {next} but not started at {now}");
                }
                proptest::prop_assert_eq!(
                    j.keys(now).is_some(),
                    usable_until.is_some_and(|u| now < u)
                );
            }
        }
    }
}
