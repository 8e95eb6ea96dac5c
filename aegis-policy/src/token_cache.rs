//! A bounded cache of tokens a [`Verifier`](crate::Verifier) has accepted, so that a client
//! sending the same token again costs a lookup instead of a signature check and a JSON parse.
//!
//! It is invisible in results: a hit answers exactly what verifying again would, because
//! everything else a verification depends on is fixed for the cache's lifetime or checked
//! on each hit:
//! - the provider's settings (algorithms, keys, issuer, audience, leeway): a cache belongs to
//!   one provider of one [`Policy`](crate::Policy); a reload builds new caches;
//! - the time: each entry keeps its token's `nbf` and `exp`, checked against `now` on every hit
//!   with the same leeway rule as a full check; a token outside its window is verified again
//!   (which names the failure) and leaves the cache;
//! - a JWKS provider's fetched keys: the cache remembers which key set its entries were
//!   verified under and empties itself when the driver hands it another (a rotation that drops
//!   a key drops the tokens it signed); with no usable fetched set it is bypassed.
//!
//! Only accepted tokens enter, so a flood of forged tokens cannot fill it. It is
//! set-associative (4 ways): a lookup hashes the token's last bytes (the signature, which the
//! sender of a valid token does not choose) and compares the whole token, and inserting into
//! a full set replaces its oldest entry. One cache serves one thread: the gateway keeps one per
//! worker, so no lock is shared between cores.

use std::any::Any;
use std::sync::Arc;

use http::HeaderValue;

const WAYS: usize = 4;

/// What a verification established about a token, beyond its identity: its time window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// `nbf`, seconds.
    pub not_before: Option<u64>,
    /// `exp`, seconds.
    pub expires: Option<u64>,
}

impl Window {
    /// The same rule as the full check: valid while `now < exp + leeway` and
    /// `now + leeway >= nbf`.
    fn contains(&self, now_secs: u64, leeway_secs: u64) -> bool {
        self.expires
            .is_none_or(|exp| now_secs < exp.saturating_add(leeway_secs))
            && self
                .not_before
                .is_none_or(|nbf| now_secs.saturating_add(leeway_secs) >= nbf)
    }
}

#[derive(Debug)]
struct Entry {
    token: Box<str>,
    user: HeaderValue,
    window: Window,
    /// Insertion order within the cache (the oldest of a full set is replaced).
    stamp: u64,
}

/// Hits and misses since the cache was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
}

/// Accepted tokens of one provider; see the module docs.
#[derive(Debug)]
pub struct TokenCache {
    /// Allocated at the first insert: a worker that never sees a token keeps no room.
    sets: Vec<[Option<Entry>; WAYS]>,
    set_count: usize,
    leeway_secs: u64,
    /// The fetched key set the entries were verified under (JWKS providers), held (so that
    /// its address cannot be reused by another set) and compared by address.
    keys: Option<Arc<dyn Any + Send + Sync>>,
    next_stamp: u64,
    stats: CacheStats,
}

impl TokenCache {
    /// A cache of about `entries` tokens (rounded up to whole sets; 0 keeps nothing) for a
    /// provider with this leeway.
    pub fn new(entries: usize, leeway_secs: u64) -> TokenCache {
        let set_count = if entries == 0 {
            0
        } else {
            entries.div_ceil(WAYS).next_power_of_two()
        };
        TokenCache {
            sets: Vec::new(),
            set_count,
            leeway_secs,
            keys: None,
            next_stamp: 0,
            stats: CacheStats::default(),
        }
    }

