//! JWT verification: the algorithm allow-list from config picks the key, never the token header;
//! `exp`/`nbf` are checked against the wall time the caller passes in, with a leeway; `iss`/`aud`
//! are checked when configured. Failures are classified so the 401 body can say which check
//! failed without echoing the token or any key.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use crate::time::UnixMillis;

// ---------------------------------------------------------------------------------------------
// The auth section of the config model (validated in config.rs, used here).

/// A string that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    pub const ALL: [JwtAlgorithm; 10] = [
        JwtAlgorithm::HS256,
        JwtAlgorithm::HS384,
        JwtAlgorithm::HS512,
        JwtAlgorithm::RS256,
        JwtAlgorithm::RS384,
        JwtAlgorithm::RS512,
        JwtAlgorithm::PS256,
        JwtAlgorithm::ES256,
        JwtAlgorithm::ES384,
        JwtAlgorithm::EdDSA,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::HS384 => "HS384",
            JwtAlgorithm::HS512 => "HS512",
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::RS384 => "RS384",
            JwtAlgorithm::RS512 => "RS512",
            JwtAlgorithm::PS256 => "PS256",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::ES384 => "ES384",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
        )
    }
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The allow-list. A token whose header names another algorithm is refused; the header
    /// never chooses the key type.
    pub algorithms: Vec<JwtAlgorithm>,
    pub secret: Option<Secret>,
    pub public_key_pem: Option<String>,
    /// Claim copied into `x-user-id`; `sub` when the claim is absent.
    pub user_claim: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
    pub require_exp: bool,
}

/// A key from [`AuthConfig`] the verifier cannot use: which one, and why (the config maps it
/// to the key's path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub field: KeyField,
    pub reason: String,
}

/// Which key of [`AuthConfig`] a [`KeyError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyField {
    Secret,
    PublicKey,
}

// ---------------------------------------------------------------------------------------------
// Verification.

/// Why a request was not authenticated. Each maps to a stable `reason` in the 401 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No Authorization header (or an empty token).
    Missing,
    /// Not a Bearer JWT, two Authorization headers, bad base64 or JSON, a bad claim type.
    Malformed(&'static str),
    /// The header names an algorithm outside the allow-list (including `none`).
    AlgorithmNotAllowed,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// A claim the config requires is absent (`exp`, or the identity claim).
    MissingClaim(&'static str),
}

impl AuthFailure {
    /// The machine-readable class, stable across releases.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed(_) => "malformed",
            AuthFailure::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::WrongIssuer => "wrong_issuer",
            AuthFailure::WrongAudience => "wrong_audience",
            AuthFailure::MissingClaim(_) => "missing_claim",
        }
    }
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthFailure::Missing => f.write_str("no bearer token in the Authorization header"),
            AuthFailure::Malformed(why) => write!(f, "malformed token: {why}"),
            AuthFailure::AlgorithmNotAllowed => f.write_str("token algorithm is not allowed"),
            AuthFailure::BadSignature => f.write_str("token signature does not verify"),
            AuthFailure::Expired => f.write_str("token has expired"),
            AuthFailure::NotYetValid => f.write_str("token is not valid yet (nbf)"),
            AuthFailure::WrongIssuer => f.write_str("token issuer (iss) is not accepted"),
            AuthFailure::WrongAudience => f.write_str("token audience (aud) is not accepted"),
            AuthFailure::MissingClaim(c) => write!(f, "token lacks the required claim {c:?}"),
        }
    }
}

/// Keys and checks built once from [`AuthConfig`].
pub struct Verifier {
    allowed: Vec<(Algorithm, Validation)>,
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ec: Option<DecodingKey>,
    ed: Option<DecodingKey>,
    user_claim: String,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
    require_exp: bool,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "algorithms",
                &self.allowed.iter().map(|(a, _)| a).collect::<Vec<_>>(),
            )
            .field("user_claim", &self.user_claim)
            .finish_non_exhaustive()
    }
}

