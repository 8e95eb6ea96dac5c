//! Real JWTs for simulated clients, minted with the scenario config's HS secret. Claims are
//! fixed functions of the virtual wall clock, so the same scenario mints the same bytes; the
//! policy verifies them exactly as the gateway would.

use aegis_policy::config::{AuthConfig, JwtAlgorithm};
use aegis_policy::http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use crate::scenario::TokenKind;

const DAY_SECS: u64 = 86_400;

/// Mints tokens of every [`TokenKind`] for any user.
pub struct Minter {
    alg: Algorithm,
    /// An HMAC algorithm the config does not allow, if there is one.
    other_alg: Option<Algorithm>,
    /// The forgery's algorithm and signature length: the first public-key algorithm the
    /// config allows (EdDSA when it allows none).
    forged: (&'static str, usize),
    key: EncodingKey,
    wrong_key: EncodingKey,
    user_claim: String,
    issuer: Option<String>,
    audience: Option<String>,
    /// `iat` of every token and `exp` of valid ones (Unix seconds).
    iat: u64,
    exp: u64,
    /// `exp` of expired ones: past even with the leeway.
    expired_exp: u64,
    leeway: u64,
    /// The `kid` in the header (`[idp]` scenarios).
    kid: Option<String>,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("alg", &self.alg)
            .field("user_claim", &self.user_claim)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// A minter for `auth`, valid from `start_secs` until `end_secs` (plus a day). `None` when
    /// the config allows no HS algorithm: there is no private key to sign with.
    pub fn new(auth: &AuthConfig, start_secs: u64, end_secs: u64) -> Option<Minter> {
        let alg = auth.algorithms.iter().find(|a| a.is_hmac())?;
        let secret = auth.secret.as_ref()?;
        let alg = match alg {
            JwtAlgorithm::HS384 => Algorithm::HS384,
            JwtAlgorithm::HS512 => Algorithm::HS512,
            _ => Algorithm::HS256,
        };
        let allowed = |a: JwtAlgorithm| auth.algorithms.contains(&a);
        let other_alg = [
            (JwtAlgorithm::HS256, Algorithm::HS256),
            (JwtAlgorithm::HS384, Algorithm::HS384),
            (JwtAlgorithm::HS512, Algorithm::HS512),
        ]
        .into_iter()
        .find(|(a, _)| !allowed(*a))
        .map(|(_, alg)| alg);
        let wrong = format!("{}-not-the-secret", secret.0);
        let leeway = auth.leeway.as_secs();
        let forged = auth
            .algorithms
            .iter()
            .find_map(|a| match a {
                JwtAlgorithm::EdDSA => Some(("EdDSA", 64)),
                JwtAlgorithm::ES256 => Some(("ES256", 64)),
                JwtAlgorithm::ES384 => Some(("ES384", 96)),
                JwtAlgorithm::RS256 | JwtAlgorithm::RS384 | JwtAlgorithm::RS512 => {
                    Some((a.name(), 256))
                }
                JwtAlgorithm::PS256 => Some(("PS256", 256)),
                _ => None,
            })
            .unwrap_or(("EdDSA", 64));
        Some(Minter {
            alg,
            other_alg,
            forged,
            key: EncodingKey::from_secret(secret.0.as_bytes()).ok()?,
            wrong_key: EncodingKey::from_secret(wrong.as_bytes()).ok()?,
            user_claim: auth.user_claim.clone(),
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            iat: start_secs,
            exp: end_secs.saturating_add(DAY_SECS),
            expired_exp: start_secs.saturating_sub(leeway + DAY_SECS),
            leeway,
            kid: None,
        })
    }

    /// A minter signing HS256 with `secret` and naming `kid` (a simulated IdP's key).
    pub fn with_key(
        auth: &AuthConfig,
        kid: &str,
        secret: &str,
        start_secs: u64,
        end_secs: u64,
    ) -> Option<Minter> {
        let mut a = auth.clone();
        a.algorithms = vec![JwtAlgorithm::HS256];
        a.secret = Some(aegis_policy::config::Secret(secret.to_owned()));
        let mut m = Minter::new(&a, start_secs, end_secs)?;
        m.kid = Some(kid.to_owned());
        Some(m)
    }

    /// Request headers for a token signed like this minter's but naming another `kid` (an
    /// unknown one, for [`TokenKind::UnknownKid`]).
    pub fn headers_naming(&self, kid: String, user: &str, now_secs: u64) -> HeaderMap {
        let m = Minter {
            alg: self.alg,
            other_alg: self.other_alg,
            forged: self.forged,
            key: self.key.clone(),
            wrong_key: self.wrong_key.clone(),
            user_claim: self.user_claim.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            iat: self.iat,
            exp: self.exp,
            expired_exp: self.expired_exp,
            leeway: self.leeway,
            kid: Some(kid),
        };
        m.headers(user, TokenKind::UnknownKid, now_secs)
    }

    /// The bare token, or `None` for [`TokenKind::Missing`] and [`TokenKind::NotBearer`].
    /// `now_secs` is the request's wall time: the edge kinds are minted relative to it.
    pub fn token(&self, user: &str, kind: TokenKind, now_secs: u64) -> Option<String> {
        let mut exp = Some(self.exp);
        let mut nbf = None;
        let mut key = &self.key;
        let mut iss = self.issuer.clone();
        let mut aud = self.audience.clone().map(Value::from);
        let mut user = Some(Value::from(user));
        let mut alg = self.alg;
        match kind {
            TokenKind::Missing | TokenKind::NotBearer => return None,
            TokenKind::Valid => {}
            TokenKind::Expired => exp = Some(self.expired_exp),
            TokenKind::BadSignature | TokenKind::UnknownKid => key = &self.wrong_key,
            // Refused when now >= exp + leeway: one second short of that, and exactly that.
            TokenKind::ExpiredInLeeway => {
                exp = Some((now_secs + 1).saturating_sub(self.leeway));
            }
            TokenKind::ExpiredPastLeeway => exp = Some(now_secs.saturating_sub(self.leeway)),
            // Refused when now + leeway < nbf.
            TokenKind::NbfInLeeway => nbf = Some(now_secs + self.leeway),
            TokenKind::NbfPastLeeway => nbf = Some(now_secs + self.leeway + 1),
            TokenKind::WrongIssuer => iss = Some(format!("not-{}", iss.unwrap_or_default())),
            TokenKind::WrongAudience => {
                let configured = self.audience.clone().unwrap_or_default();
                aud = Some(Value::from(format!("not-{configured}")));
            }
            TokenKind::NoExp => exp = None,
            TokenKind::OtherAlg => alg = self.other_alg.unwrap_or(self.alg),
            TokenKind::AudienceList => {
                let mut list = vec![Value::from("someone-else")];
                list.extend(self.audience.clone().map(Value::from));
                aud = Some(Value::Array(list));
            }
            TokenKind::EmptyUser => user = Some(Value::from("")),
            TokenKind::NoUser => user = None,
            TokenKind::WrongAudienceList => {
                aud = Some(Value::Array(vec![Value::from("someone-else")]));
            }
            TokenKind::FractionalExp | TokenKind::NegativeExp | TokenKind::Forged => {}
        }
        let mut claims = Map::new();
        if let Some(u) = user {
            claims.insert(self.user_claim.clone(), u);
        }
        let iat = exp.map_or(self.iat, |e| self.iat.min(e.saturating_sub(1)));
        claims.insert("iat".into(), Value::from(iat));
        match (kind, exp) {
            (TokenKind::FractionalExp, Some(e)) => {
                claims.insert("exp".into(), Value::from(e as f64 + 0.5));
            }
            (TokenKind::NegativeExp, _) => {
                claims.insert("exp".into(), Value::from(-1.5));
            }
            (_, Some(e)) => {
                claims.insert("exp".into(), Value::from(e));
            }
            (_, None) => {}
        }
        if let Some(n) = nbf {
            claims.insert("nbf".into(), Value::from(n));
        }
        if let Some(i) = iss {
            claims.insert("iss".into(), Value::from(i));
        }
        if let Some(a) = aud {
            claims.insert("aud".into(), a);
        }
        if kind == TokenKind::Forged {
            // A well-formed token whose signature (of the right length) nobody made.
            let (alg, len) = self.forged;
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"typ":"JWT","alg":"{alg}"}}"#));
            let body = URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string());
            let sig = URL_SAFE_NO_PAD.encode(vec![7u8; len]);
            return Some(format!("{header}.{body}.{sig}"));
        }
        // Signing an in-memory JSON object with an HMAC key cannot fail.
        let mut header = Header::new(alg);
        header.kid.clone_from(&self.kid);
        jsonwebtoken::encode(&header, &claims, key).ok()
    }

    /// Request headers carrying `kind` for `user` at wall second `now_secs`.
    pub fn headers(&self, user: &str, kind: TokenKind, now_secs: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        let value = match kind {
            TokenKind::NotBearer => Some(format!("Basic {user}")),
            _ => self
                .token(user, kind, now_secs)
                .map(|t| format!("Bearer {t}")),
        };
        if let Some(v) = value
            && let Ok(v) = HeaderValue::from_str(&v)
        {
            h.insert(AUTHORIZATION, v);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_policy::{Config, MapEnv, UnixMillis, Verifier};

    #[test]
    fn minted_tokens_verify_as_their_kind() {
        let c = Config::from_toml(
            "[auth]\nsecret = \"s3\"\nissuer = \"me\"\n[[routes]]\npath = \"/\"\ntargets = [\"http://a:1\"]\nauth = true\n",
            &MapEnv::default(),
        )
        .unwrap();
        let auth = c.auth.as_ref().unwrap();
        let m = Minter::new(auth, 1_800_000_000, 1_800_000_100).unwrap();
        let v = Verifier::new(auth).unwrap();
        let now = UnixMillis(1_800_000_050_000);
        let ok = v.verify_token(&m.token("alice", TokenKind::Valid, 0).unwrap(), now);
        assert_eq!(ok.unwrap(), "alice");
        let exp = v.verify_token(&m.token("alice", TokenKind::Expired, 0).unwrap(), now);
        assert_eq!(exp.unwrap_err().reason(), "expired");
        let bad = v.verify_token(&m.token("alice", TokenKind::BadSignature, 0).unwrap(), now);
        assert_eq!(bad.unwrap_err().reason(), "bad_signature");
        assert!(m.token("alice", TokenKind::Missing, 0).is_none());
        // The edges, at the request's own second, against the config's 30 s leeway.
        let at = |k: TokenKind| v.verify_token(&m.token("alice", k, 1_800_000_050).unwrap(), now);
        assert!(at(TokenKind::ExpiredInLeeway).is_ok());
        assert_eq!(
            at(TokenKind::ExpiredPastLeeway).unwrap_err().reason(),
            "expired"
        );
        assert!(at(TokenKind::NbfInLeeway).is_ok());
        assert_eq!(
            at(TokenKind::NbfPastLeeway).unwrap_err().reason(),
            "not_yet_valid"
        );
        assert_eq!(
            at(TokenKind::WrongIssuer).unwrap_err().reason(),
            "wrong_issuer"
        );
        assert!(
            at(TokenKind::WrongAudience).is_ok(),
            "no audience configured"
        );
        assert_eq!(at(TokenKind::NoExp).unwrap_err().reason(), "missing_claim");
        let reason = |k: TokenKind| at(k).map_err(|e| e.reason());
        assert_eq!(reason(TokenKind::OtherAlg), Err("algorithm_not_allowed"));
        assert!(reason(TokenKind::AudienceList).is_ok());
        assert_eq!(reason(TokenKind::EmptyUser), Err("malformed"));
        assert_eq!(reason(TokenKind::NoUser), Err("missing_claim"));
        assert!(reason(TokenKind::FractionalExp).is_ok());
        assert_eq!(reason(TokenKind::NegativeExp), Err("malformed"));
        assert_eq!(reason(TokenKind::Forged), Err("algorithm_not_allowed"));
        // Under allowed public-key algorithms, a forgery's signature does not verify.
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../aegis-policy/tests/keys/");
        for (alg, file) in [
            ("ES256", "ec_public.pem"),
            ("RS256", "rsa_public.pem"),
            ("EdDSA", "ed_public.pem"),
        ] {
            let text = format!(
                "[auth]\nsecret = \"s3\"\nalgorithms = [\"HS256\", \"{alg}\"]\npublic_key_file = \"{file}\"\n[[routes]]\npath = \"/\"\ntargets = [\"http://a:1\"]\nauth = true\n"
            );
            let env = crate::scenario::ScenarioEnv {
                vars: Default::default(),
                base: keys.into(),
            };
            let c = Config::from_toml(&text, &env).unwrap();
            let auth = c.auth.as_ref().unwrap();
            let m = Minter::new(auth, 1_800_000_000, 1_800_000_100).unwrap();
            let v = Verifier::new(auth).unwrap();
            let forged = m.token("alice", TokenKind::Forged, 0).unwrap();
            assert_eq!(
                v.verify_token(&forged, now).unwrap_err().reason(),
                "bad_signature",
                "{alg}"
            );
        }
        assert_eq!(
            m.token("bob", TokenKind::Valid, 0),
            m.token("bob", TokenKind::Valid, 0),
            "deterministic"
        );
    }
}
