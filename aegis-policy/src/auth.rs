//! JWT verification: the algorithm allow-list from config picks the key, never the token header;
//! `exp`/`nbf` are checked against the wall time the caller passes in, with a leeway; `iss`/`aud`
//! are checked when configured. Failures are classified so the 401 body can say which check
//! failed without echoing the token or any key.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use crate::time::UnixMillis;
use crate::token_cache::{TokenCache, Window};

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
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    pub const ALL: [JwtAlgorithm; 12] = [
        JwtAlgorithm::HS256,
        JwtAlgorithm::HS384,
        JwtAlgorithm::HS512,
        JwtAlgorithm::RS256,
        JwtAlgorithm::RS384,
        JwtAlgorithm::RS512,
        JwtAlgorithm::PS256,
        JwtAlgorithm::PS384,
        JwtAlgorithm::PS512,
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
            JwtAlgorithm::PS384 => "PS384",
            JwtAlgorithm::PS512 => "PS512",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::ES384 => "ES384",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    pub fn is_hmac(self) -> bool {
        self.family() == KeyFamily::Hmac
    }

    /// The kind of key that verifies this algorithm.
    pub fn family(self) -> KeyFamily {
        match self {
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512 => KeyFamily::Hmac,
            JwtAlgorithm::RS256
            | JwtAlgorithm::RS384
            | JwtAlgorithm::RS512
            | JwtAlgorithm::PS256
            | JwtAlgorithm::PS384
            | JwtAlgorithm::PS512 => KeyFamily::Rsa,
            JwtAlgorithm::ES256 => KeyFamily::EcP256,
            JwtAlgorithm::ES384 => KeyFamily::EcP384,
            JwtAlgorithm::EdDSA => KeyFamily::Ed25519,
        }
    }

    pub fn from_name(name: &str) -> Option<JwtAlgorithm> {
        JwtAlgorithm::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// The kind of a verification key: an algorithm is only ever checked with a key of its family
/// (a JWK's `kty` and `crv`, a PEM's key type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyFamily {
    pub fn name(self) -> &'static str {
        match self {
            KeyFamily::Hmac => "HMAC secret",
            KeyFamily::Rsa => "RSA key",
            KeyFamily::EcP256 => "P-256 key",
            KeyFamily::EcP384 => "P-384 key",
            KeyFamily::Ed25519 => "Ed25519 key",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Accepted tokens remembered per worker thread (0: none); see [`crate::token_cache`].
    pub token_cache: usize,
    /// Keys with a `kid` (rotation without an IdP): a token naming a kid is checked with it.
    pub keys: Vec<StaticKey>,
    /// Keys fetched from an IdP's JWKS URL (the driver fetches; `crate::jwks` decides when).
    pub jwks: Option<JwksConfig>,
}

/// How a provider's JWKS is fetched and cached (`[auth] jwks_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksConfig {
    pub url: String,
    /// Floor on the refresh interval (a `max-age` below it is raised), and the longest pause
    /// between retries of a failing fetch.
    pub min_refresh: Duration,
    /// Ceiling on the refresh interval; also the interval when the response has no `max-age`.
    pub max_refresh: Duration,
    /// An unknown `kid` refetches at once unless an unknown-kid fetch began within this long.
    pub refetch_interval: Duration,
    /// Stale-while-error: after refreshes start failing, the last good keys serve this long
    /// past their refresh time.
    pub max_stale: Duration,
    /// One fetch's deadline.
    pub timeout: Duration,
    /// At start, how long the listener waits for the first fetch before serving anyway.
    pub ready_timeout: Duration,
}

pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(600);
pub const DEFAULT_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(3600);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One entry of `keys`: a key id and its material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticKey {
    pub kid: String,
    /// When set, the only algorithm this key verifies.
    pub alg: Option<JwtAlgorithm>,
    pub material: KeyMaterial,
}

/// A key as configured: an HMAC secret or a public key in PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    Secret(Secret),
    Pem(String),
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
    /// `keys[i]`.
    Key(usize),
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
    /// No key fits the token: its `kid` is unknown (a JWKS provider may refetch), or it names
    /// none and no single key of its type is there.
    UnknownKey,
    /// The key the token names is for another algorithm or key type than the token's `alg`.
    KeyMismatch,
    /// The provider's keys come from a JWKS URL and none are usable now (never fetched, or
    /// stale past `jwks_max_stale`): the gateway cannot judge the token (503, not 401).
    KeysUnavailable,
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
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::KeyMismatch => "key_mismatch",
            AuthFailure::KeysUnavailable => "keys_unavailable",
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
            AuthFailure::UnknownKey => f.write_str("no key matches the token's key id (kid)"),
            AuthFailure::KeyMismatch => {
                f.write_str("the token's key is not for the token's algorithm")
            }
            AuthFailure::KeysUnavailable => {
                f.write_str("the signing keys of the identity provider are not available")
            }
        }
    }
}

