//! The gateway configuration: a TOML model, `${VAR}` substitution, and validation that names the
//! key path and the reason of every error (`routes[1].targets[0]: "htp://x" is not an http URL`).
//!
//! Parsing is pure: environment variables and key files are read through [`ConfigEnv`], which the
//! shell implements with `std::env` and `std::fs` and tests implement with a map.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;
use serde::Deserialize;

pub use crate::auth::JwksConfig;
pub use crate::auth::{AuthConfig, JwtAlgorithm, KeyMaterial, Secret, StaticKey};
use crate::auth::{KeyError, KeyField};
use crate::path;
use crate::time::parse_duration;

/// An invalid configuration: the key path (`routes[1].targets[0]`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// A key the verifier could not use, at the config key that holds it (under `[auth]`).
impl From<KeyError> for ConfigError {
    fn from(e: KeyError) -> ConfigError {
        key_error("auth", e)
    }
}

/// A key the verifier could not use, at its path under `section` (`auth`,
/// `auth_providers.NAME`).
fn key_error(section: &str, e: KeyError) -> ConfigError {
    let path = match e.field {
        KeyField::Secret => format!("{section}.secret"),
        KeyField::PublicKey => format!("{section}.public_key_pem"),
        KeyField::Key(i) => format!("{section}.keys[{i}]"),
    };
    ConfigError::new(path, e.reason)
}

/// Where `${VAR}` values and `public_key_file` contents come from.
pub trait ConfigEnv {
    fn var(&self, name: &str) -> Option<String>;
    fn read_file(&self, path: &str) -> Result<String, String>;
}

/// An environment with the given variables and no files.
#[derive(Debug, Clone, Default)]
pub struct MapEnv(pub BTreeMap<String, String>);

impl MapEnv {
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.0.insert(name.to_owned(), value.to_owned());
        self
    }
}

impl ConfigEnv for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn read_file(&self, path: &str) -> Result<String, String> {
        Err(format!(
            "cannot read {path:?}: no files in this environment"
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The validated model.

/// A validated configuration. Build it with [`Config::from_toml`].
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub retry_budget: RetryBudgetConfig,
    pub upstream_tls: UpstreamTlsConfig,
    /// The default auth provider: routes with `auth = true`.
    pub auth: Option<AuthConfig>,
    /// Named auth providers: routes with `auth = "NAME"`.
    pub auth_providers: BTreeMap<String, AuthConfig>,
    pub rate_limit: StoreConfig,
    pub breaker: BreakerConfig,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Serve `/gateway/*` here instead of on `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// Peers whose `X-Forwarded-For` is believed when picking the client IP.
    pub trusted_proxies: Vec<IpNet>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: Option<u64>,
    /// What to do with request headers whose names contain `_`.
    pub headers_with_underscores: UnderscoreHeaders,
    /// Client connections open at once, in all (new ones past it get a 503 and the close).
    pub max_connections: usize,
    /// Client connections open at once from one client IP.
    pub max_connections_per_ip: usize,
    /// Requests in flight at once from one client IP (past it: 429).
    pub max_requests_per_ip: usize,
    /// `Upgrade` protocols tunnelled to upstreams (lower case); any other is never forwarded.
    pub upgrades: Vec<String>,
    /// A tunnel (WebSocket) with no bytes either way this long is closed.
    pub websocket_idle_timeout: Duration,
    /// Limits of an HTTP/2 (h2c) client connection.
    pub h2: H2Limits,
    /// TLS on the proxy listener (`[server.tls]`).
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`: the proxy listener speaks TLS. The files are read and checked by the shell
/// (readable, the key matches, not expired); here they are paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The default certificate (`cert`, `key`) first, then `certificates` in order; each is
    /// served to clients whose SNI matches one of its names, the default to the rest.
    pub certificates: Vec<CertConfig>,
    /// TLS 1.3 only, instead of 1.2 and 1.3.
    pub tls13_only: bool,
    pub handshake_timeout: Duration,
    /// A plaintext listener that redirects every request to https on `listen`'s port.
    pub redirect_listen: Option<SocketAddr>,
    /// mTLS: client certificates are verified against this CA bundle (PEM path).
    pub client_ca: Option<String>,
    /// With `client_ca`: a client without a certificate is let in (its requests carry no
    /// subject header) instead of refused at the handshake.
    pub client_cert_optional: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertConfig {
    /// PEM chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, RSA or EC).
    pub key: String,
    /// SNI names served this certificate (`api.example.com`, `*.example.com`); empty: the
    /// certificate's own DNS names.
    pub names: Vec<String>,
}

/// Limits of one HTTP/2 client connection (the `h2_*` keys of `[server]`). The timeouts of
/// HTTP/2 streams and connections are the HTTP/1.1 ones (`idle_timeout`, a route's `timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Limits {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`: more open streams are refused (`REFUSED_STREAM`).
    pub max_concurrent_streams: u32,
    /// `SETTINGS_MAX_HEADER_LIST_SIZE` (decoded, 32 bytes per field counted as RFC 9113 says):
    /// a larger header list gets 431; four times it ends the connection.
    pub max_header_list_bytes: u32,
    /// Streams the client opened and reset before the gateway took them up (rapid reset,
    /// CVE-2023-44487): one more ends the connection (`ENHANCE_YOUR_CALM`).
    pub max_pending_resets: usize,
    /// Streams the gateway resets for the client's protocol errors, over a connection's life
    /// (CVE-2025-8671): one more ends the connection (`ENHANCE_YOUR_CALM`).
    pub max_error_resets: usize,
    /// Response bytes buffered per stream for a client that does not take them.
    pub max_send_buffer_bytes: usize,
}

/// What a request header whose name contains `_` gets (Envoy's
/// `headers_with_underscores_action`): a backend that folds `_` to `-` must never read a
/// client's `X_User_Id` as the gateway's `X-User-Id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderscoreHeaders {
    /// Removed before the request goes upstream.
    Drop,
    /// The request is refused with 400.
    Reject,
    /// Forwarded as sent.
    Allow,
}

/// `[upstream]`: the client side of the gateway, toward every target.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// A pooled keep-alive connection unused this long is closed (below common upstream
    /// keep-alive timeouts, so the gateway closes first).
    pub idle_timeout: Duration,
    /// Idle connections kept per target, per worker thread.
    pub max_idle_per_target: usize,
    /// Requests in flight to one target at once (per process).
    pub max_requests_per_target: usize,
    /// Requests that may wait for one of those slots; more get 503 at once.
    pub max_pending_per_target: usize,
    /// How long a request waits for a slot before it gets 503.
    pub pending_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis,
}

/// What to do with a request when the counter store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Admit and mark the response (fail open, as Envoy and Kong do).
    Allow,
    /// Answer 503 (fail closed).
    Deny,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub store: StoreKind,
    /// One Redis (`redis://`, `rediss://`, a Unix socket) or a Sentinel-watched one
    /// (`redis+sentinel://`); unused when `redis_cluster_nodes` is set.
    pub redis_url: String,
    /// Redis Cluster seed nodes (`redis://` or `rediss://`, all alike): non-empty selects
    /// cluster mode.
    pub redis_cluster_nodes: Vec<String>,
    /// A private CA that TLS connections to Redis (`rediss://`) trust, instead of the system's.
    pub redis_tls_ca: Option<TlsCa>,
    pub key_prefix: String,
    pub on_store_error: OnStoreError,
    pub command_timeout: Duration,
    /// Bound on live keys in the in-memory store.
    pub memory_max_keys: usize,
}

/// A CA certificate file (PEM), read when the config is loaded.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsCa {
    pub path: String,
    pub pem: String,
}

impl fmt::Debug for TlsCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCa")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Which Redis the counters live in, as the config says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server (`redis://`, `rediss://`, `redis+unix://`, `unix://`).
    Node(String),
    /// Redis Cluster, by its seed nodes.
    Cluster(Vec<String>),
    /// A primary found through Sentinel.
    Sentinel(SentinelUrl),
}

/// `redis+sentinel://[user:password@]host:port[,host:port...]/<primary name>[/<db>]`: the
/// Sentinels to ask (without credentials) and the primary they watch (the credentials and db
/// are the primary's).
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// `host:port` of each Sentinel (port 26379 when left out).
    pub sentinels: Vec<String>,
    pub primary: String,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for SentinelUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("SentinelUrl")
            .field("sentinels", &self.sentinels)
            .field("primary", &self.primary)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl StoreConfig {
    /// The Redis these settings name (meaningful with `store = "redis"`).
    pub fn redis_topology(&self) -> RedisTopology {
        if !self.redis_cluster_nodes.is_empty() {
            return RedisTopology::Cluster(self.redis_cluster_nodes.clone());
        }
        match parse_sentinel_url(&self.redis_url) {
            Some(Ok(s)) => RedisTopology::Sentinel(s),
            _ => RedisTopology::Node(self.redis_url.clone()),
        }
    }
}

/// Upstream HTTP statuses that count as breaker failures: a bitset over 0..640.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StatusSet([u64; 10]);

impl StatusSet {
    pub const EMPTY: StatusSet = StatusSet([0; 10]);

    pub fn server_errors() -> StatusSet {
        let mut s = StatusSet::EMPTY;
        for code in 500..=599 {
            s.insert(code);
        }
        s
    }

    pub fn insert(&mut self, code: u16) {
        let i = usize::from(code);
        if i < 640 {
            self.0[i / 64] |= 1 << (i % 64);
        }
    }

