//! The request path: limits, admin, the policy pipeline, the upstream exchange, and the
//! access log. Every decision is the policy's; this module moves bytes and reads clocks.
//!
//! ```text
//!   request ─▶ 414/431 limits ─▶ /gateway/* (admin) ─▶ policy.on_request ─▶ [store] ─▶ on_counter
//!           ─▶ 413 (declared body) ─▶ policy.forward (balancer lock) ─▶ upstream (timeout)
//!           ─▶ on_upstream_result exactly once (OutcomeGuard: also on drop = client gone)
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aegis_policy::{
    Attempt, Forward, Reason, Reply, RequestView, Step, UpstreamOutcome, header, http::HeaderName,
};
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HOST};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Uri};
use hyper::body::{Body, Frame, SizeHint};
use serde_json::json;

use crate::pool::{self, SendError};
use crate::runtime::{Runtime, Shared, lock};
use crate::store::Store;
use crate::{access, admin};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The longest client-sent `X-Request-ID` that is kept.
const MAX_REQUEST_ID: usize = 128;

// ---------------------------------------------------------------------------------------------
// Bodies.

/// The response body: a gateway-made reply, or the upstream's body streamed through.
#[derive(Debug)]
pub enum ProxyBody {
    Full(Option<Bytes>),
    Upstream(pool::UpBody),
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(b.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(i) => Pin::new(i).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Upstream(i) => i.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Upstream(i) => i.size_hint(),
        }
    }
}

/// Why a request body stopped streaming upstream.
#[derive(Debug)]
pub enum BodyError {
    /// It grew past the route's `max_body_size` (bytes).
    TooLarge(u64),
    /// The client's connection failed mid-body.
    Client(BoxError),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::TooLarge(n) => write!(f, "request body larger than {n} bytes"),
            BodyError::Client(e) => write!(f, "client body: {e}"),
        }
    }
}

impl StdError for BodyError {}

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The client's request body, streamed upstream frame by frame, cut off past a size limit.
#[derive(Debug)]
pub struct LimitedBody<B> {
    inner: Option<B>,
    limit: Option<u64>,
    seen: u64,
    /// Set once the client's body has been read to its end (only made for requests that have
    /// a body): a timeout before then is the client's slowness, not the upstream's.
    done: Option<Arc<AtomicBool>>,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: Option<u64>, done: Option<Arc<AtomicBool>>) -> LimitedBody<B> {
        LimitedBody {
            inner: Some(inner),
            limit,
            seen: 0,
            done,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(limit), Some(d)) = (this.limit, frame.data_ref()) {
                    this.seen += d.len() as u64;
                    if this.seen > limit {
                        return Poll::Ready(Some(Err(BodyError::TooLarge(limit))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e.into())))),
            Poll::Ready(None) => {
                if let Some(d) = &this.done {
                    d.store(true, Ordering::Relaxed);
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

// ---------------------------------------------------------------------------------------------
// The outcome guard.

/// Reports a forwarded request's outcome to its breaker exactly once: explicitly with
/// [`OutcomeGuard::report`], or as `Cancelled` when dropped unreported (the client went away
/// and hyper dropped the handler mid-exchange).
struct OutcomeGuard<'a> {
    shared: &'a Shared,
    rt: &'a Runtime,
    route: usize,
    attempt: Option<Attempt>,
    /// For the log line of a breaker transition this outcome causes.
    request_id: RequestId,
}

impl OutcomeGuard<'_> {
    fn report(&mut self, outcome: UpstreamOutcome) {
        self.report_at(outcome, Instant::now());
    }

    /// [`OutcomeGuard::report`] with the clock already read.
    fn report_at(&mut self, outcome: UpstreamOutcome, instant: Instant) {
        let Some(attempt) = self.attempt.take() else {
            return;
        };
        let now = self.shared.clock.at(instant);
        let balancer = &self.rt.balancers[self.route];
        let mut b = lock(balancer);
        self.rt
            .policy
            .on_upstream_result(&mut b, attempt, outcome, now);
        let transitions: Vec<_> = b.drain_transitions().collect();
        if !transitions.is_empty() {
            let urls: Vec<String> = transitions
                .iter()
                .map(|t| b.url(t.target).to_owned())
                .collect();
            drop(b);
            let route = &self.rt.policy.config().routes[self.route].name;
            let id = self.request_id.as_str();
            for (t, url) in transitions.iter().zip(urls) {
                tracing::warn!(
                    "circuit {} → {} for {url} on route {route} [{id}]",
                    t.transition.from.as_str(),
                    t.transition.to.as_str()
                );
            }
        }
    }
}

impl Drop for OutcomeGuard<'_> {
    fn drop(&mut self) {
        self.report(UpstreamOutcome::Cancelled);
    }
}

