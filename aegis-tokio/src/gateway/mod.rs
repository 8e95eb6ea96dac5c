//! The request path, in the order a request travels: the admin endpoints, the policy
//! (decide: route, auth, rate limit), the pick of a target, the exchange with it (forward),
//! and the response (respond), then the access log. Every decision is the policy's; this
//! module moves bytes and reads clocks.
//!
//! ```text
//!   request ─▶ /gateway/* (admin) ─▶ policy.on_request ─▶ [store] ─▶ on_counter
//!           ─▶ 413 (declared body) ─▶ policy.forward (balancer lock) ─▶ upstream (timeout)
//!           ─▶ on_upstream_result exactly once (OutcomeGuard: also on drop = client gone)
//! ```

pub mod admin;
mod body;
mod forward;
mod outcome;
mod reply;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use aegis_policy::{FailedTry, Forward, Reason, RequestView, Step, UpstreamOutcome, header};
use bytes::Bytes;
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Response, StatusCode};
use hyper::body::Body;

pub use body::{LimitedBody, ProxyBody, RequestBody};
use forward::{forwarding, request_host};
use outcome::OutcomeGuard;
pub use outcome::TunnelLease;
use reply::reply;
pub use reply::{error, json_response};

use crate::error::{BodyError, BoxError};
use crate::observe::access;
use crate::record::{Exchange, Peer, RequestId};
use crate::state::store::Store;
use crate::state::{Runtime, Shared, lock};
use crate::upstream::{self, SendError};

/// A client's promise that its request may be repeated (the IETF draft's header).
const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// A request's answer and its request id (`X-Request-ID`, which the caller sets on the
/// response: HTTP/1.1 writes it straight out, hyper gets it in the header map).
#[derive(Debug)]
pub struct Answer {
    pub response: Response<ProxyBody>,
    pub request_id: RequestId,
    /// The protocol switched to, when the response is a `101` to an upgrade request: the
    /// connection becomes a tunnel to the upstream's.
    pub upgrade: Option<HeaderValue>,
    /// With `upgrade`: the tunnel's count among its target's requests in flight, held for
    /// as long as the tunnel is open.
    pub tunnel: Option<TunnelLease>,
}

impl Answer {
    /// The response with its `X-Request-ID` header.
    pub fn into_response(self) -> Response<ProxyBody> {
        let mut r = self.response;
        r.headers_mut()
            .insert(crate::headers::X_REQUEST_ID, self.request_id.to_header());
        r
    }
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `server.listen`: the routes (and `/gateway/*` unless an admin listener is set).
    Proxy,
    /// `server.admin_listen`: `/gateway/*` only.
    Admin,
}

/// The admin listener's answer: a gateway endpoint, or 404 for any other path. Not counted
/// as a request nor logged: it is the operators' own traffic.
fn admin_only(shared: &Shared, rt: &Runtime, parts: &http::request::Parts) -> Answer {
    let response = if parts.uri.path().starts_with(admin::PREFIX) {
        admin::handle(shared, rt, parts)
    } else {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the admin listener serves /gateway/stats, /gateway/health and /gateway/metrics",
        )
    };
    Answer {
        response,
        request_id: RequestId::of(&parts.headers),
        upgrade: None,
        tunnel: None,
    }
}

