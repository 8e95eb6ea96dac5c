//! The request pipeline: the one place that decides what happens to a request. The gateway and
//! the simulator both drive it; neither re-implements a decision.
//!
//! ```text
//!   on_request(view, now) ──▶ Step::Respond(reply)                 answer now (400/401/404/405)
//!                        ├──▶ Step::Count(pending) ─┐               a rate-limit counter is needed
//!                        └──▶ Step::Admit(ticket)   │
//!                                   ▲               ▼
//!                                   │   driver applies pending.request() on its store
//!                                   │   (memory: at once; Redis: awaits one round trip)
//!                                   └── on_counter(pending, reply, now) ──▶ Err(reply) 429/503
//!   forward(ticket, &mut balancer, now) ──▶ Ok(Forward)  send to forward.target()
//!                                     └──▶ Err(reply)    503: no target will take it
//!   on_upstream_result(&mut balancer, forward.attempt, outcome, now)   exactly once per Forward
//! ```
//!
//! [`Policy`] is immutable (`&self`) and can be shared by every worker thread; the mutable
//! state is the per-route [`Balancer`] and the counter store, which the driver owns and locks
//! as it sees fit. [`Engine`] is a driver for synchronous stores (memory, simulator).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{ALLOW, CONTENT_LENGTH, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde_json::json;

use crate::auth::{AuthFailure, KeySet, Verifier};
use crate::balancer::{Attempt, Balancer, NoTarget, TargetStats, Unavailable, UpstreamOutcome};
use crate::config::{
    Config, ConfigError, LimitKeyKind, OnStoreError, RouteConfig, UnderscoreHeaders,
};
use crate::path::{lenient_view, normalize, split_query};
use crate::ratelimit::{
    ClientKey, CounterKey, CounterReply, CounterRequest, CounterStore, Limit, RateDecision,
    StoreError, decide,
};
use crate::router::{RouteId, RouteMatch, Router, host_without_port};
use crate::time::{Now, ceil_secs_min1, format_duration};
use crate::token_cache::TokenCache;

pub const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// Set on responses admitted without a rate-limit check because the store was unavailable.
pub const AEGIS_RATELIMIT: HeaderName = HeaderName::from_static("x-aegis-ratelimit");

/// A borrowed view of a request: all the pipeline reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// From the URI authority or the `Host` header, port included or not.
    pub host: Option<&'a str>,
    /// As received: `/users/42?x=1`.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    /// The socket peer.
    pub peer: IpAddr,
}

/// Why the pipeline answered a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    BadRequest,
    UriTooLong,
    HeadersTooLarge,
    BodyTooLarge,
    NotFound,
    MethodNotAllowed,
    Unauthorized(AuthFailure),
    RateLimited,
    StoreUnavailable,
    NoHealthyTarget,
    /// No connection to the target, or it broke before a response head (502).
    UpstreamError,
    /// No response head within the route's timeout (504).
    UpstreamTimeout,
}

impl Reason {
    /// A stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::BadRequest => "bad_request",
            Reason::UriTooLong => "uri_too_long",
            Reason::HeadersTooLarge => "headers_too_large",
            Reason::BodyTooLarge => "body_too_large",
            Reason::NotFound => "no_route",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::Unauthorized(_) => "unauthorized",
            Reason::RateLimited => "rate_limited",
            Reason::StoreUnavailable => "store_unavailable",
            Reason::NoHealthyTarget => "no_healthy_target",
            Reason::UpstreamError => "upstream_error",
            Reason::UpstreamTimeout => "upstream_timeout",
        }
    }
}

/// An answer the gateway gives without asking an upstream: status, headers and a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: String,
    pub reason: Reason,
    pub route: Option<RouteId>,
}

impl Reply {
    fn new(
        status: StatusCode,
        reason: Reason,
        route: Option<RouteId>,
        body: serde_json::Value,
    ) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            reason,
            route,
        }
    }

    fn header(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// Rate-limit information to put on the response.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RateHeaders {
    None,
    Decision(RateDecision, HeaderValue),
    /// The store failed and `on_store_error = "allow"` let the request through.
    Degraded,
}

impl RateHeaders {
    fn apply(&self, headers: &mut HeaderMap) {
        match self {
            RateHeaders::None => {}
            RateHeaders::Decision(d, policy) => {
                headers.insert(RATELIMIT_LIMIT, HeaderValue::from(d.limit));
                headers.insert(RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
                headers.insert(
                    RATELIMIT_RESET,
                    HeaderValue::from(d.reset.as_millis().div_ceil(1000) as u64),
                );
                headers.insert(RATELIMIT_POLICY, policy.clone());
            }
            RateHeaders::Degraded => {
                headers.insert(AEGIS_RATELIMIT, HeaderValue::from_static("unavailable"));
            }
        }
    }
}

/// A request that passed routing, auth and rate limiting; [`Policy::forward`] picks its target.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    route: RouteId,
    user: Option<HeaderValue>,
    rewrite: Option<String>,
    rate: RateHeaders,
    /// The request's key for `balance = "hash"` (0 otherwise).
    affinity: u64,
}