// ---------------------------------------------------------------------------------------------
// The handler.

/// The client end of a connection: its address and, made once per connection, the header
/// value `X-Forwarded-For` gets.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    ip_header: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let ip_header =
            HeaderValue::from_str(&addr.ip().to_string()).expect("an IP address is a header value");
        Peer { addr, ip_header }
    }
}

/// What the access log needs to know about a request, filled as it goes (the request's
/// headers move upstream, so what the log reads of them is kept here first).
#[derive(Debug)]
pub struct Exchange {
    pub started: Instant,
    pub request_id: RequestId,
    pub route: Option<usize>,
    pub target: Option<usize>,
    pub user: Option<HeaderValue>,
    pub reason: &'static str,
    pub has_authorization: bool,
    /// The request's host, as routing sees it (authority or `Host`), kept only for the JSON
    /// access log.
    pub host: Option<HeaderValue>,
    /// The rate-limit client IP, worked out only for the JSON log.
    pub client_ip: Option<std::net::IpAddr>,
}

/// A request's answer and its request id (`X-Request-ID`, which the caller sets on the
/// response: HTTP/1.1 writes it straight out, hyper gets it in the header map).
#[derive(Debug)]
pub struct Answer {
    pub response: Response<ProxyBody>,
    pub request_id: RequestId,
}

impl Answer {
    /// The response with its `X-Request-ID` header.
    pub fn into_response(self) -> Response<ProxyBody> {
        let mut r = self.response;
        r.headers_mut()
            .insert(X_REQUEST_ID, self.request_id.to_header());
        r
    }
}

/// Serves one request on the proxy listener (HTTP/1.1 from `downstream`, HTTP/2 from hyper),
/// on the runtime (config) current when it arrived. The request's head is borrowed (HTTP/1.1
/// keeps one per connection) and edited on its way upstream.
pub async fn handle<B>(
    shared: &Shared,
    rt: &Runtime,
    peer: &Peer,
    parts: &mut http::request::Parts,
    body: B,
) -> Answer
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let _in_flight = crate::metrics::GaugeGuard::enter(shared.metrics.in_flight.mine());
    let h = &parts.headers;
    let mut ex = Exchange {
        started: Instant::now(),
        request_id: RequestId::of(h),
        route: None,
        target: None,
        user: None,
        reason: "forwarded",
        has_authorization: header(h, &http::header::AUTHORIZATION).is_some(),
        host: (shared.log_format == crate::runtime::LogFormat::Json)
            .then(|| request_host(&parts.uri, h))
            .flatten()
            .and_then(|h| HeaderValue::from_str(h).ok()),
        client_ip: (shared.log_format == crate::runtime::LogFormat::Json)
            .then(|| rt.policy.client_ip(peer.addr.ip(), h)),
    };
    let resp = exchange(shared, rt, peer, parts, body, &mut ex).await;
    let status = resp.status().as_u16();
    match ex.route {
        Some(r) => rt.routes[r].metrics.response(status),
        None => shared.metrics.unrouted.response(status),
    }
    access::log(shared, rt, parts, &ex, status);
    Answer {
        response: resp,
        request_id: ex.request_id,
    }
}

