//! Real JWTs for simulated clients, minted with the scenario config's HS secret. Claims are
//! fixed functions of the virtual wall clock, so the same scenario mints the same bytes; the
//! policy verifies them exactly as the gateway would.

use aegis_policy::config::{AuthConfig, JwtAlgorithm};
use aegis_policy::http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use crate::scenario::TokenKind;

const DAY_SECS: u64 = 86_400;

/// Mints tokens of every [`TokenKind`] for any user.
pub struct Minter {
    alg: Algorithm,
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
        let wrong = format!("{}-not-the-secret", secret.0);
        let leeway = auth.leeway.as_secs();
        Some(Minter {
            alg,
            key: EncodingKey::from_secret(secret.0.as_bytes()).ok()?,
            wrong_key: EncodingKey::from_secret(wrong.as_bytes()).ok()?,
            user_claim: auth.user_claim.clone(),
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            iat: start_secs,
            exp: end_secs.saturating_add(DAY_SECS),
            expired_exp: start_secs.saturating_sub(leeway + DAY_SECS),
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

    /// The bare token, or `None` for [`TokenKind::Missing`].
    pub fn token(&self, user: &str, kind: TokenKind) -> Option<String> {
        let (exp, key) = match kind {
            TokenKind::Missing => return None,
            TokenKind::Valid => (self.exp, &self.key),
            TokenKind::Expired => (self.expired_exp, &self.key),
            TokenKind::BadSignature | TokenKind::UnknownKid => (self.exp, &self.wrong_key),
        };
        let mut claims = Map::new();
        claims.insert(self.user_claim.clone(), Value::from(user));
        claims.insert(
            "iat".into(),
            Value::from(self.iat.min(exp.saturating_sub(1))),
        );
        claims.insert("exp".into(), Value::from(exp));
        if let Some(i) = &self.issuer {
            claims.insert("iss".into(), Value::from(i.as_str()));
        }
        if let Some(a) = &self.audience {
            claims.insert("aud".into(), Value::from(a.as_str()));
        }
        // Signing an in-memory JSON object with an HMAC key cannot fail.
        let mut header = Header::new(self.alg);
        header.kid.clone_from(&self.kid);
        jsonwebtoken::encode(&header, &claims, key).ok()
    }

    /// This minter naming another `kid` (an unknown one, for [`TokenKind::UnknownKid`]).
    pub fn naming(&self, kid: String) -> Minter {
        Minter {
            alg: self.alg,
            key: self.key.clone(),
            wrong_key: self.wrong_key.clone(),
            user_claim: self.user_claim.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            iat: self.iat,
            exp: self.exp,
            expired_exp: self.expired_exp,
            kid: Some(kid),
        }
    }

    /// Request headers carrying `kind` for `user`.
    pub fn headers(&self, user: &str, kind: TokenKind) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = self.token(user, kind)
            && let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}"))
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
        let ok = v.verify_token(&m.token("alice", TokenKind::Valid).unwrap(), now);
        assert_eq!(ok.unwrap(), "alice");
        let exp = v.verify_token(&m.token("alice", TokenKind::Expired).unwrap(), now);
        assert_eq!(exp.unwrap_err().reason(), "expired");
        let bad = v.verify_token(&m.token("alice", TokenKind::BadSignature).unwrap(), now);
        assert_eq!(bad.unwrap_err().reason(), "bad_signature");
        assert!(m.token("alice", TokenKind::Missing).is_none());
        assert_eq!(
            m.token("bob", TokenKind::Valid),
            m.token("bob", TokenKind::Valid),
            "deterministic"
        );
    }
}