fn to_jwt(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

impl Verifier {
    pub fn new(cfg: &AuthConfig) -> Result<Verifier, KeyError> {
        let pem = cfg.public_key_pem.as_deref().map(str::as_bytes);
        let key_err = |kind: &str, e: jsonwebtoken::errors::Error| KeyError {
            field: KeyField::PublicKey,
            reason: format!("not a {kind} public key in PEM: {e}"),
        };
        let mut v = Verifier {
            allowed: Vec::new(),
            hmac: None,
            rsa: None,
            ec: None,
            ed: None,
            user_claim: cfg.user_claim.clone(),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway_secs: cfg.leeway.as_secs(),
            require_exp: cfg.require_exp,
        };
        for &a in &cfg.algorithms {
            let alg = to_jwt(a);
            match a {
                JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512 => {
                    if v.hmac.is_none() {
                        let secret = cfg
                            .secret
                            .as_ref()
                            .map(|s| s.0.as_bytes())
                            .unwrap_or_default();
                        v.hmac = Some(DecodingKey::from_secret(secret).map_err(|e| KeyError {
                            field: KeyField::Secret,
                            reason: format!("unusable secret: {e}"),
                        })?);
                    }
                }
                JwtAlgorithm::RS256
                | JwtAlgorithm::RS384
                | JwtAlgorithm::RS512
                | JwtAlgorithm::PS256 => {
                    if v.rsa.is_none() {
                        let pem = pem.unwrap_or_default();
                        v.rsa =
                            Some(DecodingKey::from_rsa_pem(pem).map_err(|e| key_err("RSA", e))?);
                    }
                }
                JwtAlgorithm::ES256 | JwtAlgorithm::ES384 => {
                    if v.ec.is_none() {
                        let pem = pem.unwrap_or_default();
                        v.ec = Some(DecodingKey::from_ec_pem(pem).map_err(|e| key_err("EC", e))?);
                    }
                }
                JwtAlgorithm::EdDSA => {
                    if v.ed.is_none() {
                        let pem = pem.unwrap_or_default();
                        v.ed =
                            Some(DecodingKey::from_ed_pem(pem).map_err(|e| key_err("Ed25519", e))?);
                    }
                }
            }
            // Time, issuer and audience are checked here against the injected clock, so the
            // library's own checks (which read the system clock) are all off.
            let mut val = Validation::new(alg);
            val.validate_exp = false;
            val.validate_nbf = false;
            val.validate_aud = false;
            val.required_spec_claims.clear();
            val.leeway = 0;
            v.allowed.push((alg, val));
        }
        Ok(v)
    }

    fn key_for(&self, alg: Algorithm) -> Option<&DecodingKey> {
        match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.as_ref(),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => self.rsa.as_ref(),
            Algorithm::ES256 | Algorithm::ES384 => self.ec.as_ref(),
            Algorithm::EdDSA => self.ed.as_ref(),
            _ => None,
        }
    }

    /// Authenticates a request from its headers at wall time `now`. On success returns the
    /// identity to forward as `x-user-id`.
    pub fn verify(&self, headers: &HeaderMap, now: UnixMillis) -> Result<HeaderValue, AuthFailure> {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthFailure::Missing)?;
        if values.next().is_some() {
            return Err(AuthFailure::Malformed("more than one Authorization header"));
        }
        let token = bearer_token(value)?;
        self.verify_token(token, now)
    }

    /// Verifies a bare token (no `Bearer ` prefix).
    pub fn verify_token(&self, token: &str, now: UnixMillis) -> Result<HeaderValue, AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| classify_bad_header(token))?;
        let Some((alg, validation)) = self.allowed.iter().find(|(a, _)| *a == header.alg) else {
            return Err(AuthFailure::AlgorithmNotAllowed);
        };
        let key = self.key_for(*alg).ok_or(AuthFailure::AlgorithmNotAllowed)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => AuthFailure::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
                    AuthFailure::AlgorithmNotAllowed
                }
                ErrorKind::Base64(_) => AuthFailure::Malformed("bad base64"),
                ErrorKind::Json(_) => AuthFailure::Malformed("claims are not a JSON object"),
                ErrorKind::Utf8(_) => AuthFailure::Malformed("claims are not UTF-8"),
                _ => AuthFailure::Malformed("not a JWT"),
            },
        )?;
        self.check_claims(&data.claims, now)
    }

    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        now: UnixMillis,
    ) -> Result<HeaderValue, AuthFailure> {
        let now = now.as_secs();
        match claims.get("exp") {
            Some(v) => {
                let exp = numeric_date(v).ok_or(AuthFailure::Malformed("exp is not a number"))?;
                if now >= exp.saturating_add(self.leeway_secs) {
                    return Err(AuthFailure::Expired);
                }
            }
            None if self.require_exp => return Err(AuthFailure::MissingClaim("exp")),
            None => {}
        }
        if let Some(v) = claims.get("nbf") {
            let nbf = numeric_date(v).ok_or(AuthFailure::Malformed("nbf is not a number"))?;
            if now.saturating_add(self.leeway_secs) < nbf {
                return Err(AuthFailure::NotYetValid);
            }
        }
        if let Some(iss) = &self.issuer {
            match claims.get("iss") {
                Some(Value::String(s)) if s == iss => {}
                _ => return Err(AuthFailure::WrongIssuer),
            }
        }
        if let Some(aud) = &self.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(s)) => s == aud,
                Some(Value::Array(list)) => list.iter().any(|v| v.as_str() == Some(aud)),
                _ => false,
            };
            if !ok {
                return Err(AuthFailure::WrongAudience);
            }
        }
        let id = claims.get(&self.user_claim).or_else(|| claims.get("sub"));
        let value = match id {
            Some(Value::String(s)) => HeaderValue::from_str(s),
            Some(Value::Number(n)) => HeaderValue::from_str(&n.to_string()),
            Some(_) => return Err(AuthFailure::Malformed("identity claim is not a string")),
            None => {
                return Err(AuthFailure::MissingClaim(identity_claim_name(
                    &self.user_claim,
                )));
            }
        };
        match value {
            Ok(v) if !v.is_empty() && v.len() <= 256 => Ok(v),
            _ => Err(AuthFailure::Malformed(
                "identity claim is not a header-safe string",
            )),
        }
    }
}