/// Serves one request (HTTP/1.1 from `downstream`, HTTP/2 from hyper), on the runtime
/// (config) current when it arrived. The request's head is borrowed (HTTP/1.1 keeps one per
/// connection) and edited on its way upstream.
pub async fn handle<B>(
    shared: &Shared,
    rt: &Runtime,
    listener: Listener,
    peer: &Peer,
    parts: &mut http::request::Parts,
    body: B,
) -> Answer
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    if listener == Listener::Admin {
        return admin_only(shared, rt, parts);
    }
    let _in_flight = crate::observe::metrics::GaugeGuard::enter(shared.metrics.in_flight.mine());
    let h = &parts.headers;
    let mut ex = Exchange {
        started: Instant::now(),
        request_id: RequestId::of(h),
        route: None,
        target: None,
        user: None,
        reason: "forwarded",
        has_authorization: header(h, &http::header::AUTHORIZATION).is_some(),
        host: (shared.log_format == crate::observe::log::LogFormat::Json)
            .then(|| request_host(&parts.uri, h))
            .flatten()
            .and_then(|h| HeaderValue::from_str(h).ok()),
        client_ip: (shared.log_format == crate::observe::log::LogFormat::Json)
            .then(|| rt.policy.client_ip(peer.addr.ip(), h)),
        error: None,
        attempts: 0,
        upgrade: None,
    };
    let resp = exchange(shared, rt, peer, parts, body, &mut ex).await;
    let status = resp.status().as_u16();
    match ex.route {
        Some(r) => rt.routes[r].metrics.response(status),
        None => shared.metrics.unrouted.response(status),
    }
    access::log(shared.log_format, &rt.policy, parts, &ex, status);
    let upgrade = ex.upgrade.take().filter(|_| status == 101);
    let tunnel = match (&upgrade, ex.route, ex.target) {
        (Some(_), Some(route), Some(target)) => TunnelLease::open(rt, route, target),
        _ => None,
    };
    Answer {
        response: resp,
        upgrade,
        tunnel,
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
    let (fwd, max_body, _held) = {
        let mut step = rt.policy.on_request_cached(
            &view,
            &rt.fetched_keys(now.mono),
            &mut rt.token_caches.mine(),
            now,
        );
        if let Step::Respond(r) = &step
            && let Some(p) = rt.policy.unknown_key_provider(r)
            && let Some(h) = &rt.jwks[p.0]
            // Boxed: rare, and its future would otherwise grow every request's.
            && Box::pin(h.refetch_for_unknown_kid(now.mono)).await
        {
            // The keys were fetched again: the token is checked against them.
            let now = shared.clock.now();
            step = rt.policy.on_request_cached(
                &view,
                &rt.fetched_keys(now.mono),
                &mut rt.token_caches.mine(),
                now,
            );
        }
        let ticket = match step {
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
                if let Err(e) = &answer {
                    // The detail is for operators (the client gets a fixed message); the
                    // store logs each outage once, this is per request.
                    tracing::debug!("{e}");
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
        // One client may hold only so many upstream slots at once.
        let client = rt.policy.client_ip(peer.addr.ip(), &parts.headers);
        let max = rt.policy.config().server.max_requests_per_ip;
        let Some(held) = shared.requests_per_ip.enter(client, max) else {
            ex.reason = "client_concurrency";
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_concurrent_requests",
                format!("more than {max} requests in flight from this client"),
            );
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        };
        // A pick may half-open a breaker; that transition is logged with the outcome's.
        let mut balancer = lock(&rt.balancers[route]);
        match rt.policy.forward(ticket, &mut balancer, now) {
            Ok(f) => (f, max_body, held),
            Err(r) => {
                drop(balancer);
                return reply(r, ex);
            }
        }
    };
    let route = fwd.route.0;
    ex.user = fwd.user().cloned();
    let route_cfg = rt.policy.route(fwd.route);

    let body_done = (!body.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
    let limited = LimitedBody::new(body, max_body, body_done.clone());
    // What a retry may send again: no body, or one kept whole (small, of known length) for
    // a route that retries requests once sent.
    let bodiless = limited.is_end_stream();
    let keep = route_cfg.retry.retries > 0
        && !bodiless
        && limited
            .size_hint()
            .exact()
            .is_some_and(|n| n <= route_cfg.retry.max_body);
    let mut body = if keep {
        let kept = tokio::time::timeout(fwd.timeout, Box::pin(RequestBody::keep(limited))).await;
        match kept {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                let mut guard = guard_for(shared, rt, &fwd, ex);
                return body_failed(rt, &fwd, &mut guard, &SendError::Body(e), ex);
            }
            Err(_) => {
                let mut guard = guard_for(shared, rt, &fwd, ex);
                return client_too_slow(&mut guard, &fwd, ex);
            }
        }
    } else {
        RequestBody::Stream(limited)
    };
    let replayable = bodiless || keep;

    // An upgrade the route's server tunnels (WebSocket), read before hop-by-hop headers go.
    if parts.version == http::Version::HTTP_11 {
        ex.upgrade = rt.policy.upgrade(&parts.headers).cloned();
    }
    let original = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let first_pq = fwd.path_and_query(original);
    // Not the client's own target (the policy normalised or rewrote it): check it.
    let rewritten = (first_pq.as_ptr() != original.as_ptr()).then_some(&*first_pq);
    let forwarding = match forwarding(&mut parts.headers, &parts.uri, peer, &fwd, rewritten) {
        Ok(f) => f,
        Err(e) => {
            let mut guard = guard_for(shared, rt, &fwd, ex);
            guard.report(UpstreamOutcome::Cancelled);
            ex.reason = "bad_request";
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("cannot forward this path: {e}"),
            );
        }
    };
    drop(first_pq);
    let idempotency_key =
        route_cfg.retry.idempotency_key && header(&parts.headers, &IDEMPOTENCY_KEY).is_some();
    // The request's arrival stands for its first send time (the policy's microsecond between
    // them is not worth a clock read): the deadlines and upstream latency count from it.
    let started = ex.started;
    let all_tries_by = started + fwd.deadline;
    let metrics = &rt.routes[route].metrics;
    let mut fwd = fwd;
    loop {
        ex.target = Some(fwd.target());
        ex.attempts = fwd.try_number() as u32;
        let mut guard = guard_for(shared, rt, &fwd, ex);
        let sent = if fwd.try_number() == 1 {
            started
        } else {
            Instant::now()
        };
        let pq = fwd.path_and_query(original);
        let target = &rt.routes[route].targets[fwd.target()];
        let outgoing = upstream::Outgoing {
            method: &parts.method,
            path_and_query: &pq,
            headers: &parts.headers,
            set: upstream::SetHeaders {
                host: &target.host,
                forwarded_for: Some(forwarding.chain.as_ref().unwrap_or(&peer.ip_header)),
                forwarded_host: forwarding
                    .host
                    .as_ref()
                    .or_else(|| header(&parts.headers, &HOST)),
                request_id: &ex.request_id,
                upgrade: ex.upgrade.as_ref(),
                tls: peer.tls,
            },
        };
        let timing = upstream::Timing {
            connect_timeout: rt.policy.config().server.connect_timeout,
            now: sent,
            deadline: (sent + fwd.timeout).min(all_tries_by),
            body_stall: fwd.timeout,
        };
        let result = upstream::send(target, &outgoing, &mut body, timing).await;
        drop(pq);
        // How the try failed, if it did: for the breaker, and for the retry rule.
        let failed = match &result {
            Ok(resp) => {
                let answered = Instant::now();
                metrics.upstream_latency(answered.saturating_duration_since(sent));
                let status = resp.status().as_u16();
                guard.report_at(UpstreamOutcome::Status(status), answered);
                // Only a status the route retries on asks the policy (and takes its lock).
                (route_cfg.retry.retries > 0 && route_cfg.retry.on.contains(status))
                    .then_some((UpstreamOutcome::Status(status), true))
            }
            Err(SendError::Timeout)
                if body_done
                    .as_ref()
                    .is_some_and(|d| !d.load(Ordering::Relaxed)) =>
            {
                return client_too_slow(&mut guard, &fwd, ex);
            }
            Err(SendError::Timeout) => {
                metrics.upstream_latency(sent.elapsed());
                guard.report(UpstreamOutcome::Timeout);
                Some((UpstreamOutcome::Timeout, true))
            }
            // No connection: nothing was sent.
            Err(SendError::Connect(_)) => {
                metrics.upstream_latency(sent.elapsed());
                guard.report(UpstreamOutcome::ConnectError);
                Some((UpstreamOutcome::ConnectError, false))
            }
            // An https target's handshake failed (its certificate did not verify, most often):
            // counted like a refused connection, nothing was sent; the access line says why.
            Err(SendError::Tls(why)) => {
                metrics.upstream_latency(sent.elapsed());
                guard.report(UpstreamOutcome::ConnectError);
                ex.error = Some(why.clone());
                Some((UpstreamOutcome::ConnectError, false))
            }
            // The connection broke, or the upstream broke HTTP, after the request went out.
            Err(SendError::Exchange(_)) => {
                metrics.upstream_latency(sent.elapsed());
                guard.report(UpstreamOutcome::ConnectError);
                Some((UpstreamOutcome::ConnectError, true))
            }
            Err(e) => return body_failed(rt, &fwd, &mut guard, e, ex),
        };
        // Past the route's deadline no retry is asked for: a try the policy granted would
        // hold its target's in-flight count (and a half-open probe) with nobody to report it.
        if let Some((outcome, sent_any)) = failed
            && Instant::now() < all_tries_by
        {
            let now = shared.clock.now();
            let again = {
                let mut balancer = lock(&rt.balancers[route]);
                rt.policy.retry(
                    &fwd,
                    FailedTry {
                        outcome,
                        sent: sent_any,
                        method: &parts.method,
                        idempotency_key,
                        body_replayable: replayable,
                    },
                    &mut balancer,
                    now,
                )
            };
            if let Some(next) = again {
                metrics.retried();
                body.rewind();
                fwd = next;
                continue;
            }
        }
        return match result {
            Ok(resp) => respond(resp, &fwd, parts, ex),
            Err(e) => {
                let outcome = failed.map_or(UpstreamOutcome::ConnectError, |f| f.0);
                let why = match outcome {
                    UpstreamOutcome::Timeout => String::new(),
                    _ => detail(&e),
                };
                upstream_failed(rt, &fwd, outcome, &why, ex)
            }
        };
    }
}

