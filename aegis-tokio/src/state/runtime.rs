//! One config, ready to serve: the policy, a balancer per route, the counter store and what
//! the shell needs per route. Built at start and on every reload, then swapped in whole.

use std::sync::{Arc, Mutex, PoisonError};

use aegis_policy::config::RouteConfig;
use aegis_policy::{Balancer, CacheStats, Config, Policy, TokenCache};

use super::jwks::{FetchedKeys, JwksHandle};
use super::store::Store;
use crate::observe::metrics::{Metrics, RouteMetrics};
use crate::upstream::Target;

/// One config, ready to serve: the policy, a balancer per route and the store.
/// Immutable once built except for the balancers' and store's interior state.
#[derive(Debug)]
pub struct Runtime {
    pub policy: Policy,
    /// Indexed by route. Locked only for a pick or an outcome, never across an `.await`.
    pub balancers: Vec<Arc<Mutex<Balancer>>>,
    pub store: Arc<Store>,
    pub routes: Vec<RouteRt>,
    /// Per auth provider (indexed by `ProviderId`): its JWKS, when it has a `jwks_url`.
    pub jwks: Vec<Option<Arc<JwksHandle>>>,
    /// Whom https upstreams and JWKS URLs are trusted to be.
    pub tls_client: Arc<rustls::ClientConfig>,
    /// Each worker's caches of accepted tokens.
    pub token_caches: Arc<TokenCaches>,
}

/// Per worker (metrics shard), one [`TokenCache`] per auth provider, indexed by
/// `ProviderId`. A worker locks only its own (threads past the shard count share one), so no
/// lock is contended across cores on the request path.
#[derive(Debug)]
pub struct TokenCaches {
    shards: Box<[ShardCaches]>,
}

#[derive(Debug)]
#[repr(align(128))]
struct ShardCaches(Mutex<Vec<TokenCache>>);

impl TokenCaches {
    fn new(policy: &Policy) -> TokenCaches {
        TokenCaches {
            shards: (0..crate::observe::metrics::SHARDS)
                .map(|_| ShardCaches(Mutex::new(policy.token_caches())))
                .collect(),
        }
    }

    /// This worker's caches.
    pub fn mine(&self) -> std::sync::MutexGuard<'_, Vec<TokenCache>> {
        lock(&self.shards[crate::observe::metrics::shard()].0)
    }

    /// Per provider, the sum over workers.
    pub fn stats(&self) -> Vec<CacheStats> {
        let mut out: Vec<CacheStats> = Vec::new();
        for shard in &self.shards {
            let caches = lock(&shard.0);
            out.resize(caches.len(), CacheStats::default());
            for (sum, c) in out.iter_mut().zip(caches.iter()) {
                let s = c.stats();
                sum.hits += s.hits;
                sum.misses += s.misses;
                sum.entries += s.entries;
            }
        }
        out
    }
}

/// Per-route data the shell needs on the hot path.
#[derive(Debug)]
pub struct RouteRt {
    pub metrics: Arc<RouteMetrics>,
    pub targets: Vec<Target>,
}

impl Runtime {
    /// Builds the runtime of `config`. With `old` (a reload), breaker state of targets that
    /// stay is kept: a route whose targets and breaker settings are unchanged keeps its very
    /// balancer (so outcomes of requests still in flight land on it); a changed route inherits
    /// the state of every target URL it keeps. The store, and its counters, is kept when its
    /// settings are unchanged.
    pub fn build(
        config: Config,
        old: Option<&Runtime>,
        metrics: &Metrics,
        now: aegis_policy::Nanos,
    ) -> Result<Runtime, String> {
        let store = match old {
            Some(o) if Store::reusable(&o.policy.config().rate_limit, &config.rate_limit) => {
                o.store.clone()
            }
            _ => Arc::new(Store::from_config(&config.rate_limit)?),
        };
        let policy = Policy::new(config).map_err(|e| e.to_string())?;
        let config = policy.config();
        // A provider whose JWKS settings are unchanged keeps its keys (and its fetch task).
        let jwks = config
            .providers()
            .into_iter()
            .map(|(name, a)| {
                let j = a.jwks.as_ref()?;
                let section = if name.is_empty() {
                    "auth".to_owned()
                } else {
                    format!("auth_providers.{name}")
                };
                let kept = old.and_then(|o| {
                    o.jwks
                        .iter()
                        .flatten()
                        .find(|h| h.config == *j && h.section == section)
                        .cloned()
                });
                Some(kept.unwrap_or_else(|| JwksHandle::new(section, j.clone(), now)))
            })
            .collect();
        // Kept across reloads that leave [upstream_tls] as it was (its session cache too).
        let tls_client = match old {
            Some(o) if o.policy.config().upstream_tls == config.upstream_tls => {
                o.tls_client.clone()
            }
            _ => crate::tls::client::from_config(&config.upstream_tls)
                .map_err(|e| format!("upstream_tls: {e}"))?,
        };
        let balancers = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut fresh = policy.balancer(aegis_policy::RouteId(i));
                // Power of two choices draws differently in every gateway process.
                fresh.reseed(uuid::Uuid::new_v4().as_u64_pair().0);
                let Some(o) = old else {
                    return Arc::new(Mutex::new(fresh));
                };
                let oc = o.policy.config();
                let Some(j) = oc.routes.iter().position(|x| x.name == r.name) else {
                    return Arc::new(Mutex::new(fresh));
                };
                let same = |a: &RouteConfig| {
                    a.targets == r.targets
                        && a.balance == r.balance
                        && a.health_check == r.health_check
                };
                if same(&oc.routes[j])
                    && oc.breaker == config.breaker
                    && oc.retry_budget == config.retry_budget
                {
                    return o.balancers[j].clone();
                }
                fresh.inherit(&lock(&o.balancers[j]));
                Arc::new(Mutex::new(fresh))
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|r: &RouteConfig| RouteRt {
                metrics: metrics.route(&r.name),
                targets: r
                    .targets
                    .iter()
                    .map(|t| {
                        let tls = t.tls.then_some(&tls_client);
                        Target::new(&t.authority, &config.upstream, tls)
                    })
                    .collect(),
            })
            .collect();
        // Kept across reloads that leave every provider as it was: their tokens stay valid.
        let token_caches = match old {
            Some(o) if o.policy.config().providers() == config.providers() => {
                o.token_caches.clone()
            }
            _ => Arc::new(TokenCaches::new(&policy)),
        };
        Ok(Runtime {
            token_caches,
            balancers,
            store,
            routes,
            policy,
            jwks,
            tls_client,
        })
    }

    /// The fetched keys at `now`, for the policy.
    pub fn fetched_keys(&self, now: aegis_policy::Nanos) -> FetchedKeys<'_> {
        FetchedKeys {
            handles: &self.jwks,
            now,
        }
    }

    /// Starts the fetch tasks of JWKS providers that have none yet (at start and after a
    /// reload; on the control thread's runtime).
    pub fn start_jwks(&self, clock: crate::time::Clock) {
        for h in self.jwks.iter().flatten() {
            h.start(clock, self.tls_client.clone());
        }
    }
}

/// Locks a balancer; a panic elsewhere while it was held does not wedge it.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