impl Ticket {
    pub fn route(&self) -> RouteId {
        self.route
    }
}

/// A request's key (see `Policy::request_key`), borrowed from the request.
enum RequestKey<'a> {
    Ip(IpAddr),
    User(&'a str),
    Header(&'a str),
}

/// A request waiting for its rate-limit counter. Apply [`Pending::request`] on the store, then
/// hand the reply to [`Policy::on_counter`].
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    request: CounterRequest,
    ticket: Ticket,
}

impl Pending {
    pub fn request(&self) -> &CounterRequest {
        &self.request
    }

    /// The route whose limit is being counted.
    pub fn route(&self) -> RouteId {
        self.ticket.route
    }
}

/// What to do next with a request.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Respond(Reply),
    Count(Pending),
    Admit(Ticket),
}

/// What the shell knows of a try that failed, for [`Policy::retry`].
#[derive(Debug, Clone, Copy)]
pub struct FailedTry<'a> {
    pub outcome: UpstreamOutcome,
    /// Whether any byte of the request was written to the target.
    pub sent: bool,
    pub method: &'a Method,
    /// The request carries an `Idempotency-Key` header.
    pub idempotency_key: bool,
    /// The request has no body, or all of it was kept to be sent again.
    pub body_replayable: bool,
}

/// Send the request to a target. Report the outcome once with [`Policy::on_upstream_result`].
#[must_use = "report the outcome with on_upstream_result"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub route: RouteId,
    pub attempt: Attempt,
    /// This try's deadline for a response head (the route's `try_timeout`, its `timeout`
    /// unless set).
    pub timeout: Duration,
    /// The deadline of all tries together (the route's `timeout`), from the first.
    pub deadline: Duration,
    /// The targets tried before this one (a retry goes elsewhere).
    tried: Vec<usize>,
    /// The request's key for `balance = "hash"` (0 otherwise).
    affinity: u64,
    user: Option<HeaderValue>,
    rewrite: Option<String>,
    base_path: Option<String>,
    rate: RateHeaders,
    /// `server.headers_with_underscores = "drop"`.
    drop_underscores: bool,
}

impl Forward {
    pub fn target(&self) -> usize {
        self.attempt.target
    }

    /// Which try this is: 1 for the first.
    pub fn try_number(&self) -> usize {
        self.tried.len() + 1
    }

    /// The path and query to send upstream: the original unless normalisation, `strip_prefix`
    /// or the target's base path changed it (only the last allocates).
    pub fn path_and_query<'a>(&'a self, original: &'a str) -> Cow<'a, str> {
        let p = self.rewrite.as_deref().unwrap_or(original);
        match &self.base_path {
            None => Cow::Borrowed(p),
            Some(base) => Cow::Owned(format!("{base}{p}")),
        }
    }

    /// The identity forwarded as `x-user-id`, if the route authenticated one.
    pub fn user(&self) -> Option<&HeaderValue> {
        self.user.as_ref()
    }

    /// Header edits on the request sent upstream: a client-sent `x-user-id` is always
    /// removed, and the verified identity set; names with `_` are removed unless
    /// `server.headers_with_underscores` says otherwise.
    pub fn apply_request_headers(&self, headers: &mut HeaderMap) {
        // Few requests carry one: look before removing (a removal hashes the name).
        if header(headers, &X_USER_ID).is_some() {
            headers.remove(X_USER_ID);
        }
        if self.drop_underscores && has_underscore_name(headers) {
            let names: Vec<HeaderName> = headers
                .keys()
                .filter(|k| k.as_str().contains('_'))
                .cloned()
                .collect();
            for n in names {
                headers.remove(n);
            }
        }
        if let Some(u) = &self.user {
            headers.insert(X_USER_ID, u.clone());
        }
    }

    /// Header edits on the response sent to the client (`RateLimit-*`).
    pub fn apply_response_headers(&self, headers: &mut HeaderMap) {
        self.rate.apply(headers);
    }
}

#[derive(Debug)]
struct RouteRt {
    name: Arc<str>,
    limit: Option<(Limit, LimitKeyKind, HeaderValue)>,
    /// The provider that authenticates this route's requests.
    provider: Option<ProviderId>,
}