/// The guard that reports `fwd`'s outcome once (as cancelled if the request is dropped).
fn guard_for<'a>(
    shared: &'a Shared,
    rt: &'a Runtime,
    fwd: &Forward,
    ex: &Exchange,
) -> OutcomeGuard<'a> {
    OutcomeGuard {
        shared,
        rt,
        route: fwd.route.0,
        attempt: Some(fwd.attempt),
        request_id: ex.request_id.clone(),
    }
}

/// The upstream's response, readied for the client.
fn respond(
    resp: Response<upstream::UpBody>,
    fwd: &Forward,
    parts: &http::request::Parts,
    ex: &mut Exchange,
) -> Response<ProxyBody> {
    let (mut head, body) = resp.into_parts();
    // A transfer coding besides chunked (gzip) stays on the body; only an HTTP/1.1 client
    // can be told so (HTTP/1.0 and HTTP/2 have no transfer codings).
    let coded = body.headers().is_some_and(|h| !h.codings.is_empty());
    if coded && parts.version != http::Version::HTTP_11 {
        ex.reason = "upstream_error";
        return error(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            "the upstream's response has a transfer coding this client cannot receive",
        );
    }
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

/// The client was still sending its body when the try's deadline came: its slowness, not
/// the upstream's. A slow uploader must not be able to open a circuit.
fn client_too_slow(
    guard: &mut OutcomeGuard<'_>,
    fwd: &Forward,
    ex: &mut Exchange,
) -> Response<ProxyBody> {
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

/// A try that failed for a reason that is not the target's: the request body (too large,
/// or the client's connection broke), a stale pooled connection, the gateway's own
/// resources, or no slot for the target. The breaker does not count these.
fn body_failed(
    rt: &Runtime,
    fwd: &Forward,
    guard: &mut OutcomeGuard<'_>,
    e: &SendError,
    ex: &mut Exchange,
) -> Response<ProxyBody> {
    guard.report(UpstreamOutcome::Cancelled);
    match e {
        SendError::Body(BodyError::TooLarge(_)) => {
            reply(rt.policy.body_too_large(fwd.route, None), ex)
        }
        SendError::Body(BodyError::Client(_)) => {
            ex.reason = "client_aborted";
            error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request body could not be read",
            )
        }
        SendError::Local(why) => {
            tracing::error!("the gateway cannot reach an upstream: {why}");
            ex.reason = "gateway_overloaded";
            overloaded("the gateway is out of local resources; retry shortly".into())
        }
        SendError::Busy(_) => {
            ex.reason = "upstream_busy";
            overloaded(format!("{}; retry shortly", detail(e)))
        }
        _ => {
            ex.reason = "upstream_error";
            error(StatusCode::BAD_GATEWAY, "bad_gateway", detail(e))
        }
    }
}

/// 503 with `Retry-After: 1`: the gateway itself cannot take the request now.
fn overloaded(message: String) -> Response<ProxyBody> {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message);
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The policy's 502 or 504 for a failed exchange (its outcome already reported).
fn upstream_failed(
    rt: &Runtime,
    fwd: &Forward,
    outcome: UpstreamOutcome,
    detail: &str,
    ex: &mut Exchange,
) -> Response<ProxyBody> {
    match rt
        .policy
        .upstream_failure(fwd.route, fwd.target(), outcome, detail)
    {
        Some(r) => reply(r, ex),
        None => error(StatusCode::BAD_GATEWAY, "bad_gateway", detail.to_owned()),
    }
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
