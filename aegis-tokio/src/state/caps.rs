//! Counts per client IP, for the caps that keep one client from taking what all share:
//! connections open (`server.max_connections_per_ip`) and requests in flight
//! (`server.max_requests_per_ip`). Sharded over independent locks, held only to count.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;

use super::runtime::lock;

/// Independent locks, so that concurrent clients rarely contend.
const SHARDS: usize = 16;

/// How many of something each client IP holds now.
#[derive(Debug)]
pub struct PerIp {
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
    pick: RandomState,
}

impl Default for PerIp {
    fn default() -> Self {
        PerIp {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            pick: RandomState::new(),
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
    shard: &'a Mutex<HashMap<IpAddr, u32>>,
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