/// A verification key: its id (if any), the one algorithm it is restricted to (if any), its
/// family, and the decoded key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub alg: Option<JwtAlgorithm>,
    pub family: KeyFamily,
    key: DecodingKey,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl Key {
    pub fn new(
        kid: Option<String>,
        alg: Option<JwtAlgorithm>,
        family: KeyFamily,
        key: DecodingKey,
    ) -> Key {
        Key {
            kid,
            alg,
            family,
            key,
        }
    }

    /// A key from configured material, of the family its PEM (or secret) has.
    fn from_material(
        kid: Option<String>,
        alg: Option<JwtAlgorithm>,
        m: &KeyMaterial,
    ) -> Result<Key, String> {
        let (family, key) = match m {
            KeyMaterial::Secret(s) => (
                KeyFamily::Hmac,
                DecodingKey::from_secret(s.0.as_bytes())
                    .map_err(|e| format!("unusable secret: {e}"))?,
            ),
            KeyMaterial::Pem(pem) => pem_key(pem, alg.map(JwtAlgorithm::family))?,
        };
        if let Some(a) = alg
            && a.family() != family
        {
            return Err(format!(
                "alg {} needs a {}, not a {}",
                a.name(),
                a.family().name(),
                family.name()
            ));
        }
        Ok(Key {
            kid,
            alg,
            family,
            key,
        })
    }

    /// Whether this key may check a token signed with `alg`.
    fn fits(&self, alg: JwtAlgorithm) -> bool {
        self.family == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

type PemDecoder = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;

/// A public key in PEM: RSA, EC (P-256 or P-384) or Ed25519, tried in turn (`want`: the family
/// an `alg` asks for, tried alone).
fn pem_key(pem: &str, want: Option<KeyFamily>) -> Result<(KeyFamily, DecodingKey), String> {
    let b = pem.as_bytes();
    let tries: [(KeyFamily, PemDecoder); 3] = [
        (KeyFamily::Rsa, DecodingKey::from_rsa_pem),
        (KeyFamily::EcP256, DecodingKey::from_ec_pem),
        (KeyFamily::Ed25519, DecodingKey::from_ed_pem),
    ];
    let mut last = String::new();
    for (family, f) in tries {
        if want.is_some_and(|w| {
            w != family && !(family == KeyFamily::EcP256 && w == KeyFamily::EcP384)
        }) {
            continue;
        }
        match f(b) {
            Ok(k) => {
                let family = if family == KeyFamily::EcP256 {
                    ec_curve(pem).unwrap_or(KeyFamily::EcP256)
                } else {
                    family
                };
                return Ok((family, k));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!(
        "not an RSA, EC or Ed25519 public key in PEM: {last}"
    ))
}

/// P-256 or P-384, from the length of an EC public key's SubjectPublicKeyInfo (91 and 120 bytes
/// for uncompressed points).
fn ec_curve(pem: &str) -> Option<KeyFamily> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()?;
    match der.len() {
        91 => Some(KeyFamily::EcP256),
        120 => Some(KeyFamily::EcP384),
        _ => None,
    }
}

/// A set of keys: the configured ones, or those of a JWKS document.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn by_kid(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// The key ids, in order (for status pages and logs).
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref()).collect()
    }
}

