//! The client side of a connection: one HTTP/1.1 server loop over one byte stream, in one
//! task, for the proxy listener and the admin listener alike (same limits, same timeouts).
//!
//! ```text
//!   read head (reused buffer, header_read_timeout) ─▶ gateway::handle (same task; watches
//!   for the client leaving) ─▶ write head + body (coalesced, one write for a small response)
//!   ─▶ keep-alive? next head : close (lingering when request bytes are left unread)
//! ```
//!
//! A connection that opens with the HTTP/2 preface is handed to hyper's HTTP/2 server (`h2`).
//! The request body is read by whoever polls [`ReqBody`] (the upstream exchange), from the
//! same buffer the loop reads heads from. The loop is generic over the stream: a TCP socket
//! in the gateway, an in-memory pipe in tests (which then run on paused time).

mod body;
mod conn;
mod h2;
mod respond;
mod tls;
mod tunnel;

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use http::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

pub use body::ReqBody;
use conn::{Conn, lock};
pub use h2::CLOSE_GRACE;
use respond::{Out, close, respond_and_close, write_response, write_upgrade};
pub use tls::serve_tls;

use crate::gateway::{self, Listener};
use crate::h1::{self, BodyDecoder, Framing, HeadError};
use crate::record::Peer;
use crate::state::{Runtime, Shared};
use crate::time::Timer;

/// Per-connection settings from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_uri: usize,
    pub max_head: usize,
    /// HTTP/2 connections' limits (`h2_*` in `[server]`).
    pub h2: aegis_policy::config::H2Limits,
}

impl Limits {
    pub fn new(server: &aegis_policy::config::ServerConfig) -> Limits {
        Limits {
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            max_uri: server.max_uri_bytes,
            // The policy refuses heads past its limits with 414/431; the buffer holds a bit
            // more so that it is the one to answer.
            max_head: server.max_header_bytes + server.max_uri_bytes + 1024,
            h2: server.h2,
        }
    }
}

/// One connection in the process's count of open ones, while it lives; `.0` is the count
/// with it.
struct Counted<'a>(usize, &'a AtomicUsize);

impl Counted<'_> {
    fn enter(n: &AtomicUsize) -> Counted<'_> {
        Counted(n.fetch_add(1, Ordering::Relaxed) + 1, n)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.1.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How waiting for a request head ended.
enum HeadRead {
    Head(h1::RequestHead),
    /// The client closed between requests, or the worker is stopping.
    Closed,
    /// No head within `header_read_timeout`; `true` if part of one had arrived.
    TimedOut(bool),
    Failed(HeadError),
    Io,
}

/// Serves one accepted connection until it closes. `stop`: the worker's stop signal; a
/// connection finishes the exchange in flight, then closes.
pub async fn serve<S>(
    stream: S,
    peer: Peer,
    shared: Arc<Shared>,
    listener: Listener,
    limits: Limits,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let _open = crate::observe::metrics::GaugeGuard::enter(shared.metrics.connections.mine());
    let conn = conn::new(stream);
    // The connection caps: past one, a 503 and the close, before a byte is read.
    let counted = Counted::enter(&shared.connections);
    let (max_total, max_per_ip) = {
        let rt = shared.runtime.load();
        let server = &rt.policy.config().server;
        (server.max_connections, server.max_connections_per_ip)
    };
    let held = shared.connections_per_ip.enter(peer.addr.ip(), max_per_ip);
    if counted.0 > max_total || held.is_none() {
        let mut body = gateway::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            if held.is_none() {
                "too many connections from this client"
            } else {
                "too many connections"
            },
        );
        body.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        let out = Out {
            request_id: None,
            version: http::Version::HTTP_11,
            head_request: false,
            keep: false,
            stall: limits.idle_timeout,
            upgrade: None,
        };
        let (mut wbuf, mut timer) = (Vec::new(), Timer::default());
        if write_response(&conn, &mut wbuf, body, out, &mut timer)
            .await
            .is_ok()
        {
            close(&conn, false).await;
        }
        return;
    }
    // The HTTP/1.1 loop's state (buffers, timer, head) is gone before an HTTP/2 connection
    // or a tunnel begins: they keep only what they need.
    match serve_h1(&conn, &peer, &shared, listener, &limits, &stop).await {
        Served::Closed => {}
        // Boxed, as the exchange below: an idle HTTP/1.1 connection's task holds only the
        // loop's own state, not the largest future it might run (issue 13: memory per idle
        // connection). One allocation per connection that becomes HTTP/2 or a tunnel.
        Served::H2Preface => {
            Box::pin(h2::serve(
                conn,
                peer,
                shared.clone(),
                listener,
                limits,
                &stop,
            ))
            .await;
        }
        Served::Upgraded(up) => {
            if let Ok(io) = std::rc::Rc::try_unwrap(conn).map(std::cell::RefCell::into_inner) {
                Box::pin(tunnel(&shared, io, *up)).await;
            }
        }
    }
}