async fn exchange<B>(
    shared: &Shared,
    rt: &Runtime,
    peer: &Peer,
    parts: &mut http::request::Parts,
    body: B,
    ex: &mut Exchange,
) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let pq = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    if shared.admin_on_proxy && pq.starts_with(admin::PREFIX) {
        ex.reason = "admin";
        return admin::handle(shared, rt, parts);
    }

    let view = RequestView {
        method: &parts.method,
        host: request_host(&parts.uri, &parts.headers),
        path_and_query: pq,
        headers: &parts.headers,
        peer: peer.addr.ip(),
    };
    let now = shared.clock.at(ex.started);
    // In a block: the ticket and the pick are dead before the upstream exchange's await, so
    // the request's future keeps no room for them (and does not copy them).
    let (fwd, max_body) = {
        let ticket = match rt.policy.on_request(&view, now) {
            Step::Respond(r) => return reply(r, ex),
            Step::Admit(t) => t,
            Step::Count(p) => {
                ex.route = Some(p.route().0);
                let answer = match &*rt.store {
                    Store::Memory(m) => m.apply(p.request()),
                    // Boxed: the Redis round trip's future is large and rare next to the
                    // rest, and every request's future is moved once into hyper's connection.
                    Store::Redis(r) => Box::pin(r.apply(p.request())).await,
                };
                if answer.is_err() {
                    shared
                        .metrics
                        .store_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                match rt.policy.on_counter(p, answer, now) {
                    Ok(t) => t,
                    Err(r) => {
                        if r.reason == Reason::RateLimited {
                            rt.routes[ex.route.unwrap_or_default()]
                                .metrics
                                .rate_limited();
                        }
                        return reply(r, ex);
                    }
                }
            }
        };
        let route = ticket.route().0;
        ex.route = Some(route);
        let max_body = rt.policy.max_body(ticket.route());
        // A pick may half-open a breaker; that transition is logged with the outcome's.
        let mut balancer = lock(&rt.balancers[route]);
        match rt.policy.forward(ticket, &mut balancer, now) {
            Ok(f) => (f, max_body),
            Err(r) => {
                drop(balancer);
                return reply(r, ex);
            }
        }
    };
    let route = fwd.route.0;
    ex.target = Some(fwd.target());
    ex.user = fwd.user().cloned();
    let mut guard = OutcomeGuard {
        shared,
        rt,
        route,
        attempt: Some(fwd.attempt),
        request_id: ex.request_id.clone(),
    };

    let body_done = (!body.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
    let body = LimitedBody::new(body, max_body, body_done.clone());
    let original = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let pq = fwd.path_and_query(original);
    // Not the client's own target (the policy normalised or rewrote it): check it.
    let rewritten = (pq.as_ptr() != original.as_ptr()).then_some(&*pq);
    let forwarding = match forwarding(&mut parts.headers, &parts.uri, peer, &fwd, rewritten) {
        Ok(f) => f,
        Err(e) => {
            guard.report(UpstreamOutcome::Cancelled);
            ex.reason = "bad_request";
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("cannot forward this path: {e}"),
            );
        }
    };
    // The request's arrival stands for its send time (the policy's microsecond between them
    // is not worth a clock read): the deadline and upstream latency count from it.
    let sent = ex.started;
    let target = &rt.routes[route].targets[fwd.target()];
    let outgoing = pool::Outgoing {
        method: &parts.method,
        path_and_query: &pq,
        headers: &parts.headers,
        set: pool::SetHeaders {
            host: &target.host,
            forwarded_for: forwarding.chain.as_ref().unwrap_or(&peer.ip_header),
            forwarded_host: forwarding
                .host
                .as_ref()
                .or_else(|| header(&parts.headers, &HOST)),
            request_id: &ex.request_id,
        },
    };
    let timing = pool::Timing {
        connect_timeout: rt.policy.config().server.connect_timeout,
        now: sent,
        deadline: sent + fwd.timeout,
        body_stall: fwd.timeout,
    };
    let result = pool::send(target, &outgoing, body, timing).await;
    let metrics = &rt.routes[route].metrics;
    match result {
        Ok(resp) => {
            let answered = Instant::now();
            metrics.upstream_latency(answered.saturating_duration_since(sent));
            guard.report_at(UpstreamOutcome::Status(resp.status().as_u16()), answered);
            let (mut head, body) = resp.into_parts();
            // The upstream's headers stay raw for an HTTP/1.x client (downstream writes them,
            // leaving out the hop-by-hop ones); hyper needs them in the map.
            // (The raw lines are already without hop-by-hop and Connection-named headers.)
            if parts.version == http::Version::HTTP_2
                && let Some(raw) = body.headers()
            {
                raw.to_map(&mut head.headers);
            }
            fwd.apply_response_headers(&mut head.headers);
            Response::from_parts(head, ProxyBody::Upstream(body))
        }
        Err(SendError::Timeout) if body_done.is_some_and(|d| !d.load(Ordering::Relaxed)) => {
            // The client was still sending its body: its slowness, not the upstream's. A slow
            // uploader must not be able to open a circuit.
            guard.report(UpstreamOutcome::Cancelled);
            ex.reason = "client_timeout";
            error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {}",
                    fmt_duration(fwd.timeout)
                ),
            )
        }
        Err(SendError::Timeout) => {
            metrics.upstream_latency(sent.elapsed());
            upstream_failed(rt, &fwd, &mut guard, UpstreamOutcome::Timeout, "", ex)
        }
        Err(e) => {
            if body_too_large(&e) {
                guard.report(UpstreamOutcome::Cancelled);
                return reply(rt.policy.body_too_large(fwd.route, None), ex);
            }
            if client_body_failed(&e) {
                guard.report(UpstreamOutcome::Cancelled);
                ex.reason = "client_aborted";
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request body could not be read",
                );
            }
            metrics.upstream_latency(sent.elapsed());
            upstream_failed(
                rt,
                &fwd,
                &mut guard,
                UpstreamOutcome::ConnectError,
                &detail(&e),
                ex,
            )
        }
    }
}