    pub fn contains(&self, code: u16) -> bool {
        let i = usize::from(code);
        i < 640 && self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries((0..640u16).filter(|c| self.contains(*c)))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub open_for: Duration,
    /// A half-open probe whose outcome has not arrived after this long is counted as a failure
    /// and its slot released, so a lost outcome never wedges the breaker.
    pub probe_timeout: Duration,
    pub failure_statuses: StatusSet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitAlgorithm {
    /// The seed's counter: at most `max` per key per aligned window of `window`.
    FixedWindow,
    /// Generic cell rate algorithm: `max / window` sustained, bursts of up to `max`.
    Gcra,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKeyKind {
    /// The client IP (the socket peer, or `X-Forwarded-For` from a trusted proxy).
    Ip,
    /// The authenticated user id; the route must have `auth = true`.
    User,
    /// A request header's value; requests without it are keyed by IP.
    Header(HeaderName),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitConfig {
    pub max: u64,
    pub window: Duration,
    pub key: LimitKeyKind,
    pub algorithm: LimitAlgorithm,
}

/// A host constraint: exact (`api.example.com`) or a wildcard over one or more labels
/// (`*.example.com`). Compared case-insensitively, without the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
            HostPattern::Suffix(s) => {
                host.len() > s.len()
                    && host.as_bytes()[host.len() - s.len() - 1] == b'.'
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// As written, without a trailing slash: `http://127.0.0.1:3001`.
    pub url: String,
    pub authority: http::uri::Authority,
    /// A path the forwarded path is appended to (`""` when the URL has none).
    pub base_path: String,
    /// Its share of the route's requests relative to the others' (1 unless set).
    pub weight: u32,
    /// `https://`: the connection is TLS, the certificate verified (`[upstream_tls]`).
    pub tls: bool,
}

/// `[upstream_tls]`: how https targets (and JWKS URLs) are verified, and the client
/// certificate presented to them. Paths; the shell reads the files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTlsConfig {
    /// PEM CA bundle trusted besides the bundled roots.
    pub ca: Option<String>,
    /// Trust only `ca`, not the bundled roots.
    pub ca_only: bool,
    /// Upstream mTLS: a PEM chain and key presented when a target asks.
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Label in logs and metrics; the path unless `name` is set.
    pub name: String,
    /// Normalised prefix, without a trailing slash (except `/`).
    pub path: String,
    pub host: Option<HostPattern>,
    pub methods: Option<Vec<Method>>,
    pub targets: Vec<TargetConfig>,
    /// Requires a valid token (of `auth_provider`).
    pub auth: bool,
    /// The named provider of `auth = "NAME"`; `None`: `[auth]`.
    pub auth_provider: Option<String>,
    pub rate_limit: Option<LimitConfig>,
    pub strip_prefix: bool,
    pub timeout: Duration,
    pub max_body_bytes: Option<u64>,
    pub balance: Balance,
    /// With `balance = "hash"`: what a request's target is chosen by (`hash_on`).
    pub hash_on: Option<LimitKeyKind>,
    pub retry: RetryConfig,
    pub health_check: Option<HealthCheckConfig>,
}

/// How a route spreads requests over its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Round robin; smooth weighted round robin when the targets' weights differ.
    RoundRobin,
    /// Power of two choices: of two targets drawn at random, the one with fewer requests in
    /// flight (weighted by its recent failures, so a target that fails fast does not attract
    /// the traffic).
    P2c,
    /// Consistent hashing (sticky routing): a request goes to the target that ranks first
    /// for its key (`hash_on`) among those that would take it (rendezvous hashing, weighted),
    /// so that a key stays on its target, on every gateway instance, and only the keys of a
    /// target that leaves or joins move.
    Hash,
}

/// When a failed try of a request goes to another target.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Tries after the first for an idempotent request that failed after it was sent (a
    /// request that could not be sent at all may always go to another target, once each).
    pub retries: u32,
    /// Statuses that count as a failed try (`retry_on`).
    pub on: StatusSet,
    /// A request with an `Idempotency-Key` header counts as idempotent.
    pub idempotency_key: bool,
    /// A request body up to this size is kept so that it can be sent again; a larger one
    /// is streamed and its request is never retried after it was sent.
    pub max_body: u64,
    /// Each try's own deadline for a response head (the route's `timeout` bounds them all).
    pub try_timeout: Duration,
}

/// `[retry_budget]`: retries a route may add over its requests, so that retries cannot turn a
/// degraded upstream into an overloaded one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// At most this many retries per request, over the window (0.2: 20 % more).
    pub ratio: f64,
    /// Retries allowed per second whatever the ratio (so a quiet route can still retry).
    pub min_per_second: u32,
    pub window: Duration,
}

/// Active health checks of a route's targets.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    /// `GET` this path on each target; a 2xx answer within `timeout` is a pass.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed checks that take a healthy target out of rotation.
    pub unhealthy_after: u32,
    /// Consecutive passed checks that bring an unhealthy target back.
    pub healthy_after: u32,
}

// ---------------------------------------------------------------------------------------------
// The raw TOML model.

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    retry_budget: RawRetryBudget,
    health_check: Option<RawHealthCheck>,
    #[serde(default)]
    upstream_tls: RawUpstreamTls,
    auth: Option<RawAuth>,
    #[serde(default)]
    auth_providers: BTreeMap<String, RawAuth>,
    #[serde(default)]
    rate_limit: RawStore,
    #[serde(default)]
    breaker: RawBreaker,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    ca: Option<String>,
    roots: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    connect_timeout: Option<String>,
    request_timeout: Option<String>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    drain_timeout: Option<String>,
    max_header_size: Option<RawSize>,
    max_uri_length: Option<RawSize>,
    max_body_size: Option<RawSize>,
    headers_with_underscores: Option<String>,
    max_connections: Option<i64>,
    max_connections_per_ip: Option<i64>,
    max_requests_per_ip: Option<i64>,
    tls: Option<RawTls>,
    upgrades: Option<Vec<String>>,
    websocket_idle_timeout: Option<String>,
    h2_max_concurrent_streams: Option<i64>,
    h2_max_header_list_size: Option<RawSize>,
    h2_max_pending_resets: Option<i64>,
    h2_max_error_resets: Option<i64>,
    h2_max_send_buffer_size: Option<RawSize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetryBudget {
    ratio: Option<f64>,
    min_per_second: Option<i64>,
    window: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    path: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    unhealthy_after: Option<i64>,
    healthy_after: Option<i64>,
}

/// A route's `health_check`: `true` (the top-level `[health_check]`), or a table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRouteHealth {
    On(bool),
    Table(RawHealthCheck),
}

/// A target: a URL, or `{ url = "...", weight = 3 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawTarget {
    Url(String),
    Weighted(RawWeighted),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeighted {
    url: String,
    weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
    certificates: Option<Vec<RawCert>>,
    min_version: Option<String>,
    handshake_timeout: Option<String>,
    redirect_listen: Option<String>,
    client_ca: Option<String>,
    client_auth: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCert {
    cert: String,
    key: String,
    names: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    idle_timeout: Option<String>,
    max_idle_per_target: Option<i64>,
    max_requests_per_target: Option<i64>,
    max_pending_per_target: Option<i64>,
    pending_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    algorithms: Option<Vec<String>>,
    secret: Option<String>,
    public_key_pem: Option<String>,
    public_key_file: Option<String>,
    user_claim: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Option<String>,
    require_exp: Option<bool>,
    token_cache: Option<i64>,
    keys: Option<Vec<RawKey>>,
    jwks_url: Option<String>,
    jwks_min_refresh: Option<String>,
    jwks_max_refresh: Option<String>,
    jwks_refetch_interval: Option<String>,
    jwks_max_stale: Option<String>,
    jwks_timeout: Option<String>,
    jwks_ready_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    kid: String,
    alg: Option<String>,
    secret: Option<String>,
    public_key_pem: Option<String>,
    public_key_file: Option<String>,
}

/// A route's `auth`: `true`/`false`, or the name of a provider.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRouteAuth {
    On(bool),
    Provider(String),
}

impl Default for RawRouteAuth {
    fn default() -> Self {
        RawRouteAuth::On(false)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    store: Option<String>,
    redis_url: Option<String>,
    redis_cluster_nodes: Option<Vec<String>>,
    redis_tls_ca: Option<String>,
    key_prefix: Option<String>,
    on_store_error: Option<String>,
    command_timeout: Option<String>,
    memory_max_keys: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    failure_threshold: Option<i64>,
    open_for: Option<String>,
    probe_timeout: Option<String>,
    failure_statuses: Option<Vec<RawStatus>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawStatus {
    Code(i64),
    Class(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<String>,
    path: String,
    host: Option<String>,
    methods: Option<Vec<String>>,
    targets: Vec<RawTarget>,
    #[serde(default)]
    auth: RawRouteAuth,
    rate_limit: Option<RawLimit>,
    #[serde(default)]
    strip_prefix: bool,
    timeout: Option<String>,
    max_body_size: Option<RawSize>,
    balance: Option<String>,
    hash_on: Option<String>,
    retries: Option<i64>,
    retry_on: Option<Vec<RawStatus>>,
    retry_idempotency_key: Option<bool>,
    retry_max_body: Option<RawSize>,
    try_timeout: Option<String>,
    health_check: Option<RawRouteHealth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    max: i64,
    window: String,
    key: Option<String>,
    algorithm: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation.

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8000";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

impl Config {
    /// Parses and validates a TOML document. `${VAR}` in any string value is replaced from
    /// `env` (`$${` writes a literal `${`); a missing variable is an error naming it.
    pub fn from_toml(text: &str, env: &dyn ConfigEnv) -> Result<Config, ConfigError> {
        // A syntax error keeps toml's multi-line display (the line and a caret under it).
        let mut value: toml::Value = toml::from_str(text)
            .map_err(|e| ConfigError::new("config", e.to_string().trim_end().to_owned()))?;
        substitute(&mut value, &mut String::new(), env)?;
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." {
                "config".to_owned()
            } else {
                path
            };
            let reason = friendly(&path, &one_line(&e.into_inner().to_string()));
            ConfigError::new(path, reason)
        })?;
        validate(raw, env)
    }

    /// Replaces the listen port, Redis URL or JWT secret: the seed's `PORT`, `REDIS_URL` and
    /// `JWT_SECRET` variables override the file.
    pub fn apply_overrides(
        &mut self,
        port: Option<&str>,
        redis_url: Option<&str>,
        jwt_secret: Option<&str>,
    ) -> Result<(), ConfigError> {
        if let Some(p) = port {
            let port: u16 = p
                .trim()
                .parse()
                .map_err(|_| ConfigError::new("PORT", format!("{p:?} is not a port number")))?;
            self.server.listen.set_port(port);
        }
        if let Some(url) = redis_url {
            check_redis_url(url).map_err(|r| ConfigError::new("REDIS_URL", r))?;
            self.rate_limit.redis_url = url.to_owned();
            // The variable names the one Redis to use: it replaces cluster nodes too.
            self.rate_limit.redis_cluster_nodes.clear();
            self.rate_limit.store = StoreKind::Redis;
        }
        if let Some(secret) = jwt_secret {
            if secret.is_empty() {
                return Err(ConfigError::new("JWT_SECRET", "is empty"));
            }
            if let Some(auth) = &mut self.auth {
                auth.secret = Some(Secret(secret.to_owned()));
            }
        }
        Ok(())
    }

    /// Things that are allowed but worth a word to the operator (logged at start and reload,
    /// printed by `aegis check`).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let providers = self.auth.iter().map(|a| ("auth".to_owned(), a)).chain(
            self.auth_providers
                .iter()
                .map(|(n, a)| (format!("auth_providers.{n}"), a)),
        );
        for (section, a) in providers {
            if let Some(j) = &a.jwks
                && j.url.starts_with("http://")
            {
                out.push(format!(
                    "{section}.jwks_url: {:?} is fetched without TLS: anyone on the path can \
                     replace the keys; use https outside local testing",
                    j.url
                ));
            }
        }
        out
    }

    /// Every auth provider: `[auth]` first (named `""`), then `[auth_providers.NAME]` by name.
    /// Their positions are the policy's provider ids.
    pub fn providers(&self) -> Vec<(&str, &AuthConfig)> {
        self.auth
            .iter()
            .map(|a| ("", a))
            .chain(self.auth_providers.iter().map(|(n, a)| (n.as_str(), a)))
            .collect()
    }

    /// The route with this name, if any.
    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.name == name)
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A type error from the deserializer in the config's words: "expected i64" is "expected a
/// whole number", a number where a duration goes says how to write one, and the
/// deserializer's own "in `a.b`" (which drops list indexes) goes, since `path` says where.
fn friendly(path: &str, reason: &str) -> String {
    let reason = match reason.rfind(" in `") {
        Some(i) if reason.ends_with('`') => &reason[..i],
        _ => reason,
    };
    let mut r = reason
        .replace("expected i64", "expected a whole number")
        .replace("expected u64", "expected a whole number")
        .replace("expected usize", "expected a whole number");
    let key = path.rsplit('.').next().unwrap_or(path);
    let is_duration = key.ends_with("timeout")
        || matches!(
            key,
            "window" | "open_for" | "leeway" | "interval" | "probe_timeout"
        );
    if is_duration
        && let Some(n) = r
            .strip_prefix("invalid type: integer `")
            .and_then(|rest| rest.split('`').next())
    {
        r = format!("a duration is a string with a unit: write \"{n}s\" (or \"{n}ms\")");
    }
    r
}