/// Picks the key for a token signed with `alg` naming `kid`: the key with that id, among the
/// configured keys and then the fetched ones; it must fit the algorithm (family, and its own
/// `alg` when it has one), or the token is refused. A kid nobody knows falls back to the
/// unnamed configured key of the family (`secret`/`public_key_pem`, which predate key ids),
/// else it is unknown. A token without a kid gets the unnamed key, else the one fitting key.
pub fn select_key<'a>(
    alg: JwtAlgorithm,
    kid: Option<&str>,
    configured: &'a KeySet,
    fetched: Option<&'a KeySet>,
) -> Result<&'a Key, AuthFailure> {
    let sets = || std::iter::once(configured).chain(fetched);
    let unnamed = || {
        configured
            .keys
            .iter()
            .find(|k| k.kid.is_none() && k.fits(alg))
    };
    if let Some(kid) = kid {
        if let Some(k) = sets().find_map(|s| s.by_kid(kid)) {
            return if k.fits(alg) {
                Ok(k)
            } else {
                Err(AuthFailure::KeyMismatch)
            };
        }
        return unnamed().ok_or(AuthFailure::UnknownKey);
    }
    if let Some(k) = unnamed() {
        return Ok(k);
    }
    let mut fitting = sets().flat_map(|s| s.keys.iter()).filter(|k| k.fits(alg));
    match (fitting.next(), fitting.next()) {
        (Some(k), None) => Ok(k),
        _ => Err(AuthFailure::UnknownKey),
    }
}

/// Keys and checks built once from [`AuthConfig`].
pub struct Verifier {
    allowed: Vec<(JwtAlgorithm, Validation)>,
    keys: KeySet,
    /// Keys also come from a JWKS URL: without a usable fetched set, tokens cannot be judged.
    jwks: bool,
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
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

fn from_jwt(a: Algorithm) -> Option<JwtAlgorithm> {
    JwtAlgorithm::ALL.into_iter().find(|x| to_jwt(*x) == a)
}

impl Verifier {
    pub fn new(cfg: &AuthConfig) -> Result<Verifier, KeyError> {
        let mut keys = KeySet::default();
        let families: Vec<KeyFamily> = cfg.algorithms.iter().map(|a| a.family()).collect();
        if families.contains(&KeyFamily::Hmac)
            && let Some(secret) = &cfg.secret
        {
            keys.keys.push(
                Key::from_material(None, None, &KeyMaterial::Secret(secret.clone())).map_err(
                    |reason| KeyError {
                        field: KeyField::Secret,
                        reason,
                    },
                )?,
            );
        }
        if let Some(pem) = &cfg.public_key_pem {
            let key = Key::from_material(None, None, &KeyMaterial::Pem(pem.clone())).map_err(
                |reason| KeyError {
                    field: KeyField::PublicKey,
                    reason,
                },
            )?;
            if !cfg.algorithms.iter().any(|a| key.fits(*a)) {
                return Err(KeyError {
                    field: KeyField::PublicKey,
                    reason: format!(
                        "is a {}, which none of the allowed algorithms uses",
                        key.family.name()
                    ),
                });
            }
            keys.keys.push(key);
        }
        for (i, k) in cfg.keys.iter().enumerate() {
            let key =
                Key::from_material(Some(k.kid.clone()), k.alg, &k.material).map_err(|reason| {
                    KeyError {
                        field: KeyField::Key(i),
                        reason,
                    }
                })?;
            keys.keys.push(key);
        }
        let allowed = cfg
            .algorithms
            .iter()
            .map(|&a| {
                // Time, issuer and audience are checked here against the injected clock, so the
                // library's own checks (which read the system clock) are all off.
                let mut val = Validation::new(to_jwt(a));
                val.validate_exp = false;
                val.validate_nbf = false;
                val.validate_aud = false;
                val.required_spec_claims.clear();
                val.leeway = 0;
                (a, val)
            })
            .collect();
        Ok(Verifier {
            allowed,
            keys,
            jwks: cfg.jwks.is_some(),
            user_claim: cfg.user_claim.clone(),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway_secs: cfg.leeway.as_secs(),
            require_exp: cfg.require_exp,
        })
    }

    /// The configured keys (unnamed and named).
    pub fn configured_keys(&self) -> &KeySet {
        &self.keys
    }

    /// An empty cache of about `entries` tokens for this provider (see [`Verifier::verify_cached`]).
    pub fn token_cache(&self, entries: usize) -> TokenCache {
        TokenCache::new(entries, self.leeway_secs)
    }

    /// Whether this provider's keys come from a JWKS URL too.
    pub fn uses_jwks(&self) -> bool {
        self.jwks
    }