/// Reports a failed exchange to the breaker and answers with the policy's 502 or 504.
fn upstream_failed(
    rt: &Runtime,
    fwd: &Forward,
    guard: &mut OutcomeGuard<'_>,
    outcome: UpstreamOutcome,
    detail: &str,
    ex: &mut Exchange,
) -> Response<ProxyBody> {
    guard.report(outcome);
    match rt
        .policy
        .upstream_failure(fwd.route, fwd.target(), outcome, detail)
    {
        Some(r) => reply(r, ex),
        None => error(StatusCode::BAD_GATEWAY, "bad_gateway", detail.to_owned()),
    }
}

/// Values of the headers the gateway sets upstream, taken from the client's request.
struct Forwarding {
    /// `X-Forwarded-Host` when the URI has an authority (else the client's `Host`, which the
    /// pool does not forward as such).
    host: Option<HeaderValue>,
    /// `X-Forwarded-For` when the client sent one: its values and the peer, comma-joined.
    chain: Option<HeaderValue>,
}

/// Readies the client's request to go upstream (the pool writes it from borrowed parts):
/// hop-by-hop headers removed, the identity headers set, `X-Forwarded-For` taken out to be
/// written by the pool (which writes the target's `Host`, not the client's). A path the policy
/// rewrote is checked.
fn forwarding(
    headers: &mut HeaderMap,
    uri: &Uri,
    peer: &Peer,
    fwd: &Forward,
    rewritten: Option<&str>,
) -> Result<Forwarding, http::uri::InvalidUri> {
    if let Some(path_and_query) = rewritten {
        PathAndQuery::try_from(path_and_query)?;
    }
    strip_hop_by_hop(headers);
    fwd.apply_request_headers(headers);
    Ok(Forwarding {
        host: uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        chain: forwarded_for_chain(headers, peer),
    })
}