fn substitute(
    value: &mut toml::Value,
    path: &mut String,
    env: &dyn ConfigEnv,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) if s.contains('$') => {
            *s = expand(s, env).map_err(|r| ConfigError::new(path.clone(), r))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                substitute(item, path, env)?;
                path.truncate(len);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                substitute(item, path, env)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand(s: &str, env: &dyn ConfigEnv) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = r;
        } else if let Some(r) = rest.strip_prefix("${") {
            let end = r
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" in {s:?}"))?;
            let name = &r[..end];
            let valid = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err(format!("{name:?} is not an environment variable name"));
            }
            let v = env
                .var(name)
                .ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&v);
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn duration(path: &str, raw: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    match raw {
        None => Ok(default),
        Some(s) => parse_duration(s).map_err(|r| ConfigError::new(path, r)),
    }
}

fn positive_duration(
    path: &str,
    raw: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration(path, raw, default)?;
    if d.is_zero() {
        return Err(ConfigError::new(path, "must be greater than zero"));
    }
    Ok(d)
}

/// `1024`, `"16KiB"`, `"10MiB"`, `"1GiB"`, `"500KB"`.
fn size(path: &str, raw: &RawSize) -> Result<u64, ConfigError> {
    let text = match raw {
        RawSize::Bytes(n) => return Ok(*n),
        RawSize::Text(t) => t.trim(),
    };
    let digits = text.bytes().take_while(|b| b.is_ascii_digit()).count();
    let (num, unit) = text.split_at(digits);
    let n: u64 = num.parse().map_err(|_| {
        ConfigError::new(
            path,
            format!("{text:?} is not a size; write e.g. \"10MiB\" or 1024"),
        )
    })?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        u => {
            return Err(ConfigError::new(
                path,
                format!("{text:?}: unknown unit {u:?} (use B, KiB, MiB, GiB, KB, MB, GB)"),
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| ConfigError::new(path, format!("{text:?} is too large")))
}

fn socket_addr(path: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError::new(
            path,
            format!("{s:?} is not an address:port such as \"0.0.0.0:8000\""),
        )
    })
}

fn check_redis_url(url: &str) -> Result<(), String> {
    if let Some(sentinel) = parse_sentinel_url(url) {
        return sentinel.map(|_| ());
    }
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .or_else(|| url.strip_prefix("redis+unix://"))
        .or_else(|| url.strip_prefix("unix://"))
        .ok_or_else(|| format!("{url:?} is not a redis:// URL"))?;
    if rest.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    Ok(())
}

/// Parses a `redis+sentinel://` URL; `None` when `url` has another scheme. Errors never
/// repeat the URL (it may hold a password).
pub fn parse_sentinel_url(url: &str) -> Option<Result<SentinelUrl, String>> {
    let rest = url.strip_prefix("redis+sentinel://")?;
    Some(sentinel_parts(rest))
}

/// `%XX` escapes decoded (URL userinfo); `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn sentinel_parts(rest: &str) -> Result<SentinelUrl, String> {
    const FORM: &str =
        "redis+sentinel://[user:password@]host:port[,host:port...]/<primary name>[/<db>]";
    let (authority, path) = rest
        .split_once('/')
        .ok_or_else(|| format!("the sentinel URL names no primary ({FORM})"))?;
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let decode = |s: &str| {
                percent_decode(s)
                    .ok_or("the sentinel URL's credentials are not valid percent-encoded UTF-8")
            };
            let user = decode(user)?;
            let pass = decode(pass)?;
            (
                (!user.is_empty()).then_some(user),
                (!pass.is_empty()).then_some(pass),
            )
        }
    };
    let mut sentinels = Vec::new();
    for h in hosts.split(',') {
        let h = h.trim();
        let (host, port) = match h.strip_prefix('[') {
            Some(v6) => {
                let (addr, after) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("sentinel {h:?}: unclosed '['"))?;
                (format!("[{addr}]"), after.strip_prefix(':'))
            }
            None => match h.split_once(':') {
                Some((host, port)) if !port.contains(':') => (host.to_owned(), Some(port)),
                Some(_) => {
                    return Err(format!("sentinel {h:?}: write an IPv6 address in brackets"));
                }
                None => (h.to_owned(), None),
            },
        };
        if host.is_empty() || host == "[]" {
            return Err(format!("the sentinel URL has an empty host ({FORM})"));
        }
        let port = match port {
            None => 26379,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("sentinel {h:?}: {p:?} is not a port number"))?,
        };
        sentinels.push(format!("{host}:{port}"));
    }
    let mut parts = path.split('/');
    let primary = parts.next().unwrap_or_default();
    if primary.is_empty() {
        return Err(format!("the sentinel URL names no primary ({FORM})"));
    }
    let db = match parts.next() {
        None | Some("") => 0,
        Some(d) => d
            .parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or_else(|| format!("the sentinel URL's db {d:?} is not a number"))?,
    };
    if parts.next().is_some() {
        return Err(format!(
            "the sentinel URL has too many path segments ({FORM})"
        ));
    }
    Ok(SentinelUrl {
        sentinels,
        primary: primary.to_owned(),
        db,
        username,
        password,
    })
}

fn validate(raw: RawConfig, env: &dyn ConfigEnv) -> Result<Config, ConfigError> {
    let server = validate_server(raw.server)?;
    let upstream = validate_upstream(raw.upstream)?;
    let retry_budget = validate_retry_budget(raw.retry_budget)?;
    let upstream_tls = validate_upstream_tls(raw.upstream_tls)?;
    let auth = raw
        .auth
        .map(|a| validate_auth("auth", a, env))
        .transpose()?;
    let mut auth_providers = BTreeMap::new();
    for (name, a) in raw.auth_providers {
        let section = format!("auth_providers.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::new(
                section,
                "a provider name is letters, digits, '-' and '_'",
            ));
        }
        let a = validate_auth(&section, a, env)?;
        auth_providers.insert(name, a);
    }
    let rate_limit = validate_store(raw.rate_limit, env)?;
    let mut routes = Vec::with_capacity(raw.routes.len());
    if raw.routes.is_empty() {
        return Err(ConfigError::new(
            "routes",
            "at least one [[routes]] entry is required",
        ));
    }
    for (i, r) in raw.routes.into_iter().enumerate() {
        routes.push(validate_route(
            i,
            r,
            &server,
            auth.is_some(),
            &auth_providers,
            raw.health_check.as_ref(),
        )?);
    }
    check_route_overlaps(&routes)?;
    let max_timeout = routes
        .iter()
        .map(|r| r.timeout)
        .max()
        .unwrap_or(server.request_timeout);
    let breaker = validate_breaker(raw.breaker, max_timeout)?;
    Ok(Config {
        server,
        upstream,
        retry_budget,
        upstream_tls,
        auth,
        auth_providers,
        rate_limit,
        breaker,
        routes,
    })
}

fn validate_retry_budget(b: RawRetryBudget) -> Result<RetryBudgetConfig, ConfigError> {
    let ratio = b.ratio.unwrap_or(0.2);
    if !(0.0..=10.0).contains(&ratio) {
        return Err(ConfigError::new(
            "retry_budget.ratio",
            "must be between 0 and 10 (0.2: at most 20 % more requests)",
        ));
    }
    let min_per_second = count("retry_budget.min_per_second", b.min_per_second, 10, 0)?;
    Ok(RetryBudgetConfig {
        ratio,
        min_per_second: u32::try_from(min_per_second).unwrap_or(u32::MAX),
        window: positive_duration(
            "retry_budget.window",
            b.window.as_deref(),
            Duration::from_secs(10),
        )?,
    })
}

/// A route's health checks: its own table over the top-level `[health_check]` defaults.
fn validate_health_check(
    path: &str,
    own: Option<&RawHealthCheck>,
    shared: Option<&RawHealthCheck>,
) -> Result<HealthCheckConfig, ConfigError> {
    let d = RawHealthCheck::default();
    let (own, shared) = (own.unwrap_or(&d), shared.unwrap_or(&d));
    let key = |k: &str| format!("{path}.{k}");
    let probe_path = own
        .path
        .clone()
        .or_else(|| shared.path.clone())
        .unwrap_or_else(|| "/health".to_owned());
    if !probe_path.starts_with('/') || probe_path.contains(char::is_whitespace) {
        return Err(ConfigError::new(
            key("path"),
            format!("{probe_path:?} must be a path starting with \"/\""),
        ));
    }
    let interval = positive_duration(
        &key("interval"),
        own.interval.as_deref().or(shared.interval.as_deref()),
        Duration::from_secs(5),
    )?;
    let timeout = positive_duration(
        &key("timeout"),
        own.timeout.as_deref().or(shared.timeout.as_deref()),
        Duration::from_secs(1),
    )?;
    if timeout > interval {
        return Err(ConfigError::new(
            key("timeout"),
            "must not be longer than the interval",
        ));
    }
    let threshold = |k: &str, v: Option<i64>| -> Result<u32, ConfigError> {
        let n = count(&key(k), v, 2, 1)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    };
    Ok(HealthCheckConfig {
        path: probe_path,
        interval,
        timeout,
        unhealthy_after: threshold(
            "unhealthy_after",
            own.unhealthy_after.or(shared.unhealthy_after),
        )?,
        healthy_after: threshold("healthy_after", own.healthy_after.or(shared.healthy_after))?,
    })
}

/// Statuses as `[502, "5xx"]`.
fn statuses(path: &str, list: &[RawStatus]) -> Result<StatusSet, ConfigError> {
    let mut set = StatusSet::EMPTY;
    for (i, s) in list.iter().enumerate() {
        let path = format!("{path}[{i}]");
        match s {
            RawStatus::Code(c) if (100..=599).contains(c) => set.insert(*c as u16),
            RawStatus::Code(c) => {
                return Err(ConfigError::new(path, format!("{c} is not an HTTP status")));
            }
            RawStatus::Class(c) => {
                let class = match c.as_str() {
                    "4xx" => 400,
                    "5xx" => 500,
                    _ => {
                        return Err(ConfigError::new(
                            path,
                            format!("{c:?} is not a status or class (\"4xx\", \"5xx\")"),
                        ));
                    }
                };
                for code in class..class + 100 {
                    set.insert(code);
                }
            }
        }
    }
    Ok(set)
}

/// A count from config: at least `min`, `default` when unset.
fn count(path: &str, raw: Option<i64>, default: usize, min: usize) -> Result<usize, ConfigError> {
    match raw {
        None => Ok(default),
        Some(n) => usize::try_from(n)
            .ok()
            .filter(|&n| n >= min)
            .ok_or_else(|| {
                ConfigError::new(path, format!("must be a whole number of at least {min}"))
            }),
    }
}

fn validate_upstream(u: RawUpstream) -> Result<UpstreamConfig, ConfigError> {
    Ok(UpstreamConfig {
        idle_timeout: positive_duration(
            "upstream.idle_timeout",
            u.idle_timeout.as_deref(),
            Duration::from_secs(4),
        )?,
        max_idle_per_target: count(
            "upstream.max_idle_per_target",
            u.max_idle_per_target,
            512,
            0,
        )?,
        max_requests_per_target: count(
            "upstream.max_requests_per_target",
            u.max_requests_per_target,
            1024,
            1,
        )?,
        max_pending_per_target: count(
            "upstream.max_pending_per_target",
            u.max_pending_per_target,
            1024,
            0,
        )?,
        pending_timeout: duration(
            "upstream.pending_timeout",
            u.pending_timeout.as_deref(),
            Duration::from_secs(1),
        )?,
    })
}