fn identity_claim_name(claim: &str) -> &'static str {
    // The reason text is static; name the common claims exactly and the rest generically.
    match claim {
        "userId" => "userId",
        "sub" => "sub",
        _ => "user_claim",
    }
}

/// `exp`/`nbf` are NumericDate: seconds, possibly fractional.
fn numeric_date(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        _ => None,
    }
}

/// `Bearer <token>`, the scheme matched case-insensitively (RFC 9110 §11.1).
fn bearer_token(value: &HeaderValue) -> Result<&str, AuthFailure> {
    let s = value
        .to_str()
        .map_err(|_| AuthFailure::Malformed("Authorization is not ASCII"))?;
    let s = s.trim();
    let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Malformed("Authorization scheme is not Bearer"));
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthFailure::Missing);
    }
    Ok(token)
}

/// The header did not parse. Say "algorithm not allowed" when it is a JSON header naming an
/// algorithm the library does not know (such as `none`), and "malformed" otherwise.
fn classify_bad_header(token: &str) -> AuthFailure {
    let first = token.split('.').next().unwrap_or_default();
    let decoded =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(first.trim_end_matches('='));
    if let Ok(bytes) = decoded
        && let Ok(Value::Object(h)) = serde_json::from_slice::<Value>(&bytes)
        && h.get("alg").is_some_and(Value::is_string)
    {
        return AuthFailure::AlgorithmNotAllowed;
    }
    AuthFailure::Malformed("not a JWT")
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;
    use std::time::Duration;

    const NOW: UnixMillis = UnixMillis(1_800_000_000_000);
    const NOW_S: u64 = 1_800_000_000;

    fn cfg() -> AuthConfig {
        AuthConfig {
            algorithms: vec![JwtAlgorithm::HS256],
            secret: Some(Secret("s3cret".into())),
            public_key_pem: None,
            user_claim: "userId".into(),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            require_exp: true,
        }
    }

    fn hs(claims: Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn accepts_valid_and_extracts_identity() {
        let v = Verifier::new(&cfg()).unwrap();
        let t = hs(json!({"userId": "test-123", "exp": NOW_S + 60}), "s3cret");
        assert_eq!(
            v.verify(&with_auth(&format!("Bearer {t}")), NOW).unwrap(),
            "test-123"
        );
        assert_eq!(
            v.verify(&with_auth(&format!("bEaReR   {t}")), NOW).unwrap(),
            "test-123"
        );
        let sub = hs(json!({"sub": "u9", "exp": NOW_S + 60}), "s3cret");
        assert_eq!(v.verify_token(&sub, NOW).unwrap(), "u9");
        let num = hs(json!({"userId": 42, "exp": NOW_S + 60}), "s3cret");
        assert_eq!(v.verify_token(&num, NOW).unwrap(), "42");
    }

    #[test]
    fn classifies_failures() {
        let v = Verifier::new(&cfg()).unwrap();
        let e = |t: &str| v.verify_token(t, NOW).unwrap_err();
        assert_eq!(
            v.verify(&HeaderMap::new(), NOW).unwrap_err(),
            AuthFailure::Missing
        );
        assert_eq!(
            v.verify(&with_auth("Bearer "), NOW).unwrap_err(),
            AuthFailure::Missing
        );
        assert_eq!(
            v.verify(&with_auth("Basic abc"), NOW).unwrap_err().reason(),
            "malformed"
        );
        let mut two = with_auth("Bearer a");
        two.append(AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(v.verify(&two, NOW).unwrap_err().reason(), "malformed");
        assert_eq!(e("not.a.jwt").reason(), "malformed");
        assert_eq!(e("garbage").reason(), "malformed");
        let bad_sig = hs(json!({"userId": "u", "exp": NOW_S + 60}), "other");
        assert_eq!(e(&bad_sig), AuthFailure::BadSignature);
        // Expiry honours the leeway on both sides of it.
        assert_eq!(
            e(&hs(json!({"userId": "u", "exp": NOW_S - 31}), "s3cret")),
            AuthFailure::Expired
        );
        assert!(
            v.verify_token(
                &hs(json!({"userId": "u", "exp": NOW_S - 29}), "s3cret"),
                NOW
            )
            .is_ok()
        );
        assert_eq!(
            e(&hs(
                json!({"userId": "u", "exp": NOW_S + 60, "nbf": NOW_S + 31}),
                "s3cret"
            )),
            AuthFailure::NotYetValid
        );
        assert!(
            v.verify_token(
                &hs(
                    json!({"userId": "u", "exp": NOW_S + 60, "nbf": NOW_S + 29}),
                    "s3cret"
                ),
                NOW
            )
            .is_ok()
        );
        assert_eq!(
            e(&hs(json!({"userId": "u"}), "s3cret")),
            AuthFailure::MissingClaim("exp")
        );
        assert_eq!(
            e(&hs(json!({"exp": NOW_S + 60}), "s3cret")),
            AuthFailure::MissingClaim("userId")
        );
        assert_eq!(
            e(&hs(json!({"userId": "u", "exp": "soon"}), "s3cret")).reason(),
            "malformed"
        );
        // alg "none": an unsigned token is refused, never accepted.
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(br#"{"alg":"none","typ":"JWT"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(br#"{"userId":"u","exp":9999999999}"#)
        );
        assert_eq!(e(&none), AuthFailure::AlgorithmNotAllowed);
        // HS384 is a real algorithm but not in the allow-list.
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &json!({"userId": "u", "exp": NOW_S + 60}),
            &EncodingKey::from_secret(b"s3cret").unwrap(),
        )
        .unwrap();
        assert_eq!(e(&hs384), AuthFailure::AlgorithmNotAllowed);
    }

    #[test]
    fn issuer_and_audience() {
        let mut c = cfg();
        c.issuer = Some("aegis".into());
        c.audience = Some("api".into());
        let v = Verifier::new(&c).unwrap();
        let ok = hs(
            json!({"userId": "u", "exp": NOW_S + 60, "iss": "aegis", "aud": ["x", "api"]}),
            "s3cret",
        );
        assert!(v.verify_token(&ok, NOW).is_ok());
        let no_iss = hs(
            json!({"userId": "u", "exp": NOW_S + 60, "aud": "api"}),
            "s3cret",
        );
        assert_eq!(
            v.verify_token(&no_iss, NOW).unwrap_err(),
            AuthFailure::WrongIssuer
        );
        let bad_aud = hs(
            json!({"userId": "u", "exp": NOW_S + 60, "iss": "aegis", "aud": "web"}),
            "s3cret",
        );
        assert_eq!(
            v.verify_token(&bad_aud, NOW).unwrap_err(),
            AuthFailure::WrongAudience
        );
        let no_aud = hs(
            json!({"userId": "u", "exp": NOW_S + 60, "iss": "aegis"}),
            "s3cret",
        );
        assert_eq!(
            v.verify_token(&no_aud, NOW).unwrap_err(),
            AuthFailure::WrongAudience
        );
    }

    #[test]
    fn failure_text_never_echoes_secrets() {
        let v = Verifier::new(&cfg()).unwrap();
        let t = hs(json!({"userId": "u", "exp": NOW_S + 60}), "other");
        let f = v.verify_token(&t, NOW).unwrap_err();
        assert!(!f.to_string().contains("s3cret") && !f.to_string().contains(&t));
        assert!(!format!("{v:?}").contains("s3cret"));
    }
}