/// The request's host as routing sees it: the URI's authority (HTTP/2, absolute form) or the
/// `Host` header.
fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    match uri.authority() {
        Some(a) => Some(a.as_str()),
        None => header(headers, &HOST).and_then(|h| h.to_str().ok()),
    }
}

/// When the client sent `X-Forwarded-For`: its values with the peer appended (one
/// comma-joined value), the client's removed from `headers`.
fn forwarded_for_chain(headers: &mut HeaderMap, peer: &Peer) -> Option<HeaderValue> {
    header(headers, &X_FORWARDED_FOR)?;
    let mut joined = String::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            joined.push_str(s);
            joined.push_str(", ");
        }
    }
    headers.remove(&X_FORWARDED_FOR);
    joined.push_str(&peer.addr.ip().to_string());
    HeaderValue::from_str(&joined).ok()
}

/// Removes the headers that describe one connection and must not be forwarded (RFC 9110
/// §7.6.1): `Connection` and every header it names, and the fixed hop-by-hop set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let hop = |n: &HeaderName| crate::h1::is_hop_by_hop(n.as_str().as_bytes());
    // Most messages have none: one pass over the names instead of a lookup for each.
    if !headers.keys().any(hop) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    let fixed: Vec<HeaderName> = headers.keys().filter(|n| hop(n)).cloned().collect();
    for n in fixed {
        headers.remove(n);
    }
}

/// A request's `X-Request-ID`: the client's when it is sane (1–128 visible ASCII
/// characters), else a fresh UUID v4, held inline (no allocation, copied where it goes).
#[derive(Debug, Clone)]
pub enum RequestId {
    Client(HeaderValue),
    Fresh([u8; uuid::fmt::Hyphenated::LENGTH]),
}

impl RequestId {
    fn of(headers: &HeaderMap) -> RequestId {
        if let Some(v) = header(headers, &X_REQUEST_ID) {
            let b = v.as_bytes();
            if !b.is_empty()
                && b.len() <= MAX_REQUEST_ID
                && b.iter().all(|c| (0x21..=0x7e).contains(c))
            {
                return RequestId::Client(v.clone());
            }
        }
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        RequestId::Fresh(buf)
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Client(v) => v.as_bytes(),
            RequestId::Fresh(b) => b,
        }
    }

    /// Visible ASCII either way.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }

    pub fn to_header(&self) -> HeaderValue {
        match self {
            RequestId::Client(v) => v.clone(),
            RequestId::Fresh(b) => HeaderValue::from_bytes(b).expect("a uuid is a header value"),
        }
    }
}

fn body_too_large(e: &SendError) -> bool {
    matches!(e, SendError::Body(BodyError::TooLarge(_)))
}

fn client_body_failed(e: &SendError) -> bool {
    matches!(e, SendError::Body(BodyError::Client(_)))
}

/// What went wrong, for the 502's message.
fn detail(e: &SendError) -> String {
    e.to_string()
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A policy reply as an HTTP response.
fn reply(r: Reply, ex: &mut Exchange) -> Response<ProxyBody> {
    ex.reason = r.reason.label();
    if let Some(id) = r.route {
        ex.route = Some(id.0);
    }
    let mut resp = Response::new(ProxyBody::full(r.body));
    *resp.status_mut() = r.status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (k, v) in r.headers {
        h.append(k, v);
    }
    resp
}

/// A JSON error the shell itself produces: `{"error": code, "message": ...}`.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<ProxyBody> {
    json_response(status, &json!({"error": code, "message": message.into()}))
}

pub fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