/// An auth provider: its index in [`Config::providers`] (`[auth]` first, then
/// `[auth_providers.NAME]` by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProviderId(pub usize);

/// Where the pipeline finds the keys a provider fetched from its JWKS URL (the driver holds
/// them; the policy never fetches). `None`: no usable keys now.
pub trait KeySource {
    fn key_set(&self, provider: ProviderId) -> Option<Arc<KeySet>>;
}

/// No fetched keys at all (providers without a JWKS URL need none).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKeys;

impl KeySource for NoKeys {
    fn key_set(&self, _: ProviderId) -> Option<Arc<KeySet>> {
        None
    }
}

/// Fetched key sets indexed by provider.
impl KeySource for Vec<Option<Arc<KeySet>>> {
    fn key_set(&self, provider: ProviderId) -> Option<Arc<KeySet>> {
        self.get(provider.0).cloned().flatten()
    }
}

/// The immutable half of the gateway's policy: config, router, verifiers.
#[derive(Debug)]
pub struct Policy {
    config: Config,
    router: Router,
    /// One per provider, indexed by [`ProviderId`].
    verifiers: Vec<(String, Verifier)>,
    routes: Vec<RouteRt>,
}

impl Policy {
    pub fn new(config: Config) -> Result<Policy, ConfigError> {
        let mut verifiers = Vec::new();
        for (name, a) in config.providers() {
            let v = Verifier::new(a).map_err(|e| {
                let mut err = ConfigError::from(e);
                if !name.is_empty() {
                    err.path = err
                        .path
                        .replacen("auth", &format!("auth_providers.{name}"), 1);
                }
                err
            })?;
            verifiers.push((name.to_owned(), v));
        }
        let has_default = config.auth.is_some();
        let provider_of = |r: &RouteConfig| -> Option<ProviderId> {
            if !r.auth {
                return None;
            }
            match &r.auth_provider {
                None => Some(ProviderId(0)),
                Some(n) => verifiers
                    .iter()
                    .position(|(name, _)| name == n)
                    .map(ProviderId),
            }
        };
        debug_assert!(
            has_default
                || config
                    .routes
                    .iter()
                    .all(|r| !r.auth || r.auth_provider.is_some())
        );
        let routes = config
            .routes
            .iter()
            .map(|r| RouteRt {
                provider: provider_of(r),
                name: Arc::from(r.name.as_str()),
                limit: r.rate_limit.as_ref().map(|l| {
                    let policy = format!("{};w={}", l.max, l.window.as_secs().max(1));
                    let policy = HeaderValue::from_str(&policy).expect("digits are a header value");
                    (Limit::from_config(l), l.key.clone(), policy)
                }),
            })
            .collect();
        Ok(Policy {
            router: Router::new(&config.routes),
            verifiers,
            routes,
            config,
        })
    }

    /// The auth providers, indexed by [`ProviderId`]: name (`""` for `[auth]`) and verifier.
    pub fn providers(&self) -> &[(String, Verifier)] {
        &self.verifiers
    }

    /// The provider that authenticates `route`, if it requires auth.
    pub fn route_provider(&self, route: RouteId) -> Option<ProviderId> {
        self.routes[route.0].provider
    }