    /// Whether it keeps anything at all.
    pub fn is_enabled(&self) -> bool {
        self.set_count > 0
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.sets.iter().flatten().filter(|e| e.is_some()).count(),
            ..self.stats
        }
    }

    /// Tells the cache which fetched key set verification uses now. Another set than its
    /// entries were verified under empties it.
    pub(crate) fn use_keys<K: Any + Send + Sync>(&mut self, fetched: Option<&Arc<K>>) {
        let same = match (&self.keys, fetched) {
            (None, None) => true,
            (Some(a), Some(b)) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
            _ => false,
        };
        if !same {
            for set in self.sets.iter_mut() {
                *set = Default::default();
            }
            self.keys = fetched.map(|k| Arc::clone(k) as Arc<dyn Any + Send + Sync>);
        }
    }

    fn set_of(&self, token: &str) -> usize {
        // FNV-1a over the last 16 bytes: the end of the signature.
        let tail = &token.as_bytes()[token.len().saturating_sub(16)..];
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in tail {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        // The low bits of FNV mix poorly: fold the high half in.
        ((h ^ (h >> 32)) as usize) & (self.sets.len() - 1)
    }

    /// The identity of `token` if it is cached and valid at `now_secs`. An entry outside its
    /// window leaves the cache (the caller verifies the token again, which says why).
    pub(crate) fn get(&mut self, token: &str, now_secs: u64) -> Option<HeaderValue> {
        if self.sets.is_empty() {
            self.stats.misses += u64::from(self.is_enabled());
            return None;
        }
        let leeway = self.leeway_secs;
        let set = self.set_of(token);
        let slot = self.sets[set]
            .iter_mut()
            .find(|e| e.as_ref().is_some_and(|e| *e.token == *token));
        let Some(slot) = slot else {
            self.stats.misses += 1;
            return None;
        };
        let entry = slot.as_ref().expect("found a filled slot");
        if entry.window.contains(now_secs, leeway) {
            self.stats.hits += 1;
            Some(entry.user.clone())
        } else {
            *slot = None;
            self.stats.misses += 1;
            None
        }
    }

    /// Remembers a token the verifier accepted.
    pub(crate) fn put(&mut self, token: &str, user: &HeaderValue, window: Window) {
        if !self.is_enabled() {
            return;
        }
        if self.sets.is_empty() {
            self.sets = (0..self.set_count).map(|_| Default::default()).collect();
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let set = self.set_of(token);
        let ways = &mut self.sets[set];
        let slot = match ways.iter().position(Option::is_none) {
            Some(i) => i,
            None => (0..WAYS)
                .min_by_key(|&i| ways[i].as_ref().map_or(0, |e| e.stamp))
                .expect("WAYS > 0"),
        };
        ways[slot] = Some(Entry {
            token: token.into(),
            user: user.clone(),
            window,
            stamp,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    const OPEN: Window = Window {
        not_before: None,
        expires: None,
    };

    #[test]
    fn a_cached_token_answers_within_its_window_only() {
        let mut c = TokenCache::new(8, 5);
        let w = Window {
            not_before: Some(100),
            expires: Some(200),
        };
        c.put("a.b.c", &user("u1"), w);
        assert_eq!(c.get("a.b.c", 94), None, "nbf 100 - leeway 5 is 95");
        // The early miss dropped it: verification puts it back when it is valid.
        c.put("a.b.c", &user("u1"), w);
        assert_eq!(c.get("a.b.c", 95), Some(user("u1")));
        assert_eq!(c.get("a.b.c", 204), Some(user("u1")));
        assert_eq!(c.get("a.b.c", 205), None, "exp 200 + leeway 5");
        assert_eq!(c.get("a.b.c", 150), None, "an expired entry left");
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 2,
                misses: 3,
                entries: 0
            }
        );
    }

    #[test]
    fn only_the_same_token_hits() {
        let mut c = TokenCache::new(64, 0);
        c.put("header.claims.signature0123456789", &user("u1"), OPEN);
        assert_eq!(
            c.get("header.claims.signature0123456789", 1),
            Some(user("u1"))
        );
        // Same tail (same set), different token.
        assert_eq!(c.get("other.claims.signature0123456789", 1), None);
    }

    #[test]
    fn a_full_set_replaces_its_oldest_entry() {
        // One set of four.
        let mut c = TokenCache::new(4, 0);
        for i in 0..5 {
            c.put(&format!("t{i}"), &user(&format!("u{i}")), OPEN);
        }
        assert_eq!(c.get("t0", 1), None);
        for i in 1..5 {
            assert_eq!(c.get(&format!("t{i}"), 1), Some(user(&format!("u{i}"))));
        }
        assert_eq!(c.stats().entries, 4);
    }

    #[test]
    fn another_key_set_empties_it() {
        let mut c = TokenCache::new(8, 0);
        let first = Arc::new(String::from("keys"));
        c.use_keys(Some(&first));
        c.put("t", &user("u"), OPEN);
        c.use_keys(Some(&first.clone()));
        assert_eq!(c.get("t", 1), Some(user("u")));
        // An equal but different set (a refetch) counts as another.
        c.use_keys(Some(&Arc::new(String::from("keys"))));
        assert_eq!(c.get("t", 1), None);
    }

    #[test]
    fn size_zero_keeps_nothing() {
        let mut c = TokenCache::new(0, 0);
        c.put("t", &user("u"), OPEN);
        assert_eq!(c.get("t", 1), None);
        assert!(!c.is_enabled());
    }
}
