//! The upstream client: sends a request on a pooled connection (or a new one) and reads the
//! response head; the body is left for [`UpBody`] to read as it is polled.
//!
//! An exchange runs inside the task of the request it serves: the request head and body are
//! written and the response head read by that task, and the response body is read by whoever
//! polls the returned [`UpBody`] (the downstream connection writing it to the client). No
//! per-connection task, no channel, no wake-up of another task. A body-less request on a
//! reused connection that the upstream closed before answering is sent again on a fresh one
//! (the upstream cannot have acted on it: it sent nothing back and the connection was idle).

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Response};
use hyper::body::Body;
use tokio::net::TcpStream;

use super::body::UpBody;
use super::pool::{self, BodyState, Conn, MAX_RESPONSE_HEAD};
use super::stream::Stream;
use super::target::{NoSlot, Target};
use aegis_policy::retry::resend_on_stale;

use crate::error::BodyError;
use crate::h1::{self, BodyDecoder, Framing, Pumped};
use crate::headers::{X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID};
use crate::record::RequestId;
use crate::time::Stall;

/// Pooled connections found closed under one request before a fresh one is made.
const STALE_RETRIES: usize = 4;

/// How an exchange failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection: DNS, refused, or the connect timeout.
    Connect(String),
    /// An https target's TLS handshake failed (its certificate did not verify, most often):
    /// the target's fault, like a refused connection.
    Tls(String),
    /// The connection failed, or the upstream broke HTTP, before a whole response head.
    Exchange(String),
    /// A pooled connection the upstream closed just as the request went out, and the request
    /// may not be sent again (it is not idempotent, or its body is gone): a race, not the
    /// target's fault.
    Stale(String),
    /// The gateway itself is out of a resource (file descriptors, local ports, memory): not
    /// the target's fault.
    Local(String),
    /// No in-flight slot for the target came free (`[upstream] max_requests_per_target`).
    Busy(NoSlot),
    /// The request body failed (too large, or the client's connection broke).
    Body(BodyError),
    /// No response head by the route's deadline.
    Timeout,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "could not connect: {e}"),
            SendError::Tls(e) => f.write_str(e),
            SendError::Exchange(e) | SendError::Stale(e) => f.write_str(e),
            SendError::Local(e) => write!(f, "the gateway is out of local resources: {e}"),
            SendError::Busy(NoSlot::QueueFull) => {
                f.write_str("too many requests are already waiting for this target")
            }
            SendError::Busy(NoSlot::TimedOut) => {
                f.write_str("no slot for this target came free in time")
            }
            SendError::Body(e) => write!(f, "{e}"),
            SendError::Timeout => f.write_str("no response in time"),
        }
    }
}

/// An error of this machine, not of the network or the peer: descriptors, ports, memory.
fn is_local(e: &io::Error) -> bool {
    // Linux errno values: ENOMEM 12, ENFILE 23, EMFILE 24, EADDRNOTAVAIL 99, ENOBUFS 105.
    e.kind() == io::ErrorKind::AddrNotAvailable
        || e.kind() == io::ErrorKind::OutOfMemory
        || matches!(e.raw_os_error(), Some(12 | 23 | 24 | 99 | 105))
}