fn validate_server(s: RawServer) -> Result<ServerConfig, ConfigError> {
    let listen = socket_addr(
        "server.listen",
        s.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
    )?;
    let admin_listen = s
        .admin_listen
        .as_deref()
        .map(|a| socket_addr("server.admin_listen", a))
        .transpose()?;
    if admin_listen == Some(listen) {
        return Err(ConfigError::new(
            "server.admin_listen",
            "must differ from server.listen",
        ));
    }
    let mut trusted_proxies = Vec::with_capacity(s.trusted_proxies.len());
    for (i, p) in s.trusted_proxies.iter().enumerate() {
        let net = p
            .parse::<IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| {
                ConfigError::new(
                    format!("server.trusted_proxies[{i}]"),
                    format!("{p:?} is not an IP address or CIDR block"),
                )
            })?;
        trusted_proxies.push(net);
    }
    let size_or = |path: &str, raw: &Option<RawSize>, default: u64| -> Result<u64, ConfigError> {
        raw.as_ref()
            .map(|r| size(path, r))
            .transpose()
            .map(|v| v.unwrap_or(default))
    };
    let max_header = size_or("server.max_header_size", &s.max_header_size, 32 << 10)?;
    if !(1024..=1 << 20).contains(&max_header) {
        return Err(ConfigError::new(
            "server.max_header_size",
            "must be between 1KiB and 1MiB",
        ));
    }
    let max_uri = size_or("server.max_uri_length", &s.max_uri_length, 8 << 10)?;
    if !(64..=1 << 20).contains(&max_uri) {
        return Err(ConfigError::new(
            "server.max_uri_length",
            "must be between 64 and 1MiB",
        ));
    }
    let max_body_bytes = s
        .max_body_size
        .as_ref()
        .map(|r| size("server.max_body_size", r))
        .transpose()?;
    let h2 = validate_h2(&s, max_header)?;
    let tls = s
        .tls
        .map(|t| validate_tls(t, listen, admin_listen))
        .transpose()?;
    Ok(ServerConfig {
        tls,
        listen,
        admin_listen,
        trusted_proxies,
        connect_timeout: positive_duration(
            "server.connect_timeout",
            s.connect_timeout.as_deref(),
            Duration::from_secs(5),
        )?,
        request_timeout: positive_duration(
            "server.request_timeout",
            s.request_timeout.as_deref(),
            Duration::from_secs(30),
        )?,
        header_read_timeout: positive_duration(
            "server.header_read_timeout",
            s.header_read_timeout.as_deref(),
            Duration::from_secs(10),
        )?,
        idle_timeout: positive_duration(
            "server.idle_timeout",
            s.idle_timeout.as_deref(),
            Duration::from_secs(60),
        )?,
        drain_timeout: duration(
            "server.drain_timeout",
            s.drain_timeout.as_deref(),
            Duration::from_secs(30),
        )?,
        max_header_bytes: max_header as usize,
        max_uri_bytes: max_uri as usize,
        max_body_bytes,
        headers_with_underscores: match s.headers_with_underscores.as_deref().unwrap_or("drop") {
            "drop" => UnderscoreHeaders::Drop,
            "reject" => UnderscoreHeaders::Reject,
            "allow" => UnderscoreHeaders::Allow,
            other => {
                return Err(ConfigError::new(
                    "server.headers_with_underscores",
                    format!("{other:?} is not one of \"drop\", \"reject\", \"allow\""),
                ));
            }
        },
        max_connections: count("server.max_connections", s.max_connections, 25_000, 1)?,
        max_connections_per_ip: count(
            "server.max_connections_per_ip",
            s.max_connections_per_ip,
            1_000,
            1,
        )?,
        max_requests_per_ip: count("server.max_requests_per_ip", s.max_requests_per_ip, 256, 1)?,
        upgrades: match s.upgrades {
            None => vec!["websocket".to_owned()],
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for (i, u) in list.iter().enumerate() {
                    let lower = u.trim().to_ascii_lowercase();
                    if lower == "h2c" {
                        return Err(ConfigError::new(
                            format!("server.upgrades[{i}]"),
                            "\"h2c\" is never forwarded (h2c smuggling)",
                        ));
                    }
                    if lower.is_empty()
                        || !lower
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b))
                    {
                        return Err(ConfigError::new(
                            format!("server.upgrades[{i}]"),
                            format!("{u:?} is not a protocol name"),
                        ));
                    }
                    out.push(lower);
                }
                out
            }
        },
        websocket_idle_timeout: positive_duration(
            "server.websocket_idle_timeout",
            s.websocket_idle_timeout.as_deref(),
            Duration::from_secs(3600),
        )?,
        h2,
    })
}

/// The `h2_*` keys of `[server]`. The header list defaults to `max_header_size`, so that a
/// request head has the same room over HTTP/2 as over HTTP/1.1.
fn validate_h2(s: &RawServer, max_header: u64) -> Result<H2Limits, ConfigError> {
    let count = |path: &str, raw: Option<i64>, default: i64, max: i64| {
        let n = raw.unwrap_or(default);
        if (1..=max).contains(&n) {
            Ok(n)
        } else {
            Err(ConfigError::new(
                path,
                format!("must be between 1 and {max}, not {n}"),
            ))
        }
    };
    let bytes = |path: &str, raw: &Option<RawSize>, default: u64, (lo, hi): (u64, u64)| {
        let n = raw.as_ref().map(|r| size(path, r)).transpose()?;
        let n = n.unwrap_or(default);
        if (lo..=hi).contains(&n) {
            Ok(n)
        } else {
            Err(ConfigError::new(
                path,
                format!("must be between {} and {}", fmt_size(lo), fmt_size(hi)),
            ))
        }
    };
    Ok(H2Limits {
        max_concurrent_streams: count(
            "server.h2_max_concurrent_streams",
            s.h2_max_concurrent_streams,
            100,
            10_000,
        )? as u32,
        max_header_list_bytes: bytes(
            "server.h2_max_header_list_size",
            &s.h2_max_header_list_size,
            max_header,
            (1 << 10, 1 << 20),
        )? as u32,
        max_pending_resets: count(
            "server.h2_max_pending_resets",
            s.h2_max_pending_resets,
            20,
            10_000,
        )? as usize,
        max_error_resets: count(
            "server.h2_max_error_resets",
            s.h2_max_error_resets,
            1024,
            1_000_000,
        )? as usize,
        max_send_buffer_bytes: bytes(
            "server.h2_max_send_buffer_size",
            &s.h2_max_send_buffer_size,
            64 << 10,
            (16 << 10, 16 << 20),
        )? as usize,
    })
}

/// A size as the config writes it: `16KiB`, `1MiB`, or bytes.
fn fmt_size(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => n.to_string(),
    }
}

fn validate_upstream_tls(t: RawUpstreamTls) -> Result<UpstreamTlsConfig, ConfigError> {
    let ca_only = match t.roots.as_deref().unwrap_or("bundled") {
        "bundled" => false,
        "ca_only" => true,
        other => {
            return Err(ConfigError::new(
                "upstream_tls.roots",
                format!("{other:?} is not \"bundled\" or \"ca_only\""),
            ));
        }
    };
    if ca_only && t.ca.is_none() {
        return Err(ConfigError::new(
            "upstream_tls.roots",
            "\"ca_only\" needs upstream_tls.ca",
        ));
    }
    if t.client_cert.is_some() != t.client_key.is_some() {
        return Err(ConfigError::new(
            "upstream_tls.client_key",
            "client_cert and client_key go together",
        ));
    }
    Ok(UpstreamTlsConfig {
        ca: t.ca,
        ca_only,
        client_cert: t.client_cert,
        client_key: t.client_key,
    })
}

fn validate_tls(
    t: RawTls,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
) -> Result<TlsConfig, ConfigError> {
    let p = |k: &str| format!("server.tls.{k}");
    let path_ok = |path: &str, v: &str| -> Result<String, ConfigError> {
        if v.trim().is_empty() {
            return Err(ConfigError::new(path, "must name a file"));
        }
        Ok(v.to_owned())
    };
    let mut certificates = vec![CertConfig {
        cert: path_ok(&p("cert"), &t.cert)?,
        key: path_ok(&p("key"), &t.key)?,
        names: Vec::new(),
    }];
    for (i, c) in t.certificates.unwrap_or_default().into_iter().enumerate() {
        let cp = |k: &str| format!("server.tls.certificates[{i}].{k}");
        let mut names = Vec::new();
        for (j, n) in c.names.unwrap_or_default().iter().enumerate() {
            let n = n.trim().to_ascii_lowercase();
            let bare = n.strip_prefix("*.").unwrap_or(&n);
            let ok = !bare.is_empty()
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !ok {
                return Err(ConfigError::new(
                    format!("server.tls.certificates[{i}].names[{j}]"),
                    format!("{n:?} is not a host name (\"*.\" for a wildcard)"),
                ));
            }
            names.push(n);
        }
        certificates.push(CertConfig {
            cert: path_ok(&cp("cert"), &c.cert)?,
            key: path_ok(&cp("key"), &c.key)?,
            names,
        });
    }
    let tls13_only = match t.min_version.as_deref().unwrap_or("1.2") {
        "1.2" => false,
        "1.3" => true,
        other => {
            return Err(ConfigError::new(
                p("min_version"),
                format!("{other:?} is not a TLS version (\"1.2\" or \"1.3\")"),
            ));
        }
    };
    let redirect_listen = t
        .redirect_listen
        .as_deref()
        .map(|a| socket_addr(&p("redirect_listen"), a))
        .transpose()?;
    if let Some(r) = redirect_listen
        && r.port() != 0
        && (r == listen || Some(r) == admin)
    {
        return Err(ConfigError::new(
            p("redirect_listen"),
            "must differ from server.listen and server.admin_listen",
        ));
    }
    let client_cert_optional = match t.client_auth.as_deref().unwrap_or("required") {
        "required" => false,
        "optional" => true,
        other => {
            return Err(ConfigError::new(
                p("client_auth"),
                format!("{other:?} is not \"required\" or \"optional\""),
            ));
        }
    };
    if t.client_auth.is_some() && t.client_ca.is_none() {
        return Err(ConfigError::new(
            p("client_auth"),
            "is set but there is no client_ca",
        ));
    }
    Ok(TlsConfig {
        certificates,
        tls13_only,
        handshake_timeout: positive_duration(
            &p("handshake_timeout"),
            t.handshake_timeout.as_deref(),
            Duration::from_secs(10),
        )?,
        redirect_listen,
        client_ca: t.client_ca,
        client_cert_optional,
    })
}

