//! Counts per client IP, for the caps that keep one client from taking what all share:
//! connections open (`server.max_connections_per_ip`) and requests in flight
//! (`server.max_requests_per_ip`). Sharded over independent locks, held only to count.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;

use super::runtime::lock;

/// Independent locks, so that concurrent clients rarely contend.
const SHARDS: usize = 16;

/// A keyed multiply-xorshift hash of an address: a few instructions where SipHash takes a
/// few hundred (this runs twice per request), and with a random key per process, so that a
/// client cannot choose addresses that collide.
#[derive(Debug, Clone, Copy)]
struct Keyed(u64);

impl BuildHasher for Keyed {
    type Hasher = KeyedHasher;
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher(self.0)
    }
}

#[derive(Debug)]
struct KeyedHasher(u64);

impl Hasher for KeyedHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            self.0 ^= self.0 >> 29;
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// How many of something each client IP holds now.
#[derive(Debug)]
pub struct PerIp {
    shards: Box<[Mutex<HashMap<IpAddr, u32, Keyed>>]>,
    pick: Keyed,
}

impl Default for PerIp {
    fn default() -> Self {
        let key = RandomState::new().hash_one(0u8);
        PerIp {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(Keyed(key))))
                .collect(),
            pick: Keyed(key.rotate_left(17)),
        }
    }
}

impl PerIp {
    /// One more for `ip` if it holds fewer than `max`: a guard that gives it back when
    /// dropped; `None` at the cap.
    pub fn enter(&self, ip: IpAddr, max: usize) -> Option<Held<'_>> {
        let shard = &self.shards[(self.pick.hash_one(ip) as usize) % SHARDS];
        let mut counts = lock(shard);
        let n = counts.entry(ip).or_insert(0);
        if *n as usize >= max {
            return None;
        }
        *n += 1;
        Some(Held { shard, ip })
    }

    /// What `ip` holds now.
    pub fn held(&self, ip: IpAddr) -> u32 {
        let shard = &self.shards[(self.pick.hash_one(ip) as usize) % SHARDS];
        lock(shard).get(&ip).copied().unwrap_or(0)
    }
}

/// One unit a client IP holds; given back on drop (also when its future is dropped midway).
#[derive(Debug)]
pub struct Held<'a> {
    shard: &'a Mutex<HashMap<IpAddr, u32, Keyed>>,
    ip: IpAddr,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut counts = lock(self.shard);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_max_and_gets_its_units_back() {
        let p = PerIp::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let one = p.enter(a, 2).unwrap();
        let two = p.enter(a, 2).unwrap();
        assert!(p.enter(a, 2).is_none());
        let other = p.enter(b, 2).unwrap();
        assert_eq!((p.held(a), p.held(b)), (2, 1));
        drop(one);
        let three = p.enter(a, 2).unwrap();
        drop((two, three, other));
        assert_eq!((p.held(a), p.held(b)), (0, 0));
    }
}
