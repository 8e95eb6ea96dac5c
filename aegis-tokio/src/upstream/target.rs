//! Where a target's requests go: its authority, the `Host` it is sent, and its slot in the
//! workers' connection pools.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use http::HeaderValue;
use http::uri::Authority;

/// Where a target's requests go.
#[derive(Debug)]
pub struct Target {
    pub authority: Authority,
    /// The `Host` header sent to it.
    pub host: HeaderValue,
    /// Its slot in the upstream connection pools.
    pub pool: Key,
}

impl Target {
    pub fn new(authority: &Authority) -> Target {
        Target {
            host: HeaderValue::from_str(authority.as_str())
                .expect("a validated authority is a header value"),
            pool: key(authority),
            authority: authority.clone(),
        }
    }
}

/// A target authority's slot in every worker's pool: one number per authority for the life
/// of the process (reloads that keep a target keep its pooled connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(pub(super) usize);

/// The slot of `authority`, assigned the first time it is seen.
pub fn key(authority: &Authority) -> Key {
    static KEYS: Mutex<Option<HashMap<Authority, usize>>> = Mutex::new(None);
    let mut keys = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
    let keys = keys.get_or_insert_with(HashMap::default);
    let next = keys.len();
    Key(*keys.entry(authority.clone()).or_insert(next))
}
