//! Prometheus metrics: lock-free counters on the request path, rendered as text on scrape.
//!
//! Per-route counters are registered by route name, so they survive reloads that keep the
//! route; breaker states are read from the live balancers when scraped.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aegis_policy::{BreakerState, TargetStats};

/// Upper bounds (seconds) of the upstream latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Status codes 100..=599 are counted individually; anything else lands in slot 0.
const STATUS_SLOTS: usize = 600;

/// Counter sets are kept per worker thread (up to this many; more share), each on its own
/// cache lines: a request only touches its worker's, a scrape adds them up.
pub const SHARDS: usize = 8;

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Makes this thread count into shard `worker` (worker threads call it once).
pub fn set_shard(worker: usize) {
    SHARD.set(worker % SHARDS);
}

/// This thread's shard (0 on threads that are not workers).
pub fn shard() -> usize {
    SHARD.get()
}

/// A value alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// One worker's counters of one route.
#[derive(Debug)]
struct Counters {
    status: Box<[AtomicU64]>,
    rate_limited: AtomicU64,
    retries: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    upstream_count: AtomicU64,
    upstream_sum_us: AtomicU64,
}

/// The counters of one route (or of requests that matched none).
#[derive(Debug)]
pub struct RouteMetrics {
    shards: Box<[Padded<Counters>]>,
}

impl RouteMetrics {
    fn new() -> RouteMetrics {
        RouteMetrics {
            shards: (0..SHARDS)
                .map(|_| {
                    Padded(Counters {
                        status: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
                        rate_limited: AtomicU64::new(0),
                        retries: AtomicU64::new(0),
                        buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                        upstream_count: AtomicU64::new(0),
                        upstream_sum_us: AtomicU64::new(0),
                    })
                })
                .collect(),
        }
    }

    fn mine(&self) -> &Counters {
        &self.shards[shard()].0
    }

    /// A counter summed over the shards.
    fn sum(&self, f: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| f(&s.0).load(Relaxed)).sum()
    }

    pub fn response(&self, status: u16) {
        let slot = usize::from(status);
        let slot = if (100..STATUS_SLOTS).contains(&slot) {
            slot
        } else {
            0
        };
        self.mine().status[slot].fetch_add(1, Relaxed);
    }

    pub fn rate_limited(&self) {
        self.mine().rate_limited.fetch_add(1, Relaxed);
    }

    /// A failed try sent to another target.
    pub fn retried(&self) {
        self.mine().retries.fetch_add(1, Relaxed);
    }

    /// Time from sending a request upstream to its response head (or its failure).
    pub fn upstream_latency(&self, d: Duration) {
        let c = self.mine();
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            c.buckets[i].fetch_add(1, Relaxed);
        }
        c.upstream_count.fetch_add(1, Relaxed);
        c.upstream_sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }
}

/// A gauge kept per worker thread (see [`SHARDS`]); its value is the sum.
#[derive(Debug, Default)]
pub struct ShardedGauge {
    shards: [Padded<AtomicI64>; SHARDS],
}

impl ShardedGauge {
    /// This thread's part.
    pub fn mine(&self) -> &AtomicI64 {
        &self.shards[shard()].0
    }