fn validate_auth(
    section: &str,
    a: RawAuth,
    env: &dyn ConfigEnv,
) -> Result<AuthConfig, ConfigError> {
    let p = |key: &str| format!("{section}.{key}");
    let names = a.algorithms.unwrap_or_else(|| vec!["HS256".to_owned()]);
    if names.is_empty() {
        return Err(ConfigError::new(
            p("algorithms"),
            "must allow at least one algorithm",
        ));
    }
    let mut algorithms = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        let alg = JwtAlgorithm::from_name(n).ok_or_else(|| {
            ConfigError::new(format!("{section}.algorithms[{i}]"), bad_algorithm(n))
        })?;
        if !algorithms.contains(&alg) {
            algorithms.push(alg);
        }
    }
    if a.public_key_pem.is_some() && a.public_key_file.is_some() {
        return Err(ConfigError::new(
            p("public_key_file"),
            "set either public_key_pem or public_key_file, not both",
        ));
    }
    let public_key_pem = match (a.public_key_pem, a.public_key_file) {
        (Some(p), None) => Some(p),
        (None, Some(f)) => Some(
            env.read_file(&f)
                .map_err(|e| ConfigError::new(p("public_key_file"), e))?,
        ),
        _ => None,
    };
    let mut keys = Vec::new();
    for (i, k) in a.keys.unwrap_or_default().into_iter().enumerate() {
        let kp = |key: &str| format!("{section}.keys[{i}].{key}");
        if k.kid.is_empty() {
            return Err(ConfigError::new(kp("kid"), "must not be empty"));
        }
        if keys.iter().any(|x: &StaticKey| x.kid == k.kid) {
            return Err(ConfigError::new(
                kp("kid"),
                format!("{:?} is the kid of another key", k.kid),
            ));
        }
        let alg = match &k.alg {
            None => None,
            Some(n) => {
                let alg = JwtAlgorithm::from_name(n)
                    .ok_or_else(|| ConfigError::new(kp("alg"), bad_algorithm(n)))?;
                if !algorithms.contains(&alg) {
                    return Err(ConfigError::new(
                        kp("alg"),
                        format!("{n} is not in {section}.algorithms"),
                    ));
                }
                Some(alg)
            }
        };
        let material = match (
            k.secret.filter(|s| !s.is_empty()),
            k.public_key_pem,
            k.public_key_file,
        ) {
            (Some(s), None, None) => KeyMaterial::Secret(Secret(s)),
            (None, Some(pem), None) => KeyMaterial::Pem(pem),
            (None, None, Some(f)) => KeyMaterial::Pem(
                env.read_file(&f)
                    .map_err(|e| ConfigError::new(kp("public_key_file"), e))?,
            ),
            _ => {
                return Err(ConfigError::new(
                    format!("{section}.keys[{i}]"),
                    "set exactly one of secret, public_key_pem and public_key_file",
                ));
            }
        };
        keys.push(StaticKey {
            kid: k.kid,
            alg,
            material,
        });
    }
    let jwks = match a.jwks_url {
        None => {
            for (key, set) in [
                ("jwks_min_refresh", a.jwks_min_refresh.is_some()),
                ("jwks_max_refresh", a.jwks_max_refresh.is_some()),
                ("jwks_refetch_interval", a.jwks_refetch_interval.is_some()),
                ("jwks_max_stale", a.jwks_max_stale.is_some()),
                ("jwks_timeout", a.jwks_timeout.is_some()),
                ("jwks_ready_timeout", a.jwks_ready_timeout.is_some()),
            ] {
                if set {
                    return Err(ConfigError::new(p(key), "is set but there is no jwks_url"));
                }
            }
            None
        }
        Some(url) => {
            let uri: http::Uri = url
                .parse()
                .map_err(|_| ConfigError::new(p("jwks_url"), format!("{url:?} is not a URL")))?;
            if !matches!(uri.scheme_str(), Some("https" | "http"))
                || uri.host().is_none_or(str::is_empty)
            {
                return Err(ConfigError::new(
                    p("jwks_url"),
                    format!("{url:?} is not an https:// URL"),
                ));
            }
            if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err(ConfigError::new(
                    p("jwks_url"),
                    format!("{url:?}: credentials in URLs are refused"),
                ));
            }
            let min_refresh = positive_duration(
                &p("jwks_min_refresh"),
                a.jwks_min_refresh.as_deref(),
                crate::auth::DEFAULT_MIN_REFRESH,
            )?;
            let max_refresh = positive_duration(
                &p("jwks_max_refresh"),
                a.jwks_max_refresh.as_deref(),
                crate::auth::DEFAULT_MAX_REFRESH,
            )?;
            if max_refresh < min_refresh {
                return Err(ConfigError::new(
                    p("jwks_max_refresh"),
                    "must not be less than jwks_min_refresh",
                ));
            }
            Some(JwksConfig {
                url,
                min_refresh,
                max_refresh,
                refetch_interval: duration(
                    &p("jwks_refetch_interval"),
                    a.jwks_refetch_interval.as_deref(),
                    crate::auth::DEFAULT_REFETCH_INTERVAL,
                )?,
                max_stale: duration(
                    &p("jwks_max_stale"),
                    a.jwks_max_stale.as_deref(),
                    crate::auth::DEFAULT_MAX_STALE,
                )?,
                timeout: positive_duration(
                    &p("jwks_timeout"),
                    a.jwks_timeout.as_deref(),
                    crate::auth::DEFAULT_TIMEOUT,
                )?,
                ready_timeout: duration(
                    &p("jwks_ready_timeout"),
                    a.jwks_ready_timeout.as_deref(),
                    crate::auth::DEFAULT_READY_TIMEOUT,
                )?,
            })
        }
    };
    let secret = a.secret.filter(|s| !s.is_empty()).map(Secret);
    let keyed = |hmac: bool| {
        keys.iter()
            .any(|k| matches!(k.material, KeyMaterial::Secret(_)) == hmac)
    };
    let wants_hmac = algorithms.iter().any(|a| a.is_hmac());
    let wants_public = algorithms.iter().any(|a| !a.is_hmac());
    if wants_hmac && secret.is_none() && !keyed(true) && jwks.is_none() {
        return Err(ConfigError::new(
            p("secret"),
            "an HS* algorithm is allowed but no secret is set",
        ));
    }
    if wants_public && public_key_pem.is_none() && !keyed(false) && jwks.is_none() {
        return Err(ConfigError::new(
            p("public_key_pem"),
            "an asymmetric algorithm is allowed but no public_key_pem, public_key_file, keys or jwks_url is set",
        ));
    }
    if let (Some(s), Some(pk)) = (&secret, &public_key_pem)
        && s.0.trim() == pk.trim()
    {
        return Err(ConfigError::new(
            p("secret"),
            "must not be the public key: anyone could sign HS* tokens with it",
        ));
    }
    let user_claim = a.user_claim.unwrap_or_else(|| "userId".to_owned());
    if user_claim.is_empty() {
        return Err(ConfigError::new(p("user_claim"), "must not be empty"));
    }
    let auth = AuthConfig {
        algorithms,
        secret,
        public_key_pem,
        user_claim,
        issuer: a.issuer,
        audience: a.audience,
        leeway: duration(&p("leeway"), a.leeway.as_deref(), DEFAULT_LEEWAY)?,
        require_exp: a.require_exp.unwrap_or(true),
        token_cache: count(&p("token_cache"), a.token_cache, 1024, 0)?,
        keys,
        jwks,
    };
    // Build the keys once here so that a bad PEM is a config error, not a runtime 401.
    crate::auth::Verifier::new(&auth).map_err(|e| key_error(section, e))?;
    Ok(auth)
}

fn bad_algorithm(n: &str) -> String {
    let known: Vec<_> = JwtAlgorithm::ALL.iter().map(|a| a.name()).collect();
    if n.eq_ignore_ascii_case("none") {
        "\"none\" is never allowed: unsigned tokens prove nothing".to_owned()
    } else {
        format!(
            "{n:?} is not a supported algorithm (one of {})",
            known.join(", ")
        )
    }
}

fn validate_store(s: RawStore, env: &dyn ConfigEnv) -> Result<StoreConfig, ConfigError> {
    let store = match s.store.as_deref().unwrap_or("memory") {
        "memory" => StoreKind::Memory,
        "redis" => StoreKind::Redis,
        other => {
            return Err(ConfigError::new(
                "rate_limit.store",
                format!("{other:?} is not a store (\"memory\" or \"redis\")"),
            ));
        }
    };
    let cluster = s.redis_cluster_nodes.unwrap_or_default();
    if !cluster.is_empty() && s.redis_url.is_some() {
        return Err(ConfigError::new(
            "rate_limit.redis_cluster_nodes",
            "set redis_url (one Redis) or redis_cluster_nodes (Redis Cluster), not both",
        ));
    }
    let redis_url = s.redis_url.unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned());
    check_redis_url(&redis_url).map_err(|r| ConfigError::new("rate_limit.redis_url", r))?;
    let redis_cluster_nodes = validate_cluster_nodes(cluster, store)?;
    let tls = if redis_cluster_nodes.is_empty() {
        redis_url.starts_with("rediss://")
    } else {
        redis_cluster_nodes[0].starts_with("rediss://")
    };
    let redis_tls_ca = match s.redis_tls_ca {
        None => None,
        Some(path) => {
            const KEY: &str = "rate_limit.redis_tls_ca";
            if !tls {
                return Err(ConfigError::new(
                    KEY,
                    "is set but no rediss:// URL uses it (redis_url or redis_cluster_nodes)",
                ));
            }
            let pem = env.read_file(&path).map_err(|e| ConfigError::new(KEY, e))?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(ConfigError::new(
                    KEY,
                    format!("{path:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
                ));
            }
            Some(TlsCa { path, pem })
        }
    };
    let on_store_error = match s.on_store_error.as_deref().unwrap_or("allow") {
        "allow" => OnStoreError::Allow,
        "deny" => OnStoreError::Deny,
        other => {
            return Err(ConfigError::new(
                "rate_limit.on_store_error",
                format!("{other:?} is not a policy (\"allow\" or \"deny\")"),
            ));
        }
    };
    let memory_max_keys = s.memory_max_keys.unwrap_or(100_000);
    if memory_max_keys == 0 {
        return Err(ConfigError::new(
            "rate_limit.memory_max_keys",
            "must be at least 1",
        ));
    }
    Ok(StoreConfig {
        store,
        redis_url,
        redis_cluster_nodes,
        redis_tls_ca,
        key_prefix: s.key_prefix.unwrap_or_else(|| "aegis:rl:".to_owned()),
        on_store_error,
        command_timeout: positive_duration(
            "rate_limit.command_timeout",
            s.command_timeout.as_deref(),
            Duration::from_millis(250),
        )?,
        memory_max_keys: usize::try_from(memory_max_keys).unwrap_or(usize::MAX),
    })
}

fn validate_cluster_nodes(
    nodes: Vec<String>,
    store: StoreKind,
) -> Result<Vec<String>, ConfigError> {
    const KEY: &str = "rate_limit.redis_cluster_nodes";
    if nodes.is_empty() {
        return Ok(nodes);
    }
    if store != StoreKind::Redis {
        return Err(ConfigError::new(
            KEY,
            "cluster nodes are set but store is \"memory\"; set store = \"redis\"",
        ));
    }
    let tls = nodes[0].starts_with("rediss://");
    for (i, n) in nodes.iter().enumerate() {
        let at = || format!("{KEY}[{i}]");
        let rest = n
            .strip_prefix("redis://")
            .or_else(|| n.strip_prefix("rediss://"))
            .ok_or_else(|| {
                ConfigError::new(at(), format!("{n:?} is not a redis:// or rediss:// URL"))
            })?;
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let host = host.split('/').next().unwrap_or_default();
        if host.is_empty() {
            return Err(ConfigError::new(at(), format!("{n:?} names no host")));
        }
        if n.starts_with("rediss://") != tls {
            return Err(ConfigError::new(
                at(),
                "mixes redis:// and rediss://: every node of a cluster is reached the same way",
            ));
        }
    }
    Ok(nodes)
}

