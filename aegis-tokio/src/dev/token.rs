//! `aegis token`: HS256 test tokens (what the seed's README did with a node one-liner).

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Map, Value};

use crate::time::wall;

/// Signs `{userId, sub, iat, exp, ...claims}` with `secret`. A claim value that parses as
/// JSON (`42`, `true`, `["a"]`) is kept typed; anything else is a string.
pub fn mint(secret: &str, user: &str, claims: &[String], exp: Duration) -> Result<String, String> {
    let now = wall().as_secs();
    let mut m = Map::new();
    m.insert("userId".into(), Value::from(user));
    m.insert("sub".into(), Value::from(user));
    m.insert("iat".into(), Value::from(now));
    m.insert("exp".into(), Value::from(now + exp.as_secs().max(1)));
    for c in claims {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| format!("--claim {c:?}: expected key=value"))?;
        if k.is_empty() {
            return Err(format!("--claim {c:?}: empty key"));
        }
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::from(v));
        m.insert(k.to_owned(), v);
    }
    let key = EncodingKey::from_secret(secret.as_bytes())
        .map_err(|e| format!("cannot use the secret: {e}"))?;
    encode(&Header::default(), &Value::Object(m), &key)
        .map_err(|e| format!("cannot sign the token: {e}"))
}