/// How the HTTP/1.1 loop ended.
#[derive(Debug)]
enum Served {
    Closed,
    /// The connection opened with the HTTP/2 preface: hand it to `h2`.
    H2Preface,
    /// A `101` went out to an upgrade: the connection becomes a tunnel.
    Upgraded(Box<Upgraded>),
}

/// An upgraded connection's other end and what its access line names.
#[derive(Debug)]
struct Upgraded {
    upstream: crate::upstream::Stream,
    /// What the upstream sent past its `101`.
    early: Vec<u8>,
    method: Method,
    path_and_query: String,
    request_id: crate::record::RequestId,
    /// The tunnel's count among its target's requests in flight, until it closes.
    lease: Option<gateway::TunnelLease>,
}

/// The HTTP/1.1 loop: requests until the connection closes, the HTTP/2 preface, or an
/// upgrade.
async fn serve_h1<S>(
    conn: &Conn<S>,
    peer: &Peer,
    shared: &Arc<Shared>,
    listener: Listener,
    limits: &Limits,
    stop: &CancellationToken,
) -> Served
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let mut timer = Timer::default();
    let mut wbuf = Vec::new();
    let mut stopped = pin!(stop.cancelled());
    // The config a request runs on: checked per request with one atomic load, the Arc
    // cloned only when a reload swapped it.
    let mut runtime = arc_swap::Cache::new(&shared.runtime);
    // The request head, refilled by each request (its header map's allocation is kept).
    let (mut parts, ()) = Request::new(()).into_parts();
    let mut first = true;
    loop {
        // The first head must come within header_read_timeout; later ones may wait
        // idle_timeout for their first byte, then have header_read_timeout to complete.
        let idle = if first {
            limits.header_read_timeout
        } else {
            limits.idle_timeout
        };
        let deadline = Instant::now() + idle;
        let read = read_head(
            conn,
            limits,
            deadline,
            &mut timer,
            stopped.as_mut(),
            &mut parts,
        )
        .await;
        let head = match read {
            HeadRead::Head(h) => h,
            HeadRead::Failed(HeadError::H2Preface) if first && !stop.is_cancelled() => {
                return Served::H2Preface;
            }
            HeadRead::Failed(e) => {
                let body = gateway::error(e.status(), "bad_request", e.message());
                let _ =
                    respond_and_close(conn, &mut wbuf, body, &mut timer, limits.idle_timeout).await;
                return Served::Closed;
            }
            HeadRead::TimedOut(true) => {
                let body = gateway::error(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the request head did not arrive within server.header_read_timeout",
                );
                let _ =
                    respond_and_close(conn, &mut wbuf, body, &mut timer, limits.idle_timeout).await;
                return Served::Closed;
            }
            HeadRead::TimedOut(false) | HeadRead::Closed | HeadRead::Io => return Served::Closed,
        };
        first = false;
        let h1::RequestHead {
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let version = parts.version;
        let head_request = parts.method == Method::HEAD;
        let body = if framing == Framing::Length(0) {
            ReqBody::empty()
        } else {
            ReqBody::new(conn, BodyDecoder::new(framing), expect_continue)
        };
        let rt = runtime.load();
        // The exchange's future (routing, auth, the upstream client, retries) is the largest
        // part of this loop's state; boxed, it exists only while a request is in flight, and an
        // idle keep-alive connection's task stays small (one allocation per request).
        let watched = handle_watching(conn, limits, shared, rt, listener, peer, &mut parts, body);
        let Some(answer) = Box::pin(watched).await else {
            // The client left; the exchange was dropped (its outcome reported as cancelled).
            return Served::Closed;
        };
        if let Some(proto) = answer.upgrade.clone() {
            // A 101 to an upgrade: the connection becomes a tunnel to the upstream's.
            let out = Out {
                request_id: Some(&answer.request_id),
                version,
                head_request,
                keep: true,
                stall: limits.idle_timeout,
                upgrade: Some(&proto),
            };
            let upgraded = write_upgrade(conn, &mut wbuf, answer.response, out, &mut timer).await;
            return match upgraded {
                Ok(Some((upstream, early))) => Served::Upgraded(Box::new(Upgraded {
                    upstream,
                    early,
                    method: parts.method.clone(),
                    path_and_query: parts
                        .uri
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_owned(),
                    request_id: answer.request_id,
                    lease: answer.tunnel,
                })),
                _ => Served::Closed,
            };
        }
        let unread = {
            let mut io = lock(conn);
            io.continue_left = b"";
            io.body.is_some()
        };
        // Stopping: this answer says `connection: close`.
        let keep = keep_alive && !unread && !stop.is_cancelled();
        let out = Out {
            request_id: Some(&answer.request_id),
            version,
            head_request,
            keep,
            stall: limits.idle_timeout,
            upgrade: None,
        };
        let written = write_response(conn, &mut wbuf, answer.response, out, &mut timer).await;
        match written {
            Ok(true) if keep => {}
            Ok(_) => {
                close(conn, unread).await;
                return Served::Closed;
            }
            Err(_) => return Served::Closed,
        }
        // A stop that came during the write is seen by the next read_head (between requests
        // it closes at once): one cancellation check per request, not two.
    }
}