/// Sends `req` (origin-form URI, `Host` set) to `authority` on a pooled connection, or a new
/// one, and returns the response head with its body still to be read from the connection.
/// The body is borrowed: when no connection could be made it is untouched, and the caller
/// may send it elsewhere.
pub async fn send<B>(
    target: &Target,
    out: &Outgoing<'_>,
    body: &mut B,
    timing: Timing,
) -> Result<Response<UpBody>, SendError>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    let Timing {
        connect_timeout,
        now,
        deadline,
        body_stall,
    } = timing;
    let framing = if body.is_end_stream() {
        None
    } else {
        Some(
            body.size_hint()
                .exact()
                .map_or(Framing::Chunked, Framing::Length),
        )
    };
    let head_request = out.method == Method::HEAD;
    // A slot first: at once when one is free (the common case, kept out of the future's
    // size), else waiting in line.
    let permit = match target.slots.try_take() {
        Some(p) => p,
        None => Box::pin(target.slots.wait())
            .await
            .map_err(SendError::Busy)?,
    };
    let mut permit = Some(permit);

    let mut tries = 0;
    loop {
        let pooled = if tries < STALE_RETRIES {
            poll_fn(|cx| Poll::Ready(pool::checkout(target.pool, now, cx))).await
        } else {
            None
        };
        tries += 1;
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(SendError::Timeout);
                }
                // Boxed: a new connection is rare next to a pooled one, and its future would
                // otherwise be moved (copied) with every request's.
                match Box::pin(connect(target, connect_timeout.min(left))).await {
                    Err(SendError::Connect(_))
                        if left < connect_timeout && Instant::now() >= deadline =>
                    {
                        return Err(SendError::Timeout);
                    }
                    c => c?,
                }
            }
        };
        let mut wbuf = h1::take_write_buf();
        put_request_head(&mut wbuf, out, framing);
        // Request bytes written on this connection (for the resend rule).
        let mut sent = 0;
        let result = {
            let mut timer = std::mem::take(&mut conn.timer);
            let r = {
                let mut ex = pin!(exchange(
                    &mut conn,
                    &mut wbuf,
                    &mut *body,
                    framing,
                    head_request,
                    out.set.upgrade.is_some(),
                    &mut sent,
                ));
                poll_fn(|cx| {
                    if let Poll::Ready(r) = ex.as_mut().poll(cx) {
                        return Poll::Ready(Some(r));
                    }
                    if timer.timed_out(deadline, cx) {
                        return Poll::Ready(None);
                    }
                    Poll::Pending
                })
                .await
            };
            conn.timer = timer;
            r
        };
        let Some(result) = result else {
            // The connection is mid-exchange: it goes.
            return Err(SendError::Timeout);
        };
        h1::give_write_buf(wbuf);
        match result {
            Ok((head, complete)) => {
                conn.body = BodyState {
                    decoder: BodyDecoder::new(head.framing),
                    // A connection that was asked to switch protocols is not used again.
                    reusable: head.keep_alive && complete && out.set.upgrade.is_none(),
                    stall: body_stall,
                    stalled: Stall::default(),
                };
                conn.permit = permit.take();
                let mut resp = Response::new(UpBody {
                    conn: Some(conn),
                    key: target.pool,
                });
                *resp.status_mut() = head.status;
                *resp.version_mut() = head.version;
                // An empty body's connection goes back to the pool when the body is dropped
                // (its headers, in the connection, are read until then).
                return Ok(resp);
            }
            // A kept-alive connection the upstream closed as the request went out: again on a
            // fresh one only if the upstream cannot have acted on it or may repeat it.
            Err(Failure::Stale)
                if reused && resend_on_stale(out.method, sent > 0, framing.is_some()) =>
            {
                continue;
            }
            Err(Failure::Stale) if reused => {
                return Err(SendError::Stale(format!(
                    "the upstream closed its kept-alive connection as the request went out; \
                     a {} {} is not sent twice",
                    out.method,
                    if framing.is_some() {
                        "with a body"
                    } else {
                        "request"
                    }
                )));
            }
            Err(Failure::Stale) => {
                return Err(SendError::Exchange(
                    "the upstream closed the connection before answering".into(),
                ));
            }
            Err(Failure::Send(e)) => return Err(e),
        }
    }
}

/// Why one attempt failed.
enum Failure {
    /// The connection closed (or reset) before a single response byte.
    Stale,
    Send(SendError),
}

