//! What lives as long as the process ([`Shared`]: the clock, the metrics, the current
//! [`Runtime`]) and where the config comes from ([`ConfigSource`]), so that SIGHUP can read it
//! again.

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;

use aegis_policy::{Config, ConfigEnv};
use arc_swap::ArcSwap;

use super::caps::PerIp;
use super::runtime::Runtime;
use crate::observe::log::LogFormat;
use crate::observe::metrics::Metrics;
use crate::time::Clock;
use crate::tls::server::{CertStore, TlsServer};

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
    /// Client connections open now, in all (`server.max_connections`) and per client IP.
    pub connections: AtomicUsize,
    pub connections_per_ip: PerIp,
    /// Requests in flight per client IP (`server.max_requests_per_ip`).
    pub requests_per_ip: PerIp,
    /// `[server.tls]`: the proxy listener's TLS (its certificates reload on SIGHUP; turning
    /// TLS on or off needs a restart).
    pub tls: Option<TlsServer>,
}

impl Shared {
    /// Loads and validates the config and builds its runtime.
    pub fn new(source: ConfigSource, log_format: LogFormat) -> Result<Shared, String> {
        let config = source.load()?;
        let admin_on_proxy = config.server.admin_listen.is_none();
        let tls = match &config.server.tls {
            None => None,
            Some(t) => {
                let store = CertStore::load(t, crate::time::wall().as_secs())
                    .map_err(|e| format!("server.tls: {e}"))?;
                Some(TlsServer::new(t, store).map_err(|e| format!("server.tls: {e}"))?)
            }
        };
        let metrics = Metrics::default();
        let clock = Clock::new();
        let rt = Runtime::build(config, None, &metrics, clock.now().mono)?;
        Ok(Shared {
            clock,
            metrics,
            runtime: ArcSwap::from_pointee(rt),
            log_format,
            source,
            admin_on_proxy,
            connections: AtomicUsize::new(0),
            connections_per_ip: PerIp::default(),
            requests_per_ip: PerIp::default(),
            tls,
        })
    }
}