    /// The provider whose JWKS may hold the key a refused token named: when `reply` is a 401
    /// for an unknown key on a route whose provider fetches a JWKS. The driver then asks that
    /// provider's [`crate::Jwks::on_unknown_kid`] whether to refetch, and if it fetched, runs
    /// the request again.
    pub fn unknown_key_provider(&self, reply: &Reply) -> Option<ProviderId> {
        if reply.reason != Reason::Unauthorized(AuthFailure::UnknownKey) {
            return None;
        }
        let p = self.route_provider(reply.route?)?;
        self.verifiers[p.0].1.uses_jwks().then_some(p)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn route(&self, id: RouteId) -> &RouteConfig {
        &self.config.routes[id.0]
    }

    /// One fresh balancer per route, indexed by [`RouteId`].
    pub fn balancers(&self) -> Vec<Balancer> {
        (0..self.config.routes.len())
            .map(|i| self.balancer(RouteId(i)))
            .collect()
    }

    /// A fresh balancer for `route`: its targets' breakers, health checks and retry budget.
    pub fn balancer(&self, route: RouteId) -> Balancer {
        Balancer::new(&self.config.routes[route.0], &self.config.breaker)
            .with_budget(&self.config.retry_budget)
    }

    /// What a request is keyed by for a rate limit's `key` or a route's `hash_on`: the client
    /// IP, the verified user, or a header's value (the IP when the header is absent, empty,
    /// not visible ASCII or over 256 bytes).
    fn request_key<'a>(
        &self,
        kind: &LimitKeyKind,
        req: &RequestView<'a>,
        user: Option<&'a HeaderValue>,
    ) -> RequestKey<'a> {
        match kind {
            LimitKeyKind::Ip => RequestKey::Ip(self.client_ip(req.peer, req.headers)),
            LimitKeyKind::User => {
                RequestKey::User(user.and_then(|u| u.to_str().ok()).unwrap_or_default())
            }
            LimitKeyKind::Header(name) => match req.headers.get(name).and_then(|v| v.to_str().ok())
            {
                Some(v) if !v.is_empty() && v.len() <= 256 => RequestKey::Header(v),
                _ => RequestKey::Ip(self.client_ip(req.peer, req.headers)),
            },
        }
    }

    /// A request's key for consistent hashing (`hash_on`), as a number.
    fn affinity(
        &self,
        on: &LimitKeyKind,
        req: &RequestView<'_>,
        user: Option<&HeaderValue>,
    ) -> u64 {
        match self.request_key(on, req, user) {
            RequestKey::Ip(IpAddr::V4(a)) => crate::balancer::affinity(&a.octets()),
            RequestKey::Ip(IpAddr::V6(a)) => crate::balancer::affinity(&a.octets()),
            RequestKey::User(k) | RequestKey::Header(k) => crate::balancer::affinity(k.as_bytes()),
        }
    }

    /// The client address used for rate limiting: the socket peer, unless the peer is a trusted
    /// proxy, in which case the right-most `X-Forwarded-For` entry that is not itself a trusted
    /// proxy. A client can never choose its key by sending the header directly.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = &self.config.server.trusted_proxies;
        let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
        if trusted.is_empty() || !is_trusted(&peer) {
            return peer;
        }
        let mut client = peer;
        let values: Vec<&HeaderValue> = headers.get_all(X_FORWARDED_FOR).iter().collect();
        for v in values.iter().rev() {
            let Ok(s) = v.to_str() else { return client };
            for entry in s.rsplit(',') {
                match entry.trim().parse::<IpAddr>() {
                    Ok(ip) if is_trusted(&ip) => client = ip,
                    Ok(ip) => return ip,
                    Err(_) => return client,
                }
            }
        }
        client
    }

    /// The route a lenient backend's reading of `path` lands on, when it is not `matched` and
    /// is more protected (auth, or a rate limit, where `matched` has none): such a path must
    /// not be forwarded, or the backend would serve the protected resource unprotected.
    fn lenient_route(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        matched: RouteId,
    ) -> Option<RouteId> {
        let view = lenient_view(path)?;
        let RouteMatch::Found(other) = self.router.find(method, host, &view) else {
            return None;
        };
        let (a, b) = (&self.config.routes[matched.0], &self.config.routes[other.0]);
        let stricter = (b.auth && !a.auth) || (b.rate_limit.is_some() && a.rate_limit.is_none());
        (other != matched && stricter).then_some(other)
    }

    /// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` with
    /// `Upgrade: websocket`), when `server.upgrades` tunnels it: the `Upgrade` value to send
    /// upstream. Any other upgrade is never forwarded (`h2c` never can be).
    pub fn upgrade<'h>(&self, headers: &'h HeaderMap) -> Option<&'h HeaderValue> {
        // Most requests have no Upgrade: one small-map lookup and out.
        let value = header(headers, &http::header::UPGRADE)?;
        let wanted = headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        if !wanted {
            return None;
        }
        let proto = value.to_str().ok()?.split(',').next()?.trim();
        let name = proto.split('/').next().unwrap_or(proto);
        self.config
            .server
            .upgrades
            .iter()
            .any(|u| u.eq_ignore_ascii_case(name))
            .then_some(value)
    }

    /// Step one: size limits, route, authenticate, refuse a declared body over the route's
    /// limit, and ask for a rate-limit counter if the route has one. Providers with a JWKS URL
    /// find no fetched keys this way: see [`Policy::on_request_with`].
    pub fn on_request(&self, req: &RequestView<'_>, now: Now) -> Step {
        self.on_request_with(req, &NoKeys, now)
    }

    /// [`Policy::on_request`] with the key sets the driver fetched from JWKS URLs.
    pub fn on_request_with(&self, req: &RequestView<'_>, keys: &dyn KeySource, now: Now) -> Step {
        self.on_request_cached(req, keys, &mut [], now)
    }

    /// Empty token caches for [`Policy::on_request_cached`], one per provider, each sized by
    /// its provider's `token_cache`.
    pub fn token_caches(&self) -> Vec<TokenCache> {
        self.config
            .providers()
            .into_iter()
            .zip(&self.verifiers)
            .map(|((_, a), (_, v))| v.token_cache(a.token_cache))
            .collect()
    }

    /// [`Policy::on_request_with`] with the caller's token caches (from
    /// [`Policy::token_caches`] of this policy; a slice too short for a provider means no
    /// cache for it). The answers are the same as without them.
    pub fn on_request_cached(
        &self,
        req: &RequestView<'_>,
        keys: &dyn KeySource,
        caches: &mut [TokenCache],
        now: Now,
    ) -> Step {
        let server = &self.config.server;
        if req.path_and_query.len() > server.max_uri_bytes {
            return Step::Respond(Reply::new(
                StatusCode::URI_TOO_LONG,
                Reason::UriTooLong,
                None,
                json!({"error": "uri_too_long", "message": format!("request URI longer than {} bytes", server.max_uri_bytes)}),
            ));
        }
        // Name, value and the ": " and CRLF around them, as on the wire.
        let header_bytes: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if header_bytes > server.max_header_bytes {
            return Step::Respond(Reply::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Reason::HeadersTooLarge,
                None,
                json!({"error": "headers_too_large", "message": format!("request headers larger than {} bytes", server.max_header_bytes)}),
            ));
        }
        if server.headers_with_underscores == UnderscoreHeaders::Reject
            && has_underscore_name(req.headers)
        {
            return Step::Respond(Reply::new(
                StatusCode::BAD_REQUEST,
                Reason::BadRequest,
                None,
                json!({"error": "bad_request", "message": "header names with \"_\" are not accepted"}),
            ));
        }
        let (raw_path, query) = split_query(req.path_and_query);
        let path = match normalize(raw_path) {
            Ok(p) => p,
            Err(e) => {
                return Step::Respond(Reply::new(
                    StatusCode::BAD_REQUEST,
                    Reason::BadRequest,
                    None,
                    json!({"error": "bad_request", "message": format!("invalid request path: {e}")}),
                ));
            }
        };
        let host = req.host.map(host_without_port);
        let id = match self.router.find(req.method, host, &path) {
            RouteMatch::Found(id) => id,
            RouteMatch::NotFound => {
                return Step::Respond(Reply::new(
                    StatusCode::NOT_FOUND,
                    Reason::NotFound,
                    None,
                    json!({"error": "not_found", "message": "no route matches this path", "path": &*path}),
                ));
            }
            RouteMatch::MethodNotAllowed(allowed) => {
                let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
                let allow =
                    HeaderValue::from_str(&list.join(", ")).expect("method names are header-safe");
                return Step::Respond(
                    Reply::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        Reason::MethodNotAllowed,
                        None,
                        json!({"error": "method_not_allowed", "message": format!("{} is not allowed here", req.method), "allow": list}),
                    )
                    .header(ALLOW, allow),
                );
            }
        };
        let route = &self.config.routes[id.0];
        let rt = &self.routes[id.0];
        if let Some(other) = self.lenient_route(req.method, host, &path, id) {
            return Step::Respond(Reply::new(
                StatusCode::BAD_REQUEST,
                Reason::BadRequest,
                None,
                json!({"error": "bad_request", "message": format!("the path is ambiguous: a lenient server reads it as one under {}, which this gateway protects more", self.config.routes[other.0].path)}),
            ));
        }

        let user = match rt.provider {
            Some(p) => {
                let verifier = &self.verifiers[p.0].1;
                let fetched = if verifier.uses_jwks() {
                    keys.key_set(p)
                } else {
                    None
                };
                let verified = match caches.get_mut(p.0) {
                    Some(cache) => {
                        verifier.verify_cached(req.headers, fetched.as_ref(), cache, now.wall)
                    }
                    None => verifier.verify_with(req.headers, fetched.as_deref(), now.wall),
                };
                match verified {
                    Ok(u) => Some(u),
                    Err(AuthFailure::KeysUnavailable) => {
                        return Step::Respond(keys_unavailable(id));
                    }
                    Err(f) => return Step::Respond(unauthorized(id, f)),
                }
            }
            None => None,
        };

        let declared = header(req.headers, &CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(len), Some(max)) = (declared, route.max_body_bytes)
            && len > max
        {
            return Step::Respond(self.body_too_large(id, Some(len)));
        }

        let rewrite = rewrite_path(route, raw_path, &path, query);
        let affinity = match &route.hash_on {
            Some(on) => self.affinity(on, req, user.as_ref()),
            None => 0,
        };
        let ticket = Ticket {
            route: id,
            user,
            rewrite,
            rate: RateHeaders::None,
            affinity,
        };
        let Some((limit, key_kind, _)) = &rt.limit else {
            return Step::Admit(ticket);
        };
        let client = match self.request_key(key_kind, req, ticket.user.as_ref()) {
            RequestKey::Ip(ip) => ClientKey::Ip(ip),
            RequestKey::User(u) => ClientKey::User(Arc::from(u)),
            RequestKey::Header(v) => ClientKey::Header(Arc::from(v)),
        };
        let request = CounterRequest {
            key: CounterKey {
                route: rt.name.clone(),
                client,
            },
            limit: *limit,
            now: now.wall,
        };
        Step::Count(Pending { request, ticket })
    }

    /// Step two: the store's answer for a [`Step::Count`]. Admits, or answers 429 (over the
    /// limit) or 503 (store failed and `on_store_error = "deny"`).
    pub fn on_counter(
        &self,
        pending: Pending,
        reply: Result<CounterReply, StoreError>,
        now: Now,
    ) -> Result<Ticket, Reply> {
        let Pending {
            request,
            mut ticket,
        } = pending;
        let id = ticket.route;
        let (limit, _, policy) = self.routes[id.0]
            .limit
            .as_ref()
            .expect("a Count step has a limit");
        let reply = match reply {
            Ok(r) => r,
            Err(_) => {
                return match self.config.rate_limit.on_store_error {
                    OnStoreError::Allow => {
                        ticket.rate = RateHeaders::Degraded;
                        Ok(ticket)
                    }
                    OnStoreError::Deny => Err(Reply::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Reason::StoreUnavailable,
                        Some(id),
                        // The store's own words (hosts, OS errors) are for the log, not clients.
                        json!({"error": "rate_limit_unavailable", "message": "the rate-limit store is unavailable; retry shortly"}),
                    )
                    .header(RETRY_AFTER, HeaderValue::from_static("1"))),
                };
            }
        };
        let decision = decide(limit, &reply, request.now);
        debug_assert_eq!(request.now, now.wall);
        if decision.allowed {
            ticket.rate = RateHeaders::Decision(decision, policy.clone());
            return Ok(ticket);
        }
        let retry = ceil_secs_min1(decision.retry_after.unwrap_or(decision.reset));
        let route = &self.config.routes[id.0];
        let window = &route.rate_limit.as_ref().expect("limited route").window;
        let mut r = Reply::new(
            StatusCode::TOO_MANY_REQUESTS,
            Reason::RateLimited,
            Some(id),
            json!({
                "error": "rate_limited",
                "message": format!("rate limit of {} per {} exceeded", limit.max, format_duration(*window)),
                "retryAfter": retry,
            }),
        );
        let mut h = HeaderMap::new();
        RateHeaders::Decision(decision, policy.clone()).apply(&mut h);
        r.headers
            .extend(h.into_iter().filter_map(|(k, v)| k.map(|k| (k, v))));
        Err(r.header(RETRY_AFTER, HeaderValue::from(retry)))
    }

    /// Step three: pick a target. 503 naming the route, with `Retry-After`, when none will take
    /// the request.
    pub fn forward(
        &self,
        ticket: Ticket,
        balancer: &mut Balancer,
        now: Now,
    ) -> Result<Forward, Reply> {
        let route = &self.config.routes[ticket.route.0];
        balancer.on_request(now.mono);
        match balancer.pick_keyed(now.mono, &[], ticket.affinity) {
            Ok(attempt) => Ok(Forward {
                route: ticket.route,
                attempt,
                timeout: route.retry.try_timeout,
                deadline: route.timeout,
                tried: Vec::new(),
                affinity: ticket.affinity,
                base_path: Some(&route.targets[attempt.target].base_path)
                    .filter(|b| !b.is_empty())
                    .cloned(),
                rewrite: ticket.rewrite,
                user: ticket.user,
                rate: ticket.rate,
                drop_underscores: self.config.server.headers_with_underscores
                    == UnderscoreHeaders::Drop,
            }),
            Err(u) => Err(self.no_target(ticket.route, u)),
        }
    }

    /// The 503 for a route with no target to send to, with `Retry-After`.
    fn no_target(&self, id: RouteId, u: Unavailable) -> Reply {
        let route = &self.config.routes[id.0];
        let retry = ceil_secs_min1(u.retry_after);
        let message = match u.why {
            NoTarget::CircuitsOpen => format!("every target of {} has an open circuit", route.path),
            NoTarget::Unhealthy => {
                format!(
                    "every target of {} is failing its health checks",
                    route.path
                )
            }
            NoTarget::AllTried => format!("every target of {} failed this request", route.path),
        };
        Reply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::NoHealthyTarget,
            Some(id),
            json!({
                "error": "no_healthy_target",
                "route": route.path,
                "message": message,
                "retryAfter": retry,
            }),
        )
        .header(RETRY_AFTER, HeaderValue::from(retry))
    }

    /// After a failed try (its outcome already reported): another target for the request,
    /// when the route's retry rule, its budget and its targets allow one.
    ///
    /// The rule: a request that could not be sent at all (no byte of it written: the
    /// connection was refused or timed out) may go to every other target once, whatever its
    /// method. One that was sent goes again only if it is idempotent (GET, HEAD, OPTIONS,
    /// TRACE, PUT, DELETE; or any with an `Idempotency-Key` when `retry_idempotency_key` is
    /// set), its body can be sent again (none, or kept because it was small), the try failed
    /// with a status in `retry_on`, a reset or a timeout, and fewer than `retries` retries
    /// were made. Every retry takes one from the route's budget.
    pub fn retry(
        &self,
        fwd: &Forward,
        failed: FailedTry,
        balancer: &mut Balancer,
        now: Now,
    ) -> Option<Forward> {
        let route = &self.config.routes[fwd.route.0];
        let tries = fwd.tried.len() + 1;
        let allowed = if !failed.sent {
            matches!(
                failed.outcome,
                UpstreamOutcome::ConnectError | UpstreamOutcome::Timeout
            ) && tries < route.targets.len()
        } else {
            let idempotent = crate::retry::is_idempotent(failed.method)
                || (route.retry.idempotency_key && failed.idempotency_key);
            let retryable = match failed.outcome {
                UpstreamOutcome::Status(s) => route.retry.on.contains(s),
                UpstreamOutcome::ConnectError | UpstreamOutcome::Timeout => true,
                UpstreamOutcome::Cancelled => false,
            };
            idempotent
                && failed.body_replayable
                && retryable
                && tries <= route.retry.retries as usize
        };
        if !allowed || !balancer.take_retry(now.mono) {
            return None;
        }
        let mut tried = fwd.tried.clone();
        tried.push(fwd.target());
        let attempt = balancer.pick_keyed(now.mono, &tried, fwd.affinity).ok()?;
        Some(Forward {
            route: fwd.route,
            attempt,
            timeout: fwd.timeout,
            deadline: fwd.deadline,
            tried,
            affinity: fwd.affinity,
            base_path: Some(&route.targets[attempt.target].base_path)
                .filter(|b| !b.is_empty())
                .cloned(),
            rewrite: fwd.rewrite.clone(),
            user: fwd.user.clone(),
            rate: fwd.rate.clone(),
            drop_underscores: fwd.drop_underscores,
        })
    }

    /// Step four: how the forwarded request ended. Call exactly once per [`Forward`].
    pub fn on_upstream_result(
        &self,
        balancer: &mut Balancer,
        attempt: Attempt,
        outcome: UpstreamOutcome,
        now: Now,
    ) {
        balancer.on_result(attempt, outcome, now.mono);
    }

    /// The client's answer when a forwarded request got no response head: 502 (no connection,
    /// or it broke first) or 504 (the route's timeout passed). `None` for an upstream status,
    /// which passes through, and for a cancelled request, which nobody is left to read.
    /// `detail` is the shell's word on what happened (an OS error), quoted in the message.
    pub fn upstream_failure(
        &self,
        route: RouteId,
        target: usize,
        outcome: UpstreamOutcome,
        detail: &str,
    ) -> Option<Reply> {
        let r = &self.config.routes[route.0];
        let url = &r.targets[target].url;
        let sep = if detail.is_empty() { "" } else { ": " };
        let (status, reason, error, message) = match outcome {
            UpstreamOutcome::ConnectError => (
                StatusCode::BAD_GATEWAY,
                Reason::UpstreamError,
                "bad_gateway",
                format!("upstream {url} failed before responding{sep}{detail}"),
            ),
            UpstreamOutcome::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                Reason::UpstreamTimeout,
                "gateway_timeout",
                format!(
                    "upstream {url} did not respond within {}",
                    format_duration(r.timeout)
                ),
            ),
            UpstreamOutcome::Status(_) | UpstreamOutcome::Cancelled => return None,
        };
        Some(Reply::new(
            status,
            reason,
            Some(route),
            json!({"error": error, "message": message}),
        ))
    }

    /// 413 for a request body over the route's `max_body_size`: declared (`len`) or found
    /// while it streams (the shell counts the bytes against [`Policy::max_body`]).
    pub fn body_too_large(&self, route: RouteId, len: Option<u64>) -> Reply {
        let max = self.config.routes[route.0].max_body_bytes.unwrap_or(0);
        let message = match len {
            Some(len) => format!("request body of {len} bytes is over the limit of {max} bytes"),
            None => format!("request body is over the limit of {max} bytes"),
        };
        Reply::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Reason::BodyTooLarge,
            Some(route),
            json!({"error": "payload_too_large", "message": message}),
        )
    }

    /// The route's request body limit, which the shell enforces as the body streams.
    pub fn max_body(&self, route: RouteId) -> Option<u64> {
        self.config.routes[route.0].max_body_bytes
    }

    /// The `/gateway/stats` document: one line per (route, target), in config order.
    pub fn stats<'a>(
        &self,
        balancers: impl IntoIterator<Item = &'a Balancer>,
        now: Now,
    ) -> Vec<TargetStats> {
        self.config
            .routes
            .iter()
            .zip(balancers)
            .flat_map(|(r, b)| b.snapshot(r, now.mono))
            .collect()
    }
}

