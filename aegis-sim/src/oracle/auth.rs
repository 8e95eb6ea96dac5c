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
        }
    }

    fn decode(&self, token: &str) -> Decoded {
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
        let Some(secret) = &self.config.secret else {
            return Decoded::Unknown;
        };
        let Ok(key) = EncodingKey::from_secret(secret.0.as_bytes()) else {
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

    /// Checks a request's credentials at wall time `now_ms`.
    pub fn check(&mut self, headers: &HeaderMap, now_ms: u64) -> Check {
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
        let decoded = match self.seen.get(token) {
            Some(d) => d,
            None => {
                let d = self.decode(token);
                self.seen.entry(token.to_owned()).or_insert(d)
            }
        };
        let claims = match decoded {
            Decoded::Refused(r) => return Check::Refused(r),
            Decoded::Unknown => return Check::Unknown,
            Decoded::Claims(c) => c,
        };
        let now = now_ms / 1000;
        let leeway = self.config.leeway.as_secs();
        match claims.get("exp") {
            None if self.config.require_exp => return Check::Refused("missing_claim"),
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
        if let Some(iss) = &self.config.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(iss.as_str())
        {
            return Check::Refused("wrong_issuer");
        }
        if let Some(aud) = &self.config.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(s)) => s == aud,
                Some(Value::Array(list)) => list.iter().any(|v| v.as_str() == Some(aud)),
                _ => false,
            };
            if !ok {
                return Check::Refused("wrong_audience");
            }
        }
        let id = match claims.get(&self.config.user_claim) {
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
}