    pub fn get(&self) -> i64 {
        self.shards.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, Arc<RouteMetrics>>>,
    /// Requests that matched no route (400, 404, admin paths).
    pub unrouted: Arc<RouteMetrics>,
    pub store_errors: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Requests being handled now (admin requests included).
    pub in_flight: ShardedGauge,
    /// Client connections open now.
    pub connections: ShardedGauge,
    /// Tunnels (WebSocket) open now, and the bytes they carried each way.
    pub tunnels: ShardedGauge,
    tunnel_up: AtomicU64,
    tunnel_down: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            routes: Mutex::new(BTreeMap::new()),
            unrouted: Arc::new(RouteMetrics::new()),
            store_errors: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            in_flight: ShardedGauge::default(),
            connections: ShardedGauge::default(),
            tunnels: ShardedGauge::default(),
            tunnel_up: AtomicU64::new(0),
            tunnel_down: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// The counters of the route named `name`, created on first use.
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(RouteMetrics::new()))
            .clone()
    }

    /// A tunnel ended having carried `up` bytes from the client and `down` to it.
    pub fn tunnel_bytes(&self, up: u64, down: u64) {
        self.tunnel_up.fetch_add(up, Relaxed);
        self.tunnel_down.fetch_add(down, Relaxed);
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self, stats: &[TargetStats], store_kind: &str, store_healthy: bool) -> String {
        let routes: Vec<(String, Arc<RouteMetrics>)> = self
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let all = || {
            routes
                .iter()
                .map(|(n, m)| (n.as_str(), &**m))
                .chain([("", &*self.unrouted)])
        };
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP aegis_requests_total Responses sent, by route and status.\n");
        out.push_str("# TYPE aegis_requests_total counter\n");
        for (name, m) in all() {
            for code in 0..STATUS_SLOTS {
                let n = m.sum(|c| &c.status[code]);
                if n > 0 {
                    let status = if code == 0 {
                        "other".to_owned()
                    } else {
                        code.to_string()
                    };
                    let _ = writeln!(
                        out,
                        "aegis_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                        esc(name)
                    );
                }
            }
        }
        out.push_str(
            "# HELP aegis_rate_limited_total Requests refused with 429, by route.\n\
             # TYPE aegis_rate_limited_total counter\n",
        );
        for (name, m) in &routes {
            let _ = writeln!(
                out,
                "aegis_rate_limited_total{{route=\"{}\"}} {}",
                esc(name),
                m.sum(|c| &c.rate_limited)
            );
        }
        out.push_str(
            "# HELP aegis_retries_total Failed tries sent again to another target, by route.\n\
             # TYPE aegis_retries_total counter\n",
        );
        for (name, m) in &routes {
            let _ = writeln!(
                out,
                "aegis_retries_total{{route=\"{}\"}} {}",
                esc(name),
                m.sum(|c| &c.retries)
            );
        }
        out.push_str(
            "# HELP aegis_upstream_duration_seconds Time to the upstream's response head.\n\
             # TYPE aegis_upstream_duration_seconds histogram\n",
        );
        for (name, m) in &routes {
            let name = esc(name);
            let mut cum = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cum += m.sum(|c| &c.buckets[i]);
                let _ = writeln!(
                    out,
                    "aegis_upstream_duration_seconds_bucket{{route=\"{name}\",le=\"{b}\"}} {cum}"
                );
            }
            let count = m.sum(|c| &c.upstream_count);
            let _ = writeln!(
                out,
                "aegis_upstream_duration_seconds_bucket{{route=\"{name}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "aegis_upstream_duration_seconds_sum{{route=\"{name}\"}} {}",
                m.sum(|c| &c.upstream_sum_us) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "aegis_upstream_duration_seconds_count{{route=\"{name}\"}} {count}"
            );
        }
        out.push_str(
            "# HELP aegis_breaker_state Circuit state per target: 0 closed, 1 half-open, 2 open.\n\
             # TYPE aegis_breaker_state gauge\n",
        );
        for s in stats {
            let v = match s.state {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            let _ = writeln!(
                out,
                "aegis_breaker_state{{route=\"{}\",target=\"{}\"}} {v}",
                esc(&s.route),
                esc(&s.target_url)
            );
        }
        out.push_str(
            "# HELP aegis_target_healthy Health checks per target: 1 passing, 0 failing (routes with checks).\n\
             # TYPE aegis_target_healthy gauge\n",
        );
        for s in stats {
            if let Some(h) = s.healthy {
                let _ = writeln!(
                    out,
                    "aegis_target_healthy{{route=\"{}\",target=\"{}\"}} {}",
                    esc(&s.route),
                    esc(&s.target_url),
                    u8::from(h)
                );
            }
        }
        out.push_str(
            "# HELP aegis_breaker_failures Consecutive failures per target.\n\
             # TYPE aegis_breaker_failures gauge\n",
        );
        for s in stats {
            let _ = writeln!(
                out,
                "aegis_breaker_failures{{route=\"{}\",target=\"{}\"}} {}",
                esc(&s.route),
                esc(&s.target_url),
                s.failures
            );
        }
        let _ = write!(
            out,
            "# HELP aegis_store_errors_total Rate-limit store operations that failed.\n\
             # TYPE aegis_store_errors_total counter\n\
             aegis_store_errors_total{{store=\"{store_kind}\"}} {}\n\
             # HELP aegis_store_up Whether the rate-limit store answers (1) or not (0).\n\
             # TYPE aegis_store_up gauge\n\
             aegis_store_up{{store=\"{store_kind}\"}} {}\n\
             # HELP aegis_config_reloads_total Config reloads applied (ok) or refused (error).\n\
             # TYPE aegis_config_reloads_total counter\n\
             aegis_config_reloads_total{{result=\"ok\"}} {}\n\
             aegis_config_reloads_total{{result=\"error\"}} {}\n\
             # HELP aegis_requests_in_flight Requests being handled now.\n\
             # TYPE aegis_requests_in_flight gauge\n\
             aegis_requests_in_flight {}\n\
             # HELP aegis_connections_open Client connections open now.\n\
             # TYPE aegis_connections_open gauge\n\
             aegis_connections_open {}\n\
             # HELP aegis_tunnels_open Upgraded connections (WebSocket) open now.\n\
             # TYPE aegis_tunnels_open gauge\n\
             aegis_tunnels_open {}\n\
             # HELP aegis_tunnel_bytes_total Bytes carried by tunnels that ended, by direction.\n\
             # TYPE aegis_tunnel_bytes_total counter\n\
             aegis_tunnel_bytes_total{{direction=\"up\"}} {}\n\
             aegis_tunnel_bytes_total{{direction=\"down\"}} {}\n\
             # HELP aegis_log_lines_dropped_total Log lines dropped because stderr fell behind.\n\
             # TYPE aegis_log_lines_dropped_total counter\n\
             aegis_log_lines_dropped_total {}\n",
            self.store_errors.load(Relaxed),
            u8::from(store_healthy),
            self.reloads.load(Relaxed),
            self.reload_failures.load(Relaxed),
            self.in_flight.get(),
            self.connections.get(),
            self.tunnels.get(),
            self.tunnel_up.load(Relaxed),
            self.tunnel_down.load(Relaxed),
            super::log::dropped_lines(),
        );
        out
    }
}

/// The certificates the TLS listener serves: (file, subject, notAfter in Unix seconds).
/// The Redis store's call counts: calls made, requests coalesced into another request's call,
/// refusals served from the negative cache.
pub fn render_store_counts(out: &mut String, calls: u64, coalesced: u64, cached_refusals: u64) {
    let _ = write!(
        out,
        "# HELP aegis_store_calls_total Redis calls made (each decides one key's batch of requests).\n\
         # TYPE aegis_store_calls_total counter\n\
         aegis_store_calls_total {calls}\n\
         # HELP aegis_store_coalesced_total Limited requests decided in another request's Redis call.\n\
         # TYPE aegis_store_coalesced_total counter\n\
         aegis_store_coalesced_total {coalesced}\n\
         # HELP aegis_store_cached_refusals_total Limited requests refused from the local negative cache, without a Redis call.\n\
         # TYPE aegis_store_cached_refusals_total counter\n\
         aegis_store_cached_refusals_total {cached_refusals}\n"
    );
}

pub fn render_certs(out: &mut String, certs: &[(&str, &str, u64)]) {
    out.push_str(
        "# HELP aegis_tls_certificate_not_after_seconds When each served certificate expires (Unix time).\n\
         # TYPE aegis_tls_certificate_not_after_seconds gauge\n",
    );
    for (file, subject, not_after) in certs {
        let _ = writeln!(
            out,
            "aegis_tls_certificate_not_after_seconds{{file=\"{}\",subject=\"{}\"}} {not_after}",
            esc(file),
            esc(subject)
        );
    }
}

/// The token caches of each auth provider: (section, summed over workers).
pub fn render_token_caches(out: &mut String, providers: &[(String, aegis_policy::CacheStats)]) {
    if providers.is_empty() {
        return;
    }
    out.push_str(
        "# HELP aegis_token_cache_hits_total Requests whose token was found in a worker's cache of accepted tokens (no signature check).\n\
         # TYPE aegis_token_cache_hits_total counter\n",
    );
    for (p, st) in providers {
        let _ = writeln!(
            out,
            "aegis_token_cache_hits_total{{provider=\"{}\"}} {}",
            esc(p),
            st.hits
        );
    }
    out.push_str(
        "# HELP aegis_token_cache_misses_total Requests whose token was checked in full (then cached if accepted).\n\
         # TYPE aegis_token_cache_misses_total counter\n",
    );
    for (p, st) in providers {
        let _ = writeln!(
            out,
            "aegis_token_cache_misses_total{{provider=\"{}\"}} {}",
            esc(p),
            st.misses
        );
    }
    out.push_str(
        "# HELP aegis_token_cache_entries Accepted tokens cached, summed over workers.\n\
         # TYPE aegis_token_cache_entries gauge\n",
    );
    for (p, st) in providers {
        let _ = writeln!(
            out,
            "aegis_token_cache_entries{{provider=\"{}\"}} {}",
            esc(p),
            st.entries
        );
    }
}

/// The JWKS of each provider with a `jwks_url`: (section, URL, status).
pub fn render_jwks(out: &mut String, providers: &[(&str, &str, aegis_policy::JwksStatus)]) {
    if providers.is_empty() {
        return;
    }
    out.push_str(
        "# HELP aegis_jwks_up Whether the provider has usable keys (1) or not (0).\n\
         # TYPE aegis_jwks_up gauge\n",
    );
    for (p, url, st) in providers {
        let _ = writeln!(
            out,
            "aegis_jwks_up{{provider=\"{}\",url=\"{}\"}} {}",
            esc(p),
            esc(url),
            u8::from(st.ready)
        );
    }
    out.push_str(
        "# HELP aegis_jwks_keys Usable keys fetched from the provider's JWKS.\n\
         # TYPE aegis_jwks_keys gauge\n",
    );
    for (p, _, st) in providers {
        let _ = writeln!(
            out,
            "aegis_jwks_keys{{provider=\"{}\"}} {}",
            esc(p),
            st.keys
        );
    }
    out.push_str(
        "# HELP aegis_jwks_stale Whether the keys are past their refresh time because refreshes fail (1).\n\
         # TYPE aegis_jwks_stale gauge\n",
    );
    for (p, _, st) in providers {
        let _ = writeln!(
            out,
            "aegis_jwks_stale{{provider=\"{}\"}} {}",
            esc(p),
            u8::from(st.stale)
        );
    }
    out.push_str(
        "# HELP aegis_jwks_consecutive_failures JWKS fetches that failed since the last success.\n\
         # TYPE aegis_jwks_consecutive_failures gauge\n",
    );
    for (p, _, st) in providers {
        let _ = writeln!(
            out,
            "aegis_jwks_consecutive_failures{{provider=\"{}\"}} {}",
            esc(p),
            st.consecutive_failures
        );
    }
    out.push_str(
        "# HELP aegis_jwks_age_seconds Time since the last successful JWKS fetch.\n\
         # TYPE aegis_jwks_age_seconds gauge\n",
    );
    for (p, _, st) in providers {
        if let Some(a) = st.age {
            let _ = writeln!(
                out,
                "aegis_jwks_age_seconds{{provider=\"{}\"}} {:.3}",
                esc(p),
                a.as_secs_f64()
            );
        }
    }
    out.push_str(
        "# HELP aegis_jwks_fetches_total JWKS fetches, by result.\n\
         # TYPE aegis_jwks_fetches_total counter\n",
    );
    for (p, _, st) in providers {
        let p = esc(p);
        let _ = writeln!(
            out,
            "aegis_jwks_fetches_total{{provider=\"{p}\",result=\"ok\"}} {}",
            st.counters.fetch_ok
        );
        let _ = writeln!(
            out,
            "aegis_jwks_fetches_total{{provider=\"{p}\",result=\"error\"}} {}",
            st.counters.fetch_failed
        );
    }
    out.push_str(
        "# HELP aegis_jwks_unknown_kid_total Tokens naming an unknown kid: refetched, or refused within jwks_refetch_interval.\n\
         # TYPE aegis_jwks_unknown_kid_total counter\n",
    );
    for (p, _, st) in providers {
        let p = esc(p);
        let _ = writeln!(
            out,
            "aegis_jwks_unknown_kid_total{{provider=\"{p}\",action=\"refetch\"}} {}",
            st.counters.unknown_kid_fetches
        );
        let _ = writeln!(
            out,
            "aegis_jwks_unknown_kid_total{{provider=\"{p}\",action=\"refused\"}} {}",
            st.counters.unknown_kid_refused
        );
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['\\', '"', '\n']) {
        return s.into();
    }
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// Counts one unit in a gauge while it lives (also when its future is dropped midway).
#[derive(Debug)]
pub struct GaugeGuard<'a>(&'a AtomicI64);

impl<'a> GaugeGuard<'a> {
    pub fn enter(g: &'a AtomicI64) -> GaugeGuard<'a> {
        g.fetch_add(1, Relaxed);
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