fn validate_breaker(b: RawBreaker, max_timeout: Duration) -> Result<BreakerConfig, ConfigError> {
    let failure_threshold = b.failure_threshold.unwrap_or(3);
    let failure_threshold = u32::try_from(failure_threshold)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| ConfigError::new("breaker.failure_threshold", "must be at least 1"))?;
    let open_for = positive_duration(
        "breaker.open_for",
        b.open_for.as_deref(),
        Duration::from_secs(60),
    )?;
    // A probe outlives its request timeout by a margin, so a slow-but-answered probe is judged by
    // its real outcome and the release only covers outcomes that never arrive.
    let default_probe = max_timeout + Duration::from_secs(5);
    let probe_timeout = positive_duration(
        "breaker.probe_timeout",
        b.probe_timeout.as_deref(),
        default_probe,
    )?;
    if probe_timeout < max_timeout {
        return Err(ConfigError::new(
            "breaker.probe_timeout",
            format!(
                "must be at least the longest route timeout ({}), or probes are abandoned \
                 while they are still running",
                crate::time::format_duration(max_timeout)
            ),
        ));
    }
    let failure_statuses = match b.failure_statuses {
        None => StatusSet::server_errors(),
        Some(list) => statuses("breaker.failure_statuses", &list)?,
    };
    Ok(BreakerConfig {
        failure_threshold,
        open_for,
        probe_timeout,
        failure_statuses,
    })
}

fn validate_target(path: &str, raw: &RawTarget) -> Result<TargetConfig, ConfigError> {
    let (url, weight) = match raw {
        RawTarget::Url(u) => (u.as_str(), 1),
        RawTarget::Weighted(w) => {
            let weight = w.weight.unwrap_or(1);
            let weight = u32::try_from(weight)
                .ok()
                .filter(|w| (1..=1000).contains(w))
                .ok_or_else(|| {
                    ConfigError::new(format!("{path}.weight"), "must be between 1 and 1000")
                })?;
            (w.url.as_str(), weight)
        }
    };
    let mut target = validate_target_url(path, url)?;
    target.weight = weight;
    Ok(target)
}

fn validate_target_url(path: &str, raw: &str) -> Result<TargetConfig, ConfigError> {
    let bad = || ConfigError::new(path, format!("{raw:?} is not an http URL"));
    let uri: http::Uri = raw.parse().map_err(|_| bad())?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad()),
    };
    let authority = uri.authority().cloned().ok_or_else(bad)?;
    if authority.host().is_empty() {
        return Err(bad());
    }
    if authority.as_str().contains('@') {
        return Err(ConfigError::new(
            path,
            format!("{raw:?}: credentials in URLs are refused"),
        ));
    }
    if uri.query().is_some() {
        return Err(ConfigError::new(
            path,
            format!("{raw:?}: a target URL takes no query"),
        ));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://{authority}{base_path}");
    Ok(TargetConfig {
        url,
        authority,
        base_path,
        tls,
        weight: 1,
    })
}

fn validate_route(
    i: usize,
    r: RawRoute,
    server: &ServerConfig,
    have_auth: bool,
    providers: &BTreeMap<String, AuthConfig>,
    shared_health: Option<&RawHealthCheck>,
) -> Result<RouteConfig, ConfigError> {
    let p = |key: &str| format!("routes[{i}].{key}");
    let (auth, auth_provider) = match r.auth {
        RawRouteAuth::On(on) => (on, None),
        RawRouteAuth::Provider(name) => {
            if !providers.contains_key(&name) {
                let known: Vec<&str> = providers.keys().map(String::as_str).collect();
                return Err(ConfigError::new(
                    p("auth"),
                    format!(
                        "{name:?} is not an [auth_providers.NAME] section (there are: {known:?})"
                    ),
                ));
            }
            (true, Some(name))
        }
    };
    if !r.path.starts_with('/') {
        return Err(ConfigError::new(
            p("path"),
            format!("{:?} must start with \"/\"", r.path),
        ));
    }
    if r.path.contains(['?', '#']) {
        return Err(ConfigError::new(
            p("path"),
            format!("{:?} must not hold a query", r.path),
        ));
    }
    let normal = path::normalize(&r.path)
        .map_err(|e| ConfigError::new(p("path"), format!("{:?}: {e}", r.path)))?;
    let mut norm = normal.into_owned();
    while norm.len() > 1 && norm.ends_with('/') {
        norm.pop();
    }
    let host = match r.host {
        None => None,
        Some(h) => {
            let h = h.trim().to_ascii_lowercase();
            let ok_chars = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            };
            if let Some(rest) = h.strip_prefix("*.") {
                if !ok_chars(rest) {
                    return Err(ConfigError::new(
                        p("host"),
                        format!("{h:?} is not a host name"),
                    ));
                }
                Some(HostPattern::Suffix(rest.to_owned()))
            } else {
                if !ok_chars(&h) {
                    return Err(ConfigError::new(
                        p("host"),
                        format!("{h:?} is not a host name (no port; \"*.\" for a wildcard)"),
                    ));
                }
                Some(HostPattern::Exact(h))
            }
        }
    };
    let methods = match r.methods {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(ConfigError::new(
                p("methods"),
                "must list at least one method",
            ));
        }
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (j, m) in list.iter().enumerate() {
                let upper = m.to_ascii_uppercase();
                let method = Method::from_bytes(upper.as_bytes()).map_err(|_| {
                    ConfigError::new(
                        format!("routes[{i}].methods[{j}]"),
                        format!("{m:?} is not a method"),
                    )
                })?;
                if !out.contains(&method) {
                    out.push(method);
                }
            }
            Some(out)
        }
    };
    if r.targets.is_empty() {
        return Err(ConfigError::new(
            p("targets"),
            "must list at least one target",
        ));
    }
    let mut targets: Vec<TargetConfig> = Vec::with_capacity(r.targets.len());
    for (j, t) in r.targets.iter().enumerate() {
        let tp = format!("routes[{i}].targets[{j}]");
        let target = validate_target(&tp, t)?;
        if let Some(k) = targets.iter().position(|x| x.url == target.url) {
            return Err(ConfigError::new(
                tp,
                format!("{:?} repeats targets[{k}]", target.url),
            ));
        }
        targets.push(target);
    }
    if auth && auth_provider.is_none() && !have_auth {
        return Err(ConfigError::new(
            p("auth"),
            "is true but there is no [auth] section",
        ));
    }
    let rate_limit = match r.rate_limit {
        None => None,
        Some(l) => {
            let lp = |key: &str| format!("routes[{i}].rate_limit.{key}");
            let max = u64::try_from(l.max)
                .ok()
                .filter(|m| *m >= 1)
                .ok_or_else(|| ConfigError::new(lp("max"), "must be at least 1"))?;
            let window = positive_duration(&lp("window"), Some(&l.window), Duration::ZERO)?;
            if window < Duration::from_millis(1) {
                return Err(ConfigError::new(lp("window"), "must be at least 1ms"));
            }
            if window > Duration::from_secs(366 * 86_400) {
                return Err(ConfigError::new(lp("window"), "must be at most a year"));
            }
            let key = key_kind(&lp("key"), l.key.as_deref().unwrap_or("ip"), auth)?;
            let algorithm = match l.algorithm.as_deref().unwrap_or("fixed_window") {
                "fixed_window" => LimitAlgorithm::FixedWindow,
                "gcra" => LimitAlgorithm::Gcra,
                other => {
                    return Err(ConfigError::new(
                        lp("algorithm"),
                        format!("{other:?} is not an algorithm (\"fixed_window\" or \"gcra\")"),
                    ));
                }
            };
            Some(LimitConfig {
                max,
                window,
                key,
                algorithm,
            })
        }
    };
    let timeout = positive_duration(&p("timeout"), r.timeout.as_deref(), server.request_timeout)?;
    let max_body_bytes = match &r.max_body_size {
        Some(s) => Some(size(&p("max_body_size"), s)?),
        None => server.max_body_bytes,
    };
    let name = match r.name {
        Some(n) if n.trim().is_empty() => {
            return Err(ConfigError::new(p("name"), "must not be empty"));
        }
        Some(n) => n,
        None => norm.clone(),
    };
    let balance = match r.balance.as_deref().unwrap_or("round_robin") {
        "round_robin" => Balance::RoundRobin,
        "p2c" => Balance::P2c,
        "hash" => Balance::Hash,
        other => {
            return Err(ConfigError::new(
                p("balance"),
                format!("{other:?} is not \"round_robin\", \"p2c\" or \"hash\""),
            ));
        }
    };
    let hash_on = match (balance, r.hash_on.as_deref()) {
        (Balance::Hash, on) => Some(key_kind(&p("hash_on"), on.unwrap_or("ip"), auth)?),
        (_, None) => None,
        (_, Some(_)) => {
            return Err(ConfigError::new(
                p("hash_on"),
                "is only read with balance = \"hash\"",
            ));
        }
    };
    let retries = count(&p("retries"), r.retries, 0, 0)?;
    if retries > 10 {
        return Err(ConfigError::new(p("retries"), "must be at most 10"));
    }
    let retry_on = match &r.retry_on {
        None => {
            let mut s = StatusSet::EMPTY;
            for c in [502, 503, 504] {
                s.insert(c);
            }
            s
        }
        Some(list) => statuses(&p("retry_on"), list)?,
    };
    let try_timeout = positive_duration(&p("try_timeout"), r.try_timeout.as_deref(), timeout)?;
    if try_timeout > timeout {
        return Err(ConfigError::new(
            p("try_timeout"),
            "must not be longer than the route's timeout (the deadline of all tries)",
        ));
    }
    let retry = RetryConfig {
        retries: retries as u32,
        on: retry_on,
        idempotency_key: r.retry_idempotency_key.unwrap_or(false),
        max_body: match &r.retry_max_body {
            Some(s) => size(&p("retry_max_body"), s)?,
            None => 64 << 10,
        },
        try_timeout,
    };
    let health_check = match &r.health_check {
        None | Some(RawRouteHealth::On(false)) => None,
        Some(RawRouteHealth::On(true)) => Some(validate_health_check(
            &p("health_check"),
            None,
            shared_health,
        )?),
        Some(RawRouteHealth::Table(own)) => Some(validate_health_check(
            &p("health_check"),
            Some(own),
            shared_health,
        )?),
    };
    Ok(RouteConfig {
        name,
        path: norm,
        host,
        methods,
        targets,
        auth,
        auth_provider,
        rate_limit,
        strip_prefix: r.strip_prefix,
        timeout,
        max_body_bytes,
        balance,
        hash_on,
        retry,
        health_check,
    })
}

/// A request key: `"ip"`, `"user"` (the route needs `auth = true`) or `"header:<name>"`.
fn key_kind(path: &str, raw: &str, auth: bool) -> Result<LimitKeyKind, ConfigError> {
    match raw {
        "ip" => Ok(LimitKeyKind::Ip),
        "user" if !auth => Err(ConfigError::new(
            path,
            "\"user\" needs auth = true on the route (there is no user otherwise)",
        )),
        "user" => Ok(LimitKeyKind::User),
        other => match other.strip_prefix("header:") {
            Some(name) => HeaderName::from_bytes(name.trim().as_bytes())
                .map(LimitKeyKind::Header)
                .map_err(|_| ConfigError::new(path, format!("{name:?} is not a header name"))),
            None => Err(ConfigError::new(
                path,
                format!("{other:?} is not a key (\"ip\", \"user\" or \"header:<name>\")"),
            )),
        },
    }
}