/// Runs the tunnel of an upgraded connection (what the client and the upstream sent past
/// their heads goes first), counted in the metrics and logged when it ends.
async fn tunnel<S: AsyncRead + AsyncWrite + Unpin>(shared: &Shared, io: conn::Io<S>, up: Upgraded) {
    let Upgraded {
        upstream,
        early,
        method,
        path_and_query: pq,
        request_id,
        lease,
    } = up;
    let conn::Io {
        stream, mut rbuf, ..
    } = io;
    let client = conn::Prefixed {
        prefix: rbuf.take_filled(),
        pos: 0,
        io: stream,
    };
    let upstream = conn::Prefixed {
        prefix: early,
        pos: 0,
        io: upstream,
    };
    let idle = shared
        .runtime
        .load()
        .policy
        .config()
        .server
        .websocket_idle_timeout;
    let metrics = &shared.metrics;
    let started = Instant::now();
    let done = {
        let _open = crate::observe::metrics::GaugeGuard::enter(metrics.tunnels.mine());
        tunnel::run(client, upstream, idle).await
    };
    // Closed: its target's in-flight count gives it back.
    drop(lease);
    metrics.tunnel_bytes(done.up, done.down);
    tracing::info!(
        target: "aegis::access",
        "[{}] {pq} tunnel closed after {}ms{}: {} bytes up, {} bytes down [{}]",
        method,
        started.elapsed().as_millis(),
        if done.idle_out { " (idle)" } else { "" },
        done.up,
        done.down,
        request_id.as_str()
    );
}

/// Reads the next request head: from what is buffered, else from the stream, until
/// `deadline`. Between requests (nothing buffered) it also ends when the worker stops.
async fn read_head<S: AsyncRead + Unpin>(
    conn: &Conn<S>,
    limits: &Limits,
    idle_deadline: Instant,
    timer: &mut Timer,
    mut stopped: Pin<&mut WaitForCancellationFuture<'_>>,
    parts: &mut http::request::Parts,
) -> HeadRead {
    let mut head_deadline = None;
    poll_fn(|cx| {
        let mut guard = lock(conn);
        let io = &mut *guard;
        loop {
            if !io.rbuf.is_empty() {
                match h1::parse_request(io.rbuf.filled(), limits.max_uri, limits.max_head, parts) {
                    Ok(Some((n, head))) => {
                        io.rbuf.consume(n);
                        return Poll::Ready(HeadRead::Head(head));
                    }
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(HeadRead::Failed(e)),
                }
            }
            match io.rbuf.poll_fill(cx, &mut io.stream, limits.max_head) {
                Poll::Ready(Ok(0)) => return Poll::Ready(HeadRead::Closed),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::OutOfMemory => {
                    return Poll::Ready(HeadRead::Failed(HeadError::HeadersTooLarge));
                }
                Poll::Ready(Err(_)) => return Poll::Ready(HeadRead::Io),
                Poll::Pending => break,
            }
        }
        let partial = !io.rbuf.is_empty();
        if !partial {
            // Waiting for the next request: no buffer or header map held meanwhile.
            io.rbuf.park();
            h1::park_headers(&mut parts.headers);
        }
        drop(guard);
        if !partial && stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(HeadRead::Closed);
        }
        // Part of a head: it must be complete within header_read_timeout of this moment
        // (a clock read only for heads that arrive in pieces).
        if partial && head_deadline.is_none() {
            head_deadline = Some(Instant::now() + limits.header_read_timeout);
        }
        if timer.timed_out(head_deadline.unwrap_or(idle_deadline), cx) {
            return Poll::Ready(HeadRead::TimedOut(partial));
        }
        Poll::Pending
    })
    .await
}

/// Runs the exchange; while it waits for the upstream (with the request body all read), a
/// client that closes its connection cancels it. `None`: the client left.
#[allow(clippy::too_many_arguments)]
async fn handle_watching<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &Conn<S>,
    limits: &Limits,
    shared: &Shared,
    rt: &Runtime,
    listener: Listener,
    peer: &Peer,
    parts: &mut http::request::Parts,
    body: ReqBody<S>,
) -> Option<gateway::Answer> {
    // Made here, in place: the exchange's future is large, and moving it costs a copy.
    let mut fut = pin!(gateway::handle(shared, rt, listener, peer, parts, body));
    let mut watching = true;
    poll_fn(|cx| {
        if let Poll::Ready(resp) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(resp));
        }
        if watching {
            let mut guard = lock(conn);
            let io = &mut *guard;
            if io.body.is_none() {
                match io.rbuf.poll_fill(cx, &mut io.stream, limits.max_head) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(None),
                    // The next request, pipelined (or no room for more): it waits its turn.
                    Poll::Ready(Ok(_)) => watching = false,
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::OutOfMemory => {
                        watching = false;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Pending => {}
                }
            }
        }
        Poll::Pending
    })
    .await
}