fn unauthorized(id: RouteId, f: AuthFailure) -> Reply {
    let challenge =
        format!("Bearer realm=\"aegis\", error=\"invalid_token\", error_description=\"{f}\"");
    Reply::new(
        StatusCode::UNAUTHORIZED,
        Reason::Unauthorized(f.clone()),
        Some(id),
        json!({"error": "unauthorized", "reason": f.reason(), "message": f.to_string()}),
    )
    .header(
        WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge).expect("reasons are header-safe"),
    )
}

/// 503: the route's provider has no usable keys (its JWKS was never fetched, or is stale past
/// `jwks_max_stale`). The token may be fine; the gateway cannot tell.
fn keys_unavailable(id: RouteId) -> Reply {
    let f = AuthFailure::KeysUnavailable;
    Reply::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Reason::Unauthorized(f.clone()),
        Some(id),
        json!({"error": "auth_unavailable", "reason": f.reason(), "message": f.to_string(), "retryAfter": 5}),
    )
    .header(RETRY_AFTER, HeaderValue::from_static("5"))
}

/// The upstream path, if it differs from what the client sent.
fn rewrite_path(
    route: &RouteConfig,
    raw: &str,
    normal: &str,
    query: Option<&str>,
) -> Option<String> {
    let path = if route.strip_prefix && route.path != "/" {
        let rest = &normal[route.path.len()..];
        if rest.is_empty() { "/" } else { rest }
    } else {
        normal
    };
    if path == raw {
        return None;
    }
    let mut out = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    out.push_str(path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

/// Whether a header name contains `_` (one pass over the names; most requests have none).
fn has_underscore_name(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|k| k.as_str().as_bytes().contains(&b'_'))
}

/// A complete synchronous driver: the pipeline plus its balancers and a counter store that
/// answers at once. The simulator, benches and tests use it; the gateway drives the same
/// steps with an async store and per-route locks.
#[derive(Debug)]
pub struct Engine<S> {
    pub policy: Policy,
    pub balancers: Vec<Balancer>,
    pub store: S,
}

/// The final outcome of [`Engine::handle`].
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Respond(Reply),
    Forward(Forward),
}

