//! The rate-limit counter stores the gateway can use: a sharded in-memory store (one process)
//! or Redis (shared by every gateway instance). Both only apply the policy's pure step; no
//! decision is made here.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};

use aegis_policy::config::{StoreConfig, StoreKind};
use aegis_policy::{CounterReply, CounterRequest, CounterStore, MemoryStore, StoreError};

use super::redis::RedisStore;

/// Independent locks, so that concurrent requests for different keys rarely contend.
const SHARDS: usize = 16;

/// The bounded in-memory store, split over [`SHARDS`] mutexes. Keys are hashed with a randomly
/// seeded hasher: a client cannot choose keys that collide.
#[derive(Debug)]
pub struct ShardedMemory {
    shards: Box<[Mutex<MemoryStore<RandomState>>]>,
    pick: RandomState,
}

impl ShardedMemory {
    pub fn new(max_keys: usize) -> ShardedMemory {
        let per_shard = max_keys.div_ceil(SHARDS).max(1);
        ShardedMemory {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(MemoryStore::with_hasher(per_shard, RandomState::new())))
                .collect(),
            pick: RandomState::new(),
        }
    }

    /// Applies the pure step under the key's shard lock (held for no `.await`).
    pub fn apply(&self, req: &CounterRequest) -> Result<CounterReply, StoreError> {
        let i = (self.pick.hash_one(&req.key) as usize) % self.shards.len();
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(req)
    }
}

/// The configured store.
#[derive(Debug)]
pub enum Store {
    Memory(ShardedMemory),
    Redis(RedisStore),
}

impl Store {
    /// Builds the store a config asks for. Redis connects in the background: the gateway
    /// starts, and serves under `on_store_error`, even while Redis is down.
    pub fn from_config(c: &StoreConfig) -> Result<Store, String> {
        Ok(match c.store {
            StoreKind::Memory => Store::Memory(ShardedMemory::new(c.memory_max_keys)),
            StoreKind::Redis => Store::Redis(RedisStore::from_config(c)?),
        })
    }

    /// True when a reload from `old` to `new` can keep this store (and its counters).
    pub fn reusable(old: &StoreConfig, new: &StoreConfig) -> bool {
        old.store == new.store
            && match new.store {
                StoreKind::Memory => old.memory_max_keys == new.memory_max_keys,
                StoreKind::Redis => {
                    old.redis_url == new.redis_url
                        && old.redis_cluster_nodes == new.redis_cluster_nodes
                        && old.redis_tls_ca == new.redis_tls_ca
                        && old.key_prefix == new.key_prefix
                        && old.command_timeout == new.command_timeout
                }
            }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }

    pub fn is_healthy(&self) -> bool {
        match self {
            Store::Memory(_) => true,
            Store::Redis(r) => r.is_healthy(),
        }
    }
}
