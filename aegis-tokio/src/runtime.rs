//! The gateway's state: what a request reads (the current [`Runtime`], swapped whole on
//! reload) and what lives for the whole process ([`Shared`]: clock, metrics, settings).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use aegis_policy::config::RouteConfig;
use aegis_policy::{Balancer, Config, ConfigEnv, Policy};
use arc_swap::ArcSwap;
use http::HeaderValue;
use http::uri::Authority;

use crate::clock::Clock;
use crate::metrics::{Metrics, RouteMetrics};
use crate::store::Store;

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
            .map(|r| {
                let fresh = Balancer::new(r, &config.breaker);
                let Some(o) = old else {
                    return Arc::new(Mutex::new(fresh));
                };
                let oc = o.policy.config();
                let Some(j) = oc.routes.iter().position(|x| x.name == r.name) else {
                    return Arc::new(Mutex::new(fresh));
                };
                if oc.routes[j].targets == r.targets && oc.breaker == config.breaker {
                    return o.balancers[j].clone();
                }
                let mut fresh = fresh;
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
                    .map(|t| Target {
                        host: HeaderValue::from_str(t.authority.as_str())
                            .expect("a validated authority is a header value"),
                        pool: crate::pool::key(&t.authority),
                        authority: t.authority.clone(),
                    })
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

/// Where a target's requests go.
#[derive(Debug)]
pub struct Target {
    pub authority: Authority,
    /// The `Host` header sent to it.
    pub host: HeaderValue,
    /// Its slot in the upstream connection pools.
    pub pool: crate::pool::Key,
}

/// Locks a balancer; a panic elsewhere while it was held does not wedge it.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How access lines are written (`--log-format text|json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The process environment: `${VAR}` values and `public_key_file` contents.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl ConfigEnv for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn read_file(&self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {path:?}: {e}"))
    }
}

/// Where the config comes from, so that SIGHUP can read it again.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    /// Built in (the demo): nothing to reload.
    Inline(String),
}

impl ConfigSource {
    /// Reads, parses and validates the config, then applies `PORT`, `REDIS_URL` and
    /// `JWT_SECRET` from the environment.
    pub fn load(&self) -> Result<Config, String> {
        let (text, origin) = match self {
            ConfigSource::File(p) => (
                std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read config {}: {e}", p.display()))?,
                p.display().to_string(),
            ),
            ConfigSource::Inline(t) => (t.clone(), "built-in config".to_owned()),
        };
        let mut config =
            Config::from_toml(&text, &ProcessEnv).map_err(|e| format!("{origin}: {e}"))?;
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        config
            .apply_overrides(
                var("PORT").as_deref(),
                var("REDIS_URL").as_deref(),
                var("JWT_SECRET").as_deref(),
            )
            .map_err(|e| format!("{origin}: {e}"))?;
        Ok(config)
    }
}

/// What lives as long as the process.
#[derive(Debug)]
pub struct Shared {
    pub clock: Clock,
    pub metrics: Metrics,
    pub runtime: ArcSwap<Runtime>,
    pub log_format: LogFormat,
    pub source: ConfigSource,
    /// `/gateway/*` is answered on the proxy listener (no separate admin listener).
    pub admin_on_proxy: bool,
}