    /// Authenticates a request from its headers at wall time `now`. On success returns the
    /// identity to forward as `x-user-id`.
    pub fn verify(&self, headers: &HeaderMap, now: UnixMillis) -> Result<HeaderValue, AuthFailure> {
        self.verify_with(headers, None, now)
    }

    /// [`Verifier::verify`] with the provider's fetched key set (JWKS), if it has one.
    pub fn verify_with(
        &self,
        headers: &HeaderMap,
        fetched: Option<&KeySet>,
        now: UnixMillis,
    ) -> Result<HeaderValue, AuthFailure> {
        let token = request_token(headers)?;
        self.verify_token_with(token, fetched, now)
    }

    /// [`Verifier::verify_with`] through `cache` (this provider's): a token accepted before
    /// and still inside its `nbf`/`exp` window costs a lookup. Same answers as without it;
    /// see [`crate::token_cache`].
    pub fn verify_cached(
        &self,
        headers: &HeaderMap,
        fetched: Option<&Arc<KeySet>>,
        cache: &mut TokenCache,
        now: UnixMillis,
    ) -> Result<HeaderValue, AuthFailure> {
        if !cache.is_enabled() || (self.jwks && fetched.is_none()) {
            return self.verify_with(headers, fetched.map(|k| &**k), now);
        }
        let token = request_token(headers)?;
        cache.use_keys(fetched);
        if let Some(user) = cache.get(token, now.as_secs()) {
            return Ok(user);
        }
        let (user, window) = self.check_token(token, fetched.map(|k| &**k), now)?;
        cache.put(token, &user, window);
        Ok(user)
    }

    /// Verifies a bare token (no `Bearer ` prefix).
    pub fn verify_token(&self, token: &str, now: UnixMillis) -> Result<HeaderValue, AuthFailure> {
        self.verify_token_with(token, None, now)
    }

    /// Verifies a bare token with the configured keys and `fetched` (a JWKS's keys). A JWKS
    /// provider with no usable fetched set answers [`AuthFailure::KeysUnavailable`] for a
    /// token it could not check with its configured keys.
    pub fn verify_token_with(
        &self,
        token: &str,
        fetched: Option<&KeySet>,
        now: UnixMillis,
    ) -> Result<HeaderValue, AuthFailure> {
        self.check_token(token, fetched, now).map(|(user, _)| user)
    }

