//! One config, ready to serve: the policy, a balancer per route, the counter store and what
//! the shell needs per route. Built at start and on every reload, then swapped in whole.

use std::sync::{Arc, Mutex, PoisonError};

use aegis_policy::config::RouteConfig;
use aegis_policy::{Balancer, Config, Policy};

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
    ) -> Result<Runtime, String> {
        let store = match old {
            Some(o) if Store::reusable(&o.policy.config().rate_limit, &config.rate_limit) => {
                o.store.clone()
            }
            _ => Arc::new(Store::from_config(&config.rate_limit)?),
        };
        let policy = Policy::new(config).map_err(|e| e.to_string())?;
        let config = policy.config();
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
                    .map(|t| Target::new(&t.authority, &config.upstream))
                    .collect(),
            })
            .collect();
        Ok(Runtime {
            balancers,
            store,
            routes,
            policy,
        })
    }
}

/// Locks a balancer; a panic elsewhere while it was held does not wedge it.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
