//! The oracle's token check, from the README's rules, on tokens it decodes itself: exactly
//! one `Authorization` header with the `Bearer` scheme; the header's `alg` in the allow-list;
//! an HMAC signature that the config's secret reproduces; then, in this order, `exp` (refused
//! when now ≥ exp + leeway; required unless `require_exp = false`), `nbf` (refused when
//! now + leeway < nbf), `iss` and `aud` when configured, and the identity claim (the
//! configured one, else `sub`), which is forwarded as `x-user-id`.
//!
//! HMAC signatures are checked by signing again with the config's secret. The simulator holds
//! no private key, so a token under an allowed public-key algorithm is a forgery: refused as
//! `bad_signature`. A token the oracle cannot read at all is [`Check::Unknown`], and the
//! policy's answer stands.
//!
//! With a `jwks_url` (`[idp]` scenarios), the keys are those of the IdP's last good document,
//! as the runner tells the model ([`Auth::fetched`]): its `oct` keys are `sim-key-<kid>`. The
//! model keeps them for the document's `max-age` (clamped to `jwks_min_refresh` ..
//! `jwks_max_refresh`) plus `jwks_max_stale`, then has none: every token is then
//! [`Check::KeysUnavailable`]. A token naming a kid the document lacks is `unknown_key`
//! (unless the config's own unnamed secret can stand in for it).

use std::collections::HashMap;

use aegis_policy::config::AuthConfig;
use aegis_policy::http::HeaderMap;
use aegis_policy::http::header::AUTHORIZATION;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value};

/// The oracle's answer for a request's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    User(String),
    /// Refused, with the 401's `reason`.
    Refused(&'static str),
    /// A token this oracle cannot judge (not HMAC-signed).
    Unknown,
    /// The provider's JWKS keys are missing or stale past `jwks_max_stale`: 503.
    KeysUnavailable,
}

/// The keys of the IdP's last good JWKS document, and until when they may be used.
#[derive(Debug, Clone)]
struct Fetched {
    kids: Vec<String>,
    usable_until: u64,
}

/// What a token says, once decoded: the time-independent part of the check is done.
#[derive(Debug, Clone)]
enum Decoded {
    Refused(&'static str),
    Unknown,
    Claims(Map<String, Value>),
}

#[derive(Debug)]
pub struct Auth {
    config: AuthConfig,
    /// Decoding and signature checks, per token text (clients reuse their tokens).
    seen: HashMap<String, Decoded, Words>,
    /// `Some` when the config has a `jwks_url`: the keys fetched so far.
    jwks: Option<Option<Fetched>>,
}

/// A fixed hasher that takes eight bytes at a time: tokens are a few hundred bytes long, and
/// looking one up is the model's most frequent cost.
#[derive(Debug, Clone, Copy, Default)]
struct Words;

#[derive(Debug, Clone, Copy)]
struct WordHasher(u64);

impl std::hash::BuildHasher for Words {
    type Hasher = WordHasher;
    fn build_hasher(&self) -> WordHasher {
        WordHasher(0x9E37_79B9_7F4A_7C15)
    }
}

impl std::hash::Hasher for WordHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517C_C1B7_2722_0A95);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517C_C1B7_2722_0A95);
        }
    }
}