/// Two routes with the same path and host whose methods overlap could never both be reached.
fn check_route_overlaps(routes: &[RouteConfig]) -> Result<(), ConfigError> {
    for (i, a) in routes.iter().enumerate() {
        for (j, b) in routes.iter().enumerate().skip(i + 1) {
            if a.name == b.name {
                return Err(ConfigError::new(
                    format!("routes[{j}].name"),
                    format!("{:?} is already the name of routes[{i}]", b.name),
                ));
            }
            let overlap = match (&a.methods, &b.methods) {
                (Some(x), Some(y)) => x.iter().any(|m| y.contains(m)),
                _ => true,
            };
            if a.path == b.path && a.host == b.host && overlap {
                return Err(ConfigError::new(
                    format!("routes[{j}]"),
                    format!(
                        "path {:?} with the same host and methods as routes[{i}] is unreachable",
                        b.path
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
        [server]
        listen = "0.0.0.0:8000"
        [auth]
        algorithms = ["HS256"]
        secret = "${JWT_SECRET}"
        user_claim = "userId"
        [rate_limit]
        store = "memory"
        [breaker]
        failure_threshold = 3
        open_for = "60s"
        [[routes]]
        path = "/users"
        targets = ["http://127.0.0.1:3001", "http://127.0.0.1:3002", "http://127.0.0.1:3003"]
        auth = true
        rate_limit = { max = 10, window = "60s" }
        [[routes]]
        path = "/product"
        targets = ["http://127.0.0.1:3004"]
    "#;

    fn env() -> MapEnv {
        MapEnv::default().with("JWT_SECRET", "s3cret")
    }

    fn err(text: &str) -> String {
        Config::from_toml(text, &env()).unwrap_err().to_string()
    }

    #[test]
    fn seed_config_parses() {
        let c = Config::from_toml(SEED, &env()).unwrap();
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].targets[1].url, "http://127.0.0.1:3002");
        assert_eq!(
            c.auth.as_ref().unwrap().secret,
            Some(Secret("s3cret".into()))
        );
        let rl = c.routes[0].rate_limit.as_ref().unwrap();
        assert_eq!((rl.max, rl.window), (10, Duration::from_secs(60)));
        assert_eq!(rl.algorithm, LimitAlgorithm::FixedWindow);
        assert_eq!(c.breaker.open_for, Duration::from_secs(60));
        assert!(c.breaker.failure_statuses.contains(503));
        assert!(!c.breaker.failure_statuses.contains(404));
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "secrets never show in Debug"
        );
    }

    #[test]
    fn h2_limits_have_defaults_and_bounds_that_name_the_key() {
        let c = Config::from_toml(SEED, &env()).unwrap();
        assert_eq!(
            c.server.h2,
            H2Limits {
                max_concurrent_streams: 100,
                max_header_list_bytes: 32 << 10,
                max_pending_resets: 20,
                max_error_resets: 1024,
                max_send_buffer_bytes: 64 << 10,
            }
        );
        // The header list follows max_header_size unless set.
        let head = SEED.replace(
            "listen = \"0.0.0.0:8000\"",
            "listen = \"0.0.0.0:8000\"\nmax_header_size = \"8KiB\"",
        );
        let c = Config::from_toml(&head, &env()).unwrap();
        assert_eq!(c.server.h2.max_header_list_bytes, 8 << 10);
        let set = |line: &str| {
            SEED.replace(
                "listen = \"0.0.0.0:8000\"",
                &format!("listen = \"0.0.0.0:8000\"\n{line}"),
            )
        };
        let c = Config::from_toml(
            &set("h2_max_concurrent_streams = 7\nh2_max_header_list_size = \"4KiB\"\nh2_max_pending_resets = 3\nh2_max_error_resets = 9\nh2_max_send_buffer_size = \"1MiB\""),
            &env(),
        )
        .unwrap();
        assert_eq!(
            c.server.h2,
            H2Limits {
                max_concurrent_streams: 7,
                max_header_list_bytes: 4 << 10,
                max_pending_resets: 3,
                max_error_resets: 9,
                max_send_buffer_bytes: 1 << 20,
            }
        );
        for (line, msg) in [
            (
                "h2_max_concurrent_streams = 0",
                "server.h2_max_concurrent_streams: must be between 1 and 10000, not 0",
            ),
            (
                "h2_max_pending_resets = -1",
                "server.h2_max_pending_resets: must be between 1 and 10000, not -1",
            ),
            (
                "h2_max_error_resets = 2000000",
                "server.h2_max_error_resets: must be between 1 and 1000000, not 2000000",
            ),
            (
                "h2_max_header_list_size = 100",
                "server.h2_max_header_list_size: must be between 1KiB and 1MiB",
            ),
            (
                "h2_max_send_buffer_size = \"1GiB\"",
                "server.h2_max_send_buffer_size: must be between 16KiB and 16MiB",
            ),
            (
                "h2_max_header_list_size = \"4 parsecs\"",
                "server.h2_max_header_list_size: \"4 parsecs\": unknown unit \"parsecs\" (use B, KiB, MiB, GiB, KB, MB, GB)",
            ),
        ] {
            assert_eq!(err(&set(line)), msg, "{line}");
        }
    }

    #[test]
    fn errors_name_the_key_path() {
        let bad_target = SEED.replace("http://127.0.0.1:3004", "htp://x");
        assert_eq!(
            err(&bad_target),
            r#"routes[1].targets[0]: "htp://x" is not an http URL"#
        );
        let bad_window = SEED.replace(r#"window = "60s""#, r#"window = "60""#);
        assert!(err(&bad_window).starts_with("routes[0].rate_limit.window: \"60\" has no unit"));
        let typo = SEED.replace("failure_threshold", "failure_treshold");
        assert!(
            err(&typo).starts_with("breaker.failure_treshold: unknown field `failure_treshold`"),
            "{}",
            err(&typo)
        );
        let wrong_type = SEED.replace("max = 10", "max = \"ten\"");
        assert_eq!(
            err(&wrong_type),
            "routes[0].rate_limit.max: invalid type: string \"ten\", expected a whole number"
        );
        let spaced = SEED.replace(r#"open_for = "60s""#, r#"open_for = "10 sec""#);
        assert_eq!(
            err(&spaced),
            r#"breaker.open_for: "10 sec": unknown unit "sec"; units are ns, us, ms, s, m, h, d"#
        );
        let spaced = SEED.replace(r#"open_for = "60s""#, r#"open_for = "10 s""#);
        assert_eq!(
            err(&spaced),
            r#"breaker.open_for: "10 s": no space between a number and its unit; write "10s""#
        );
        let number = SEED.replace(r#"open_for = "60s""#, "open_for = 10");
        assert_eq!(
            err(&number),
            r#"breaker.open_for: a duration is a string with a unit: write "10s" (or "10ms")"#
        );
        let missing = Config::from_toml(SEED, &MapEnv::default()).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "auth.secret: environment variable JWT_SECRET is not set"
        );
        // A syntax error keeps toml's display: the line, and a caret under the spot.
        let syntax = err("[[routes]]\npath = \"/\"\ntargets = [\"http://a:1\"\n");
        assert!(
            syntax.starts_with("config: TOML parse error at line 3"),
            "{syntax}"
        );
        assert!(
            syntax.contains("\n3 | targets = [\"http://a:1\"\n"),
            "{syntax}"
        );
        assert!(syntax.contains('^'), "{syntax}");
    }

    #[test]
    fn semantic_errors() {
        let no_auth = SEED.replace("[auth]", "[unused]");
        assert!(err(&no_auth).contains("unknown field `unused`"));
        let cut = SEED.split("[auth]").next().unwrap().to_owned()
            + SEED.split("user_claim = \"userId\"").nth(1).unwrap();
        assert_eq!(
            err(&cut),
            "routes[0].auth: is true but there is no [auth] section"
        );
        let none = SEED.replace(r#"["HS256"]"#, r#"["none"]"#);
        assert!(err(&none).starts_with("auth.algorithms[0]: \"none\" is never allowed"));
        let rs = SEED.replace(r#"["HS256"]"#, r#"["RS256"]"#);
        assert!(err(&rs).starts_with("auth.public_key_pem: "));
        let user_key = SEED.replace(
            "path = \"/product\"",
            "path = \"/product\"\nrate_limit = { max = 1, window = \"1s\", key = \"user\" }",
        );
        assert!(err(&user_key).starts_with("routes[1].rate_limit.key: \"user\" needs auth"));
        let dup = SEED.replace("/product", "/users");
        assert!(
            err(&dup).contains("is already the name of routes[0]"),
            "{}",
            err(&dup)
        );
        let zero = SEED.replace("failure_threshold = 3", "failure_threshold = 0");
        assert_eq!(err(&zero), "breaker.failure_threshold: must be at least 1");
        let probe = SEED.replace(
            "open_for = \"60s\"",
            "open_for = \"60s\"\nprobe_timeout = \"1s\"",
        );
        assert!(err(&probe).starts_with("breaker.probe_timeout: must be at least"));
        let https = SEED.replace("http://127.0.0.1:3004", "https://x");
        let c = Config::from_toml(&https, &env()).unwrap();
        assert!(c.routes[1].targets[0].tls);
        assert_eq!(c.routes[1].targets[0].url, "https://x");
        let half = SEED.replace(
            "[breaker]",
            "[upstream_tls]\nclient_cert = \"c.pem\"\n[breaker]",
        );
        assert_eq!(
            err(&half),
            "upstream_tls.client_key: client_cert and client_key go together"
        );
        let repeat = SEED.replace("http://127.0.0.1:3002", "http://127.0.0.1:3001/");
        assert!(
            err(&repeat).starts_with("routes[0].targets[1]: "),
            "{}",
            err(&repeat)
        );
        let algo = SEED.replace("max = 10,", "max = 10, algorithm = \"leaky\",");
        assert!(err(&algo).starts_with("routes[0].rate_limit.algorithm: "));
        let none_routes = "[server]\nlisten = \"127.0.0.1:1\"\n";
        assert!(err(none_routes).starts_with("routes: at least one"));
    }

    #[test]
    fn substitution_and_overrides() {
        let e = MapEnv::default().with("A", "x");
        assert_eq!(expand("a${A}b$${A}$", &e).unwrap(), "axb${A}$");
        assert!(expand("${A", &e).unwrap_err().contains("unclosed"));
        assert!(
            expand("${1A}", &e)
                .unwrap_err()
                .contains("not an environment variable name")
        );
        let mut c = Config::from_toml(SEED, &env()).unwrap();
        c.apply_overrides(Some("9000"), Some("redis://10.0.0.1:6379"), Some("other"))
            .unwrap();
        assert_eq!(c.server.listen.port(), 9000);
        assert_eq!(c.rate_limit.store, StoreKind::Redis);
        assert_eq!(c.auth.unwrap().secret, Some(Secret("other".into())));
        let mut c = Config::from_toml(SEED, &env()).unwrap();
        assert_eq!(
            c.apply_overrides(Some("http"), None, None)
                .unwrap_err()
                .to_string(),
            "PORT: \"http\" is not a port number"
        );
    }

    #[test]
    fn auth_providers_keys_and_jwks() {
        let text = r#"
            [auth]
            secret = "internal"
            [auth_providers.idp]
            algorithms = ["RS256", "ES256"]
            jwks_url = "https://idp.example.com/.well-known/jwks.json"
            jwks_max_stale = "2h"
            issuer = "https://idp.example.com/"
            [auth_providers.rotating]
            keys = [{ kid = "2026-01", secret = "a" }, { kid = "2026-02", secret = "b", alg = "HS256" }]
            [[routes]]
            path = "/internal"
            targets = ["http://127.0.0.1:1"]
            auth = true
            [[routes]]
            path = "/api"
            targets = ["http://127.0.0.1:2"]
            auth = "idp"
            [[routes]]
            path = "/partners"
            targets = ["http://127.0.0.1:3"]
            auth = "rotating"
        "#;
        let c = Config::from_toml(text, &env()).unwrap();
        assert_eq!(c.routes[1].auth_provider.as_deref(), Some("idp"));
        let j = c.auth_providers["idp"].jwks.as_ref().unwrap();
        assert_eq!(j.max_stale, Duration::from_secs(7200));
        assert_eq!(j.min_refresh, crate::auth::DEFAULT_MIN_REFRESH);
        assert!(c.warnings().is_empty());
        let p = crate::Policy::new(c).unwrap();
        assert_eq!(p.providers().len(), 3);
        assert_eq!(
            p.route_provider(crate::RouteId(2)),
            Some(crate::ProviderId(2))
        );

        let unknown = text.replace("auth = \"rotating\"", "auth = \"nobody\"");
        assert!(
            err(&unknown).starts_with("routes[2].auth: \"nobody\" is not an [auth_providers.NAME]")
        );
        let http = text.replace("https://idp", "http://idp");
        assert!(
            Config::from_toml(&http, &env()).unwrap().warnings()[0]
                .starts_with("auth_providers.idp.jwks_url: ")
        );
        let ftp = text.replace("https://idp", "ftp://idp");
        assert!(err(&ftp).starts_with("auth_providers.idp.jwks_url: "));
        let dup = text.replace("kid = \"2026-02\"", "kid = \"2026-01\"");
        assert!(err(&dup).starts_with("auth_providers.rotating.keys[1].kid: "));
        let bad_alg = text.replace("alg = \"HS256\"", "alg = \"RS256\"");
        assert!(err(&bad_alg).starts_with("auth_providers.rotating.keys[1].alg: RS256 is not in"));
        let stray = text.replace(
            "secret = \"internal\"",
            "secret = \"internal\"\njwks_timeout = \"1s\"",
        );
        assert_eq!(
            err(&stray),
            "auth.jwks_timeout: is set but there is no jwks_url"
        );
        let both = text.replace("secret = \"b\",", "secret = \"b\", public_key_pem = \"x\",");
        assert!(err(&both).starts_with("auth_providers.rotating.keys[1]: set exactly one"));
    }

    #[test]
    fn sizes_hosts_and_statuses() {
        assert_eq!(size("x", &RawSize::Text("10MiB".into())), Ok(10 << 20));
        assert_eq!(size("x", &RawSize::Bytes(7)), Ok(7));
        assert!(size("x", &RawSize::Text("10 parsecs".into())).is_err());
        assert!(HostPattern::Suffix("example.com".into()).matches("api.Example.com"));
        assert!(!HostPattern::Suffix("example.com".into()).matches("example.com"));
        assert!(!HostPattern::Suffix("example.com".into()).matches("badexample.com"));
        let text = SEED.replace(
            "open_for = \"60s\"",
            "open_for = \"60s\"\nfailure_statuses = [429, \"5xx\"]",
        );
        let c = Config::from_toml(&text, &env()).unwrap();
        assert!(
            c.breaker.failure_statuses.contains(429) && c.breaker.failure_statuses.contains(599)
        );
        assert!(!c.breaker.failure_statuses.contains(404));
    }

    /// `[rate_limit]`'s Redis keys: cluster mode, Sentinel URLs, a private CA.
    #[test]
    fn redis_topologies_and_tls_ca() {
        struct Files;
        impl ConfigEnv for Files {
            fn var(&self, name: &str) -> Option<String> {
                (name == "JWT_SECRET").then(|| "s3cret".to_owned())
            }
            fn read_file(&self, path: &str) -> Result<String, String> {
                match path {
                    "ca.pem" => {
                        Ok("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into())
                    }
                    "key.pem" => Ok("-----BEGIN PRIVATE KEY-----\n".into()),
                    _ => Err(format!("cannot read {path:?}: no such file")),
                }
            }
        }
        let with = |lines: &str| SEED.replace("store = \"memory\"", lines);
        let parse = |lines: &str| Config::from_toml(&with(lines), &Files).map(|c| c.rate_limit);
        let err = |lines: &str| parse(lines).unwrap_err().to_string();

        let c = parse("store = \"redis\"\nredis_cluster_nodes = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]").unwrap();
        assert_eq!(
            c.redis_topology(),
            RedisTopology::Cluster(vec![
                "redis://10.0.0.1:7000".into(),
                "redis://10.0.0.2:7000".into()
            ])
        );
        assert_eq!(
            err("redis_cluster_nodes = [\"redis://a:1\"]"),
            "rate_limit.redis_cluster_nodes: cluster nodes are set but store is \"memory\"; set store = \"redis\""
        );
        assert_eq!(
            err(
                "store = \"redis\"\nredis_url = \"redis://a:1\"\nredis_cluster_nodes = [\"redis://a:1\"]"
            ),
            "rate_limit.redis_cluster_nodes: set redis_url (one Redis) or redis_cluster_nodes (Redis Cluster), not both"
        );
        assert_eq!(
            err("store = \"redis\"\nredis_cluster_nodes = [\"redis://a:1\", \"unix:///s\"]"),
            "rate_limit.redis_cluster_nodes[1]: \"unix:///s\" is not a redis:// or rediss:// URL"
        );
        assert_eq!(
            err("store = \"redis\"\nredis_cluster_nodes = [\"rediss://a:1\", \"redis://b:1\"]"),
            "rate_limit.redis_cluster_nodes[1]: mixes redis:// and rediss://: every node of a cluster is reached the same way"
        );
        assert_eq!(
            err("store = \"redis\"\nredis_cluster_nodes = [\"redis://\"]"),
            "rate_limit.redis_cluster_nodes[0]: \"redis://\" names no host"
        );
        // REDIS_URL names one Redis: it replaces the cluster.
        let mut full = Config::from_toml(
            &with("store = \"redis\"\nredis_cluster_nodes = [\"redis://a:1\"]"),
            &Files,
        )
        .unwrap();
        full.apply_overrides(None, Some("redis://b:2"), None)
            .unwrap();
        assert_eq!(
            full.rate_limit.redis_topology(),
            RedisTopology::Node("redis://b:2".into())
        );

        // Sentinel: hosts (default port 26379), the primary's name, db, credentials.
        let c = parse("store = \"redis\"\nredis_url = \"redis+sentinel://u:p%40ss@s1:26380,s2,[::1]:5/mymaster/2\"").unwrap();
        let RedisTopology::Sentinel(s) = c.redis_topology() else {
            panic!("{c:?}")
        };
        assert_eq!(s.sentinels, ["s1:26380", "s2:26379", "[::1]:5"]);
        assert_eq!((s.primary.as_str(), s.db), ("mymaster", 2));
        assert_eq!(
            (s.username.as_deref(), s.password.as_deref()),
            (Some("u"), Some("p@ss"))
        );
        assert!(
            !format!("{s:?}").contains("p@ss"),
            "Debug never shows the password"
        );
        for (url, why) in [
            ("redis+sentinel://s1:26379", "names no primary"),
            ("redis+sentinel://s1:26379/", "names no primary"),
            ("redis+sentinel://s1:x/m", "\"x\" is not a port number"),
            ("redis+sentinel://s1,,s2/m", "empty host"),
            ("redis+sentinel://s1/m/x", "db \"x\" is not a number"),
            ("redis+sentinel://::1/m", "IPv6 address in brackets"),
        ] {
            let e = err(&format!("store = \"redis\"\nredis_url = \"{url}\""));
            assert!(
                e.starts_with("rate_limit.redis_url: ") && e.contains(why),
                "{url}: {e}"
            );
        }

        // A private CA: read and checked at load; only with a rediss:// URL.
        let c =
            parse("store = \"redis\"\nredis_url = \"rediss://r:6380\"\nredis_tls_ca = \"ca.pem\"")
                .unwrap();
        assert_eq!(
            c.redis_tls_ca.as_ref().map(|ca| ca.path.as_str()),
            Some("ca.pem")
        );
        assert!(parse("store = \"redis\"\nredis_cluster_nodes = [\"rediss://a:1\"]\nredis_tls_ca = \"ca.pem\"").is_ok());
        assert_eq!(
            err("store = \"redis\"\nredis_tls_ca = \"ca.pem\""),
            "rate_limit.redis_tls_ca: is set but no rediss:// URL uses it (redis_url or redis_cluster_nodes)"
        );
        assert_eq!(
            err("redis_url = \"rediss://r:1\"\nredis_tls_ca = \"nope.pem\""),
            "rate_limit.redis_tls_ca: cannot read \"nope.pem\": no such file"
        );
        assert_eq!(
            err("redis_url = \"rediss://r:1\"\nredis_tls_ca = \"key.pem\""),
            "rate_limit.redis_tls_ca: \"key.pem\" holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        );
    }

    /// `balance = "hash"` and `hash_on`: the key defaults to the client IP; a bad key, a key
    /// without the hash, and `"user"` without auth are refused naming the key.
    #[test]
    fn hash_on_is_checked() {
        let route = |extra: &str| {
            format!(
                "[[routes]]\npath = \"/\"\ntargets = [\"http://a:1\", \"http://b:1\"]\n{extra}\n"
            )
        };
        let c = Config::from_toml(&route("balance = \"hash\""), &env()).unwrap();
        assert_eq!(c.routes[0].balance, Balance::Hash);
        assert_eq!(c.routes[0].hash_on, Some(LimitKeyKind::Ip));
        let c = Config::from_toml(
            &route("balance = \"hash\"\nhash_on = \"header:X-Session\""),
            &env(),
        )
        .unwrap();
        assert_eq!(
            c.routes[0].hash_on,
            Some(LimitKeyKind::Header(HeaderName::from_static("x-session")))
        );
        assert_eq!(
            err(&route("hash_on = \"ip\"")),
            "routes[0].hash_on: is only read with balance = \"hash\""
        );
        assert_eq!(
            err(&route("balance = \"hash\"\nhash_on = \"cookie\"")),
            "routes[0].hash_on: \"cookie\" is not a key (\"ip\", \"user\" or \"header:<name>\")"
        );
        assert_eq!(
            err(&route("balance = \"hash\"\nhash_on = \"user\"")),
            "routes[0].hash_on: \"user\" needs auth = true on the route (there is no user otherwise)"
        );
        assert_eq!(
            err(&route("balance = \"sticky\"")),
            "routes[0].balance: \"sticky\" is not \"round_robin\", \"p2c\" or \"hash\""
        );
    }
}