/// Writes the request and reads the response head: the head, and whether the whole request
/// was written (an upstream may answer before reading all of the body).
#[allow(clippy::too_many_arguments)]
async fn exchange<B>(
    conn: &mut Conn,
    wbuf: &mut Vec<u8>,
    body: &mut B,
    framing: Option<Framing>,
    head_request: bool,
    upgrade: bool,
    sent: &mut u64,
) -> Result<(h1::ResponseHead, bool), Failure>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    // Write the head and the body; stop early if the upstream starts answering.
    let mut pump = h1::Pump::new(framing);
    let written = poll_fn(|cx| {
        let pumped = pump.poll(cx, wbuf, Pin::new(&mut *body), &mut conn.io);
        *sent = pump.written();
        match pumped {
            Pumped::Done => Poll::Ready(Ok(Written::Complete)),
            Pumped::WritePending | Pumped::BodyPending => answered_early(conn, cx),
            // A write of nothing: the connection is gone.
            Pumped::WriteFailed(e) if e.kind() == io::ErrorKind::WriteZero => {
                Poll::Ready(Err(Failure::Stale))
            }
            // The upstream may have answered, then reset the connection under the rest of the
            // body: its answer can still be read.
            Pumped::WriteFailed(e) => Poll::Ready(Ok(Written::Broken(e))),
            Pumped::BodyFailed(e) => Poll::Ready(Err(Failure::Send(SendError::Body(e)))),
        }
    })
    .await?;
    let (complete, mut broken) = match written {
        Written::Complete => (true, None),
        Written::Early => (false, None),
        Written::Broken(e) => (false, Some(e)),
    };

    // Read the response head, skipping interim (1xx) responses.
    poll_fn(|cx| {
        loop {
            if !conn.rbuf.is_empty() {
                let parsed = h1::parse_response(
                    conn.rbuf.filled(),
                    head_request,
                    MAX_RESPONSE_HEAD,
                    &mut conn.headers,
                );
                match parsed {
                    Ok(Some((n, head))) => {
                        conn.rbuf.consume(n);
                        let status = head.status;
                        if status == http::StatusCode::SWITCHING_PROTOCOLS && upgrade {
                            return Poll::Ready(Ok((head, complete)));
                        }
                        if status == http::StatusCode::SWITCHING_PROTOCOLS {
                            // No upgrade was asked for: a 101 cannot be an answer.
                            return Poll::Ready(Err(Failure::Send(SendError::Exchange(
                                "the upstream switched protocols (101) though no upgrade was \
                                 asked for"
                                    .into(),
                            ))));
                        }
                        if status.is_informational() {
                            continue;
                        }
                        return Poll::Ready(Ok((head, complete)));
                    }
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(Failure::Send(SendError::Exchange(e)))),
                }
            }
            let empty = conn.rbuf.is_empty();
            let filled = conn.rbuf.poll_fill(cx, &mut conn.io, MAX_RESPONSE_HEAD);
            if empty
                && matches!(filled, Poll::Ready(Ok(0) | Err(_)))
                && let Some(e) = broken.take()
            {
                // Nothing was answered before the write failed: that failure is the answer.
                return Poll::Ready(Err(io_failure(e, conn)));
            }
            match filled {
                Poll::Ready(Ok(0)) if empty => return Poll::Ready(Err(Failure::Stale)),
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Failure::Send(SendError::Exchange(
                        "the upstream closed the connection mid-response".into(),
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(io_failure(e, conn))),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// How writing a request ended.
enum Written {
    Complete,
    /// The upstream began its response before the whole body was written.
    Early,
    /// Writing failed; the upstream may still have answered first.
    Broken(io::Error),
}

/// While the request is still being written: the upstream has begun its response (stop
/// writing, read it) or closed; otherwise wait.
fn answered_early(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<Written, Failure>> {
    match conn.rbuf.poll_fill(cx, &mut conn.io, MAX_RESPONSE_HEAD) {
        Poll::Ready(Ok(0)) => Poll::Ready(Err(Failure::Stale)),
        Poll::Ready(Ok(_)) => Poll::Ready(Ok(Written::Early)),
        Poll::Ready(Err(e)) => Poll::Ready(Err(io_failure(e, conn))),
        Poll::Pending => Poll::Pending,
    }
}

/// A reset or broken pipe before any response byte is a stale connection; anything else is
/// the exchange's failure.
fn io_failure(e: io::Error, conn: &Conn) -> Failure {
    let stale = matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    );
    if stale && conn.rbuf.is_empty() {
        Failure::Stale
    } else {
        Failure::Send(SendError::Exchange(e.to_string()))
    }
}

/// The request to send upstream, borrowed from the client's.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub method: &'a Method,
    /// Origin form: `/path?query`.
    pub path_and_query: &'a str,
    /// The client's headers, hop-by-hop ones removed.
    pub headers: &'a HeaderMap,
    pub set: SetHeaders<'a>,
}

/// When an exchange starts and must end.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub connect_timeout: Duration,
    /// When the request is sent (for pooled connections' idle time).
    pub now: Instant,
    /// No response head by then: [`SendError::Timeout`].
    pub deadline: Instant,
    /// The response body fails if the upstream sends none of it for this long.
    pub body_stall: Duration,
}

/// Headers the gateway sets on every upstream request: written after the client's, and any
/// of the client's with these names are not.
#[derive(Debug)]
pub struct SetHeaders<'a> {
    pub host: &'a HeaderValue,
    /// `None`: a request of the gateway's own (a health check), on no client's behalf.
    pub forwarded_for: Option<&'a HeaderValue>,
    pub forwarded_host: Option<&'a HeaderValue>,
    pub request_id: &'a RequestId,
    /// The client connection is TLS: `X-Forwarded-Proto: https`.
    pub tls: bool,
    /// The protocol to switch to (`Upgrade: websocket`), when the request asks for a tunnel.
    pub upgrade: Option<&'a HeaderValue>,
}

/// `METHOD /path?query HTTP/1.1`, the headers, the set headers, and the framing header of the
/// body sent.
fn put_request_head(out: &mut Vec<u8>, req: &Outgoing<'_>, framing: Option<Framing>) {
    let set = &req.set;
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers {
        if name == CONTENT_LENGTH
            || name == TRANSFER_ENCODING
            || name == HOST
            || name == X_FORWARDED_PROTO
            || name == X_FORWARDED_HOST
            || name == X_REQUEST_ID
        {
            continue;
        }
        put_header(out, name.as_str(), value);
    }
    put_header(out, "host", set.host);
    if let Some(f) = set.forwarded_for {
        put_header(out, "x-forwarded-for", f);
        out.extend_from_slice(if set.tls {
            b"x-forwarded-proto: https\r\n"
        } else {
            b"x-forwarded-proto: http\r\n"
        });
    }
    if let Some(h) = set.forwarded_host {
        put_header(out, "x-forwarded-host", h);
    }
    h1::put_header(out, b"x-request-id", set.request_id.as_bytes());
    if let Some(u) = set.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
        put_header(out, "upgrade", u);
    }
    match framing {
        Some(Framing::Length(n)) => {
            out.extend_from_slice(b"content-length: ");
            h1::put_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Some(Framing::Chunked) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // A body-less request that said so keeps saying so.
        None if aegis_policy::header(req.headers, &CONTENT_LENGTH).is_some() => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

fn put_header(out: &mut Vec<u8>, name: &str, value: &HeaderValue) {
    h1::put_header(out, name.as_bytes(), value.as_bytes());
}

async fn connect(target: &Target, timeout: Duration) -> Result<Box<Conn>, SendError> {
    let authority = &target.authority;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let default_port = if target.tls.is_some() { 443 } else { 80 };
    let port = authority.port_u16().unwrap_or(default_port);
    let started = Instant::now();
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| SendError::Connect(format!("connect timed out after {timeout:?}")))?
        .map_err(|e| {
            if is_local(&e) {
                SendError::Local(format!("connecting to {authority}: {e}"))
            } else {
                SendError::Connect(e.to_string())
            }
        })?;
    let _ = tcp.set_nodelay(true);
    let io = match &target.tls {
        None => Stream::Plain(tcp),
        // The handshake shares the connect timeout. Boxed: rare next to pooled reuse.
        Some((config, name)) => {
            let left = timeout.saturating_sub(started.elapsed());
            let handshake =
                tokio_rustls::TlsConnector::from(config.clone()).connect(name.clone(), tcp);
            let tls = tokio::time::timeout(left, Box::pin(handshake))
                .await
                .map_err(|_| SendError::Tls(format!("TLS handshake timed out after {timeout:?}")))?
                .map_err(|e| SendError::Tls(format!("TLS handshake failed: {e}")))?;
            Stream::Tls(Box::new(tls))
        }
    };
    Ok(Conn::new(io, target.idle_timeout, target.max_idle))
}