fn alg_of(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A NumericDate: whole seconds (a fraction is cut off).
fn seconds(v: &Value) -> Option<u64> {
    let n = v.as_number()?;
    match n.as_u64() {
        Some(s) => Some(s),
        None => n
            .as_f64()
            .filter(|f| *f >= 0.0 && f.is_finite())
            .map(|f| f as u64),
    }
}

impl Auth {
    pub fn new(config: &AuthConfig) -> Auth {
        Auth {
            config: config.clone(),
            seen: HashMap::with_hasher(Words),
            jwks: config.jwks.as_ref().map(|_| None),
        }
    }

    /// The IdP's document with `kids`, sent with `max_age`, arrived at `mono` ns.
    pub fn fetched(&mut self, kids: Vec<String>, max_age: Option<std::time::Duration>, mono: u64) {
        let Some(cfg) = &self.config.jwks else {
            return;
        };
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let (lo, hi) = (ns(cfg.min_refresh), ns(cfg.max_refresh));
        let refresh = max_age.map_or(hi, ns).clamp(lo, hi.max(lo));
        let usable_until = mono
            .saturating_add(refresh)
            .saturating_add(ns(cfg.max_stale));
        self.jwks = Some(Some(Fetched { kids, usable_until }));
        // Decoded tokens were judged against the old keys.
        self.seen.clear();
    }

    /// The secret that checks a token naming `kid` (`None` for no kid): a fetched key with
    /// that id, else the config's unnamed secret; without a kid, the unnamed secret, else the
    /// one fetched key. `Err` when no key fits.
    fn secret_for(&self, kid: Option<&str>, usable: bool) -> Result<String, &'static str> {
        let unnamed = self.config.secret.as_ref().map(|s| s.0.clone());
        let Some(Some(f)) = self.jwks.as_ref().filter(|_| usable) else {
            return unnamed.ok_or("keys_unavailable");
        };
        match kid {
            Some(k) if f.kids.iter().any(|x| x == k) => Ok(crate::idp::secret(k)),
            Some(_) => unnamed.ok_or("unknown_key"),
            None => match (unnamed, f.kids.as_slice()) {
                (Some(s), _) => Ok(s),
                (None, [only]) => Ok(crate::idp::secret(only)),
                _ => Err("unknown_key"),
            },
        }
    }

    fn decode(&self, token: &str, fetched: bool) -> Decoded {
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return Decoded::Unknown;
        }
        let Some(header) = URL_SAFE_NO_PAD
            .decode(parts[0])
            .ok()
            .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
        else {
            return Decoded::Unknown;
        };
        let Some(alg_name) = header.get("alg").and_then(Value::as_str) else {
            return Decoded::Unknown;
        };
        let allowed = self.config.algorithms.iter().any(|a| a.name() == alg_name);
        if !allowed {
            return Decoded::Refused("algorithm_not_allowed");
        }
        let Some(alg) = alg_of(alg_name) else {
            return Decoded::Unknown;
        };
        if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Decoded::Refused("bad_signature");
        }
        let secret = if self.jwks.is_some() {
            match self.secret_for(header.get("kid").and_then(Value::as_str), fetched) {
                Ok(s) => s,
                Err(why) => return Decoded::Refused(why),
            }
        } else {
            match &self.config.secret {
                Some(s) => s.0.clone(),
                None => return Decoded::Unknown,
            }
        };
        let Ok(key) = EncodingKey::from_secret(secret.as_bytes()) else {
            return Decoded::Unknown;
        };
        let message = format!("{}.{}", parts[0], parts[1]);
        match jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg) {
            Ok(sig) if sig == parts[2] => {}
            Ok(_) => return Decoded::Refused("bad_signature"),
            Err(_) => return Decoded::Unknown,
        }
        match URL_SAFE_NO_PAD
            .decode(parts[1])
            .ok()
            .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
        {
            Some(claims) => Decoded::Claims(claims),
            None => Decoded::Unknown,
        }
    }

    /// Checks a request's credentials at wall time `now_ms` and monotonic `mono` ns.
    pub fn check(&mut self, headers: &HeaderMap, now_ms: u64, mono: u64) -> Check {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Check::Refused("missing");
        };
        if values.next().is_some() {
            return Check::Refused("malformed");
        }
        let Ok(text) = value.to_str() else {
            return Check::Refused("malformed");
        };
        let text = text.trim();
        let (scheme, rest) = match text.find(' ') {
            Some(i) => (&text[..i], &text[i + 1..]),
            None => (text, ""),
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Check::Refused("malformed");
        }
        let token = rest.trim();
        if token.is_empty() {
            return Check::Refused("missing");
        }
        // Without usable fetched keys, a token the config's own key cannot check is
        // unjudgeable by the gateway (judged afresh: the cache holds judgements with keys).
        if let Some(f) = &self.jwks
            && f.as_ref().is_none_or(|f| mono >= f.usable_until)
        {
            return match self.decode(token, false) {
                Decoded::Refused("keys_unavailable") => Check::KeysUnavailable,
                Decoded::Refused(r) => Check::Refused(r),
                Decoded::Unknown => Check::Unknown,
                Decoded::Claims(c) => check_claims(&self.config, &c, now_ms),
            };
        }
        let decoded = match self.seen.get(token) {
            Some(d) => d,
            None => {
                let d = self.decode(token, true);
                self.seen.entry(token.to_owned()).or_insert(d)
            }
        };
        let claims = match decoded {
            Decoded::Refused(r) => return Check::Refused(r),
            Decoded::Unknown => return Check::Unknown,
            Decoded::Claims(c) => c,
        };
        check_claims(&self.config, claims, now_ms)
    }
}

/// The time-dependent checks of a decoded token's claims.
fn check_claims(config: &AuthConfig, claims: &Map<String, Value>, now_ms: u64) -> Check {
    let now = now_ms / 1000;
    let leeway = config.leeway.as_secs();
    match claims.get("exp") {
        None if config.require_exp => return Check::Refused("missing_claim"),
        None => {}
        Some(v) => match seconds(v) {
            None => return Check::Refused("malformed"),
            Some(exp) if now >= exp + leeway => return Check::Refused("expired"),
            Some(_) => {}
        },
    }
    if let Some(v) = claims.get("nbf") {
        match seconds(v) {
            None => return Check::Refused("malformed"),
            Some(nbf) if now + leeway < nbf => return Check::Refused("not_yet_valid"),
            Some(_) => {}
        }
    }
    if let Some(iss) = &config.issuer
        && claims.get("iss").and_then(Value::as_str) != Some(iss.as_str())
    {
        return Check::Refused("wrong_issuer");
    }
    if let Some(aud) = &config.audience {
        let ok = match claims.get("aud") {
            Some(Value::String(s)) => s == aud,
            Some(Value::Array(list)) => list.iter().any(|v| v.as_str() == Some(aud)),
            _ => false,
        };
        if !ok {
            return Check::Refused("wrong_audience");
        }
    }
    let id = match claims.get(&config.user_claim) {
        Some(v) => Some(v),
        None => claims.get("sub"),
    };
    let user = match id {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Check::Refused("malformed"),
        None => return Check::Refused("missing_claim"),
    };
    let header_safe = user
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
    if user.is_empty() || user.len() > 256 || !header_safe {
        return Check::Refused("malformed");
    }
    Check::User(user)
}