    /// The whole check of a bare token: its identity and the time window it is valid in.
    fn check_token(
        &self,
        token: &str,
        fetched: Option<&KeySet>,
        now: UnixMillis,
    ) -> Result<(HeaderValue, Window), AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| classify_bad_header(token))?;
        let Some((alg, validation)) =
            from_jwt(header.alg).and_then(|a| self.allowed.iter().find(|(x, _)| *x == a))
        else {
            return Err(AuthFailure::AlgorithmNotAllowed);
        };
        let key = match select_key(*alg, header.kid.as_deref(), &self.keys, fetched) {
            Ok(k) => k,
            Err(AuthFailure::UnknownKey) if self.jwks && fetched.is_none() => {
                return Err(AuthFailure::KeysUnavailable);
            }
            Err(e) => return Err(e),
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthFailure::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
                    AuthFailure::AlgorithmNotAllowed
                }
                // A key of the right family but the wrong curve or shape.
                ErrorKind::InvalidKeyFormat
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidRsaKey(_) => AuthFailure::KeyMismatch,
                ErrorKind::Base64(_) => AuthFailure::Malformed("bad base64"),
                ErrorKind::Json(_) => AuthFailure::Malformed("claims are not a JSON object"),
                ErrorKind::Utf8(_) => AuthFailure::Malformed("claims are not UTF-8"),
                _ => AuthFailure::Malformed("not a JWT"),
            })?;
        self.check_claims(&data.claims, now)
    }

    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        now: UnixMillis,
    ) -> Result<(HeaderValue, Window), AuthFailure> {
        let now = now.as_secs();
        let mut window = Window {
            not_before: None,
            expires: None,
        };
        match claims.get("exp") {
            Some(v) => {
                let exp = numeric_date(v).ok_or(AuthFailure::Malformed("exp is not a number"))?;
                if now >= exp.saturating_add(self.leeway_secs) {
                    return Err(AuthFailure::Expired);
                }
                window.expires = Some(exp);
            }
            None if self.require_exp => return Err(AuthFailure::MissingClaim("exp")),
            None => {}
        }
        if let Some(v) = claims.get("nbf") {
            let nbf = numeric_date(v).ok_or(AuthFailure::Malformed("nbf is not a number"))?;
            if now.saturating_add(self.leeway_secs) < nbf {
                return Err(AuthFailure::NotYetValid);
            }
            window.not_before = Some(nbf);
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
            Ok(v) if !v.is_empty() && v.len() <= 256 => Ok((v, window)),
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

/// The token of a request's one `Authorization` header.
fn request_token(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthFailure::Missing)?;
    if values.next().is_some() {
        return Err(AuthFailure::Malformed("more than one Authorization header"));
    }
    bearer_token(value)
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
            token_cache: 0,
            keys: Vec::new(),
            jwks: None,
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

    fn hs_kid(claims: Value, secret: &str, kid: Option<&str>, alg: Algorithm) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_owned);
        encode(
            &h,
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn keyed(kid: &str, secret: &str, alg: Option<JwtAlgorithm>) -> StaticKey {
        StaticKey {
            kid: kid.into(),
            alg,
            material: KeyMaterial::Secret(Secret(secret.into())),
        }
    }

    #[test]
    fn keys_are_chosen_by_kid_and_must_fit_the_algorithm() {
        let mut c = cfg();
        c.algorithms = vec![JwtAlgorithm::HS256, JwtAlgorithm::HS384];
        c.secret = None;
        c.keys = vec![
            keyed("old", "s-old", None),
            keyed("new", "s-new", Some(JwtAlgorithm::HS256)),
        ];
        let v = Verifier::new(&c).unwrap();
        let claims = json!({"userId": "u", "exp": NOW_S + 60});
        let ok = |t: &str| v.verify_token(t, NOW);
        assert!(
            ok(&hs_kid(
                claims.clone(),
                "s-old",
                Some("old"),
                Algorithm::HS256
            ))
            .is_ok()
        );
        assert!(
            ok(&hs_kid(
                claims.clone(),
                "s-new",
                Some("new"),
                Algorithm::HS256
            ))
            .is_ok()
        );
        // The kid picks the key: signed by "new" but naming "old" does not verify.
        assert_eq!(
            ok(&hs_kid(
                claims.clone(),
                "s-new",
                Some("old"),
                Algorithm::HS256
            ))
            .unwrap_err(),
            AuthFailure::BadSignature
        );
        // "new" is for HS256 only: an HS384 token naming it is refused before any check.
        assert_eq!(
            ok(&hs_kid(
                claims.clone(),
                "s-new",
                Some("new"),
                Algorithm::HS384
            ))
            .unwrap_err(),
            AuthFailure::KeyMismatch
        );
        assert_eq!(
            ok(&hs_kid(
                claims.clone(),
                "s-new",
                Some("gone"),
                Algorithm::HS256
            ))
            .unwrap_err(),
            AuthFailure::UnknownKey
        );
        // No kid and two keys: no guessing.
        assert_eq!(
            ok(&hs_kid(claims.clone(), "s-new", None, Algorithm::HS256)).unwrap_err(),
            AuthFailure::UnknownKey
        );
        // The unnamed secret still takes tokens with a kid nobody knows (as before kids).
        let v = Verifier::new(&cfg()).unwrap();
        assert!(
            v.verify_token(&hs_kid(claims, "s3cret", Some("x"), Algorithm::HS256), NOW)
                .is_ok()
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

    /// The cache is invisible: over any sequence of tokens, times and fetched key sets
    /// (including a rotation that drops a key, and a refetch of the same keys), the cached
    /// verifier answers exactly what the plain one does.
    mod cached {
        use super::*;
        use proptest::prelude::*;

        fn jwks_cfg() -> AuthConfig {
            AuthConfig {
                keys: vec![keyed("static", "s-static", None)],
                jwks: Some(JwksConfig {
                    url: "http://idp.test/jwks".into(),
                    min_refresh: crate::auth::DEFAULT_MIN_REFRESH,
                    max_refresh: crate::auth::DEFAULT_MAX_REFRESH,
                    refetch_interval: crate::auth::DEFAULT_REFETCH_INTERVAL,
                    max_stale: crate::auth::DEFAULT_MAX_STALE,
                    timeout: crate::auth::DEFAULT_TIMEOUT,
                    ready_timeout: crate::auth::DEFAULT_READY_TIMEOUT,
                }),
                ..cfg()
            }
        }

        fn set(kids: &[&str]) -> Arc<KeySet> {
            let keys = kids
                .iter()
                .map(|k| {
                    Key::from_material(
                        Some((*k).to_owned()),
                        None,
                        &KeyMaterial::Secret(Secret(format!("s-{k}"))),
                    )
                    .unwrap()
                })
                .collect();
            Arc::new(KeySet { keys })
        }

        /// Tokens around NOW_S: valid, expiring, not yet valid, without exp, badly signed,
        /// each signed by the unnamed secret, a static kid, or a fetched kid.
        fn tokens() -> Vec<String> {
            let mut out = Vec::new();
            let claims = [
                json!({"userId": "a", "exp": NOW_S + 100}),
                json!({"userId": "b", "exp": NOW_S + 5}),
                json!({"userId": "c", "exp": NOW_S + 100, "nbf": NOW_S + 50}),
                json!({"userId": "d"}),
                json!({"sub": 7, "exp": NOW_S + 60, "nbf": NOW_S - 10}),
                json!({"exp": NOW_S + 60}),
            ];
            for c in claims {
                out.push(hs_kid(c.clone(), "s3cret", None, Algorithm::HS256));
                out.push(hs_kid(
                    c.clone(),
                    "s-static",
                    Some("static"),
                    Algorithm::HS256,
                ));
                out.push(hs_kid(c.clone(), "s-k1", Some("k1"), Algorithm::HS256));
                out.push(hs_kid(c.clone(), "s-k2", Some("k2"), Algorithm::HS256));
                out.push(hs_kid(c, "wrong", Some("k1"), Algorithm::HS256));
            }
            out.push("not.a.token".into());
            out
        }

        #[test]
        fn a_rotation_that_drops_a_key_drops_its_tokens() {
            let v = Verifier::new(&jwks_cfg()).unwrap();
            let mut cache = v.token_cache(64);
            let t = hs_kid(
                json!({"userId": "a", "exp": NOW_S + 100}),
                "s-k1",
                Some("k1"),
                Algorithm::HS256,
            );
            let h = with_auth(&format!("Bearer {t}"));
            let before = set(&["k1", "k2"]);
            assert_eq!(
                v.verify_cached(&h, Some(&before), &mut cache, NOW),
                Ok(HeaderValue::from_static("a"))
            );
            assert_eq!(cache.stats().entries, 1);
            let after = set(&["k2"]);
            let plain = v.verify_with(&h, Some(&after), NOW);
            assert!(plain.is_err());
            assert_eq!(v.verify_cached(&h, Some(&after), &mut cache, NOW), plain);
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]
            #[test]
            fn answers_as_without_it(
                jwks in any::<bool>(),
                entries in prop_oneof![Just(1usize), Just(4), Just(64)],
                steps in proptest::collection::vec((0usize..31, 0u64..200, 0usize..4), 1..60),
            ) {
                let cfg = if jwks { jwks_cfg() } else { cfg() };
                let v = Verifier::new(&cfg).unwrap();
                let mut cache = v.token_cache(entries);
                let tokens = tokens();
                // Fetched sets: none (stale), {k1, k2}, the same again (a refetch), {k2}.
                let both = set(&["k1", "k2"]);
                let sets = [None, Some(both.clone()), Some(set(&["k1", "k2"])), Some(set(&["k2"]))];
                let mut t = 0;
                for (i, dt, k) in steps {
                    // Time mostly moves forward, as on a worker; sometimes it steps back.
                    t = if dt < 190 { t + dt / 32 } else { t.saturating_sub(dt - 180) };
                    let now = UnixMillis((NOW_S - 20 + t) * 1000);
                    let fetched = if jwks { sets[k].as_ref() } else { None };
                    let h = with_auth(&format!("Bearer {}", tokens[i]));
                    let plain = v.verify_with(&h, fetched.map(|f| &**f), now);
                    let cached = v.verify_cached(&h, fetched, &mut cache, now);
                    prop_assert_eq!(cached, plain, "token {} at +{}s with set {}", i, t, k);
                }
            }
        }
    }
}