impl<S: CounterStore> Engine<S> {
    pub fn new(policy: Policy, store: S) -> Engine<S> {
        let balancers = policy.balancers();
        Engine {
            policy,
            balancers,
            store,
        }
    }

    pub fn handle(&mut self, req: &RequestView<'_>, now: Now) -> Decision {
        let ticket = match self.policy.on_request(req, now) {
            Step::Respond(r) => return Decision::Respond(r),
            Step::Admit(t) => t,
            Step::Count(p) => {
                let reply = self.store.apply(p.request());
                match self.policy.on_counter(p, reply, now) {
                    Ok(t) => t,
                    Err(r) => return Decision::Respond(r),
                }
            }
        };
        let balancer = &mut self.balancers[ticket.route().0];
        match self.policy.forward(ticket, balancer, now) {
            Ok(f) => Decision::Forward(f),
            Err(r) => Decision::Respond(r),
        }
    }

    pub fn on_upstream_result(&mut self, fwd: &Forward, outcome: UpstreamOutcome, now: Now) {
        let balancer = &mut self.balancers[fwd.route.0];
        self.policy
            .on_upstream_result(balancer, fwd.attempt, outcome, now);
    }

    pub fn stats(&self, now: Now) -> Vec<TargetStats> {
        self.policy.stats(&self.balancers, now)
    }
}

/// `headers.get(name)`, by comparing names when there are few: cheaper than hashing the name
/// for the handful of headers most requests carry.
pub fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.keys_len() > 8 {
        return headers.get(name);
    }
    headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
}
