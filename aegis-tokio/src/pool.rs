//! The upstream client: HTTP/1.1 keep-alive connections per target authority, one pool per
//! worker thread (no locks; a connection is only ever used by the thread that made it).
//!
//! An exchange runs inside the task of the request it serves: the request head and body are
//! written and the response head read by that task, and the response body is read by whoever
//! polls the returned [`UpBody`] (the downstream connection writing it to the client). No
//! per-connection task, no channel, no wake-up of another task. When the body has been read
//! to its end the connection goes back to the pool.
//!
//! Idle connections sit in the pool unpolled; one the upstream closed (or that holds stray
//! bytes) is seen as readable when checked out and dropped. Idle for [`IDLE`] or beyond
//! [`MAX_IDLE`] per target, they are closed. A body-less request on a reused connection that
//! the upstream closed before answering is sent again on a fresh one (the upstream cannot have
//! acted on it: it sent nothing back and the connection was idle).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::timer::{Stall, Timer};
use bytes::Bytes;
use http::HeaderValue;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::Authority;
use http::{HeaderMap, Method, Response};
use hyper::body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use crate::h1::{self, BodyDecoder, Framing, Pumped, ReadBuf, Step};
use crate::proxy::{BodyError, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID};
use crate::runtime::Target;

/// An idle pooled connection is closed after this long.
const IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per target per worker; more are closed when released.
const MAX_IDLE: usize = 512;
/// Pooled connections found closed under one request before a fresh one is made.
const STALE_RETRIES: usize = 4;
/// The largest response head accepted from an upstream.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// One upstream connection, its buffers, its timer and the state of the response it is
/// reading. Boxed: it is moved in and out of the pool and through every response body, a
/// pointer is cheaper to move (and the response's state rides along without being copied).
#[derive(Debug)]
struct Conn {
    io: TcpStream,
    rbuf: ReadBuf,
    /// Pooled and unused until then: closed (set when pooled, [`IDLE`] after use).
    idle_until: Instant,
    timer: Timer,
    /// The request being written (kept for the connection's next request).
    wbuf: Vec<u8>,
    /// The current response's headers (their buffer kept for the next response).
    headers: h1::RawHeaders,
    body: BodyState,
}

/// Where the current response's body is.
#[derive(Debug)]
struct BodyState {
    decoder: BodyDecoder,
    /// The connection can carry another exchange after this body.
    reusable: bool,
    /// When the exchange began (the connection's idle time counts from it once pooled).
    began: Instant,
    /// No body bytes for this long fails the body (the route's timeout).
    stall: Duration,
    /// Body bytes read so far, and the deadline while none come.
    read: u64,
    stalled: Stall,
}

impl Conn {
    /// Still usable: nothing to read (the upstream has not closed it nor sent stray bytes).
    fn is_quiet(&mut self, cx: &mut Context<'_>) -> bool {
        self.rbuf.is_empty()
            && self
                .rbuf
                .poll_fill(cx, &mut self.io, MAX_RESPONSE_HEAD)
                .is_pending()
    }
}

/// A target authority's slot in every worker's pool: one number per authority for the life
/// of the process (reloads that keep a target keep its pooled connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(usize);

/// The slot of `authority`, assigned the first time it is seen.
pub fn key(authority: &Authority) -> Key {
    static KEYS: Mutex<Option<HashMap<Authority, usize>>> = Mutex::new(None);
    let mut keys = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
    let keys = keys.get_or_insert_with(HashMap::default);
    let next = keys.len();
    Key(*keys.entry(authority.clone()).or_insert(next))
}

thread_local! {
    /// Idle connections by [`Key`].
    static POOL: RefCell<Vec<VecDeque<Box<Conn>>>> = const { RefCell::new(Vec::new()) };
}

/// Takes the most recently used live idle connection of slot `key`.
fn checkout(key: Key, now: Instant, cx: &mut Context<'_>) -> Option<Box<Conn>> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.get_mut(key.0)?;
        while let Some(mut c) = list.pop_back() {
            if c.idle_until <= now {
                // The rest are older still.
                list.clear();
                return None;
            }
            if c.is_quiet(cx) {
                return Some(c);
            }
        }
        None
    })
}

/// Puts a connection whose exchange is complete back in the pool. `now`: when the exchange
/// began (idle expiry is 90 s: the request's own duration does not matter, a clock read does).
fn release(key: Key, mut conn: Box<Conn>, now: Instant) {
    conn.idle_until = now + IDLE;
    // `try_with`: a body dropped while its thread shuts down (the pool already gone) just
    // closes its connection.
    let _ = POOL.try_with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return;
        };
        if p.len() <= key.0 {
            p.resize_with(key.0 + 1, VecDeque::new);
        }
        let list = &mut p[key.0];
        while list.front().is_some_and(|c| c.idle_until <= now) {
            list.pop_front();
        }
        if list.len() < MAX_IDLE {
            list.push_back(conn);
        }
    });
}

/// How an exchange failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection: DNS, refused, or the connect timeout.
    Connect(String),
    /// The connection failed, or the upstream broke HTTP, before a whole response head.
    Exchange(String),
    /// The request body failed (too large, or the client's connection broke).
    Body(BodyError),
    /// No response head by the route's deadline.
    Timeout,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "could not connect: {e}"),
            SendError::Exchange(e) => f.write_str(e),
            SendError::Body(e) => write!(f, "{e}"),
            SendError::Timeout => f.write_str("no response in time"),
        }
    }
}

/// Sends `req` (origin-form URI, `Host` set) to `authority` on a pooled connection, or a new
/// one, and returns the response head with its body still to be read from the connection.
pub async fn send<B>(
    target: &Target,
    out: &Outgoing<'_>,
    mut body: B,
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

    let mut tries = 0;
    loop {
        let pooled = if tries < STALE_RETRIES {
            poll_fn(|cx| Poll::Ready(checkout(target.pool, now, cx))).await
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
                match Box::pin(connect(&target.authority, connect_timeout.min(left))).await {
                    Err(SendError::Connect(_))
                        if left < connect_timeout && Instant::now() >= deadline =>
                    {
                        return Err(SendError::Timeout);
                    }
                    c => c?,
                }
            }
        };
        let mut wbuf = std::mem::take(&mut conn.wbuf);
        wbuf.clear();
        put_request_head(&mut wbuf, out, framing);
        let result = {
            let mut timer = std::mem::take(&mut conn.timer);
            let r = {
                let mut ex = pin!(exchange(
                    &mut conn,
                    &mut wbuf,
                    &mut body,
                    framing,
                    head_request
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
        if wbuf.capacity() <= 2 * h1::FLUSH_AT {
            wbuf.clear();
            conn.wbuf = wbuf;
        }
        match result {
            Ok((head, complete)) => {
                conn.body = BodyState {
                    decoder: BodyDecoder::new(head.framing),
                    reusable: head.keep_alive && complete,
                    began: now,
                    stall: body_stall,
                    read: 0,
                    stalled: Stall::default(),
                };
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
            Err(Failure::Stale) if reused && framing.is_none() => continue,
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
async fn exchange<B>(
    conn: &mut Conn,
    wbuf: &mut Vec<u8>,
    body: &mut B,
    framing: Option<Framing>,
    head_request: bool,
) -> Result<(h1::ResponseHead, bool), Failure>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    // Write the head and the body; stop early if the upstream starts answering.
    let mut pump = h1::Pump::new(framing);
    let written = poll_fn(
        |cx| match pump.poll(cx, wbuf, Pin::new(&mut *body), &mut conn.io) {
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
        },
    )
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
                        if status.is_informational()
                            && status != http::StatusCode::SWITCHING_PROTOCOLS
                        {
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
    pub forwarded_for: &'a HeaderValue,
    pub forwarded_host: Option<&'a HeaderValue>,
    pub request_id: &'a crate::proxy::RequestId,
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
    put_header(out, "x-forwarded-for", set.forwarded_for);
    out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    if let Some(h) = set.forwarded_host {
        put_header(out, "x-forwarded-host", h);
    }
    h1::put_header(out, b"x-request-id", set.request_id.as_bytes());
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

async fn connect(authority: &Authority, timeout: Duration) -> Result<Box<Conn>, SendError> {
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let io = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| SendError::Connect(format!("connect timed out after {timeout:?}")))?
        .map_err(|e| SendError::Connect(e.to_string()))?;
    let _ = io.set_nodelay(true);
    let now = Instant::now();
    Ok(Box::new(Conn {
        io,
        rbuf: ReadBuf::new(),
        idle_until: now + IDLE,
        timer: Timer::default(),
        wbuf: Vec::with_capacity(1024),
        headers: h1::RawHeaders::default(),
        body: BodyState {
            decoder: BodyDecoder::Length(0),
            reusable: false,
            began: now,
            stall: Duration::ZERO,
            read: 0,
            stalled: Stall::default(),
        },
    }))
}

/// An upstream response body, read from its connection as it is polled; the connection
/// returns to the pool once the body has been read to its end (or, an empty one, when the
/// body is dropped). Two words: what it is reading lives in the boxed connection.
#[derive(Debug)]
pub struct UpBody {
    conn: Option<Box<Conn>>,
    key: Key,
}

impl UpBody {
    /// The upstream's response headers as received (until the body is over).
    pub fn headers(&self) -> Option<&h1::RawHeaders> {
        self.conn.as_ref().map(|c| &c.headers)
    }

    /// Appends to `out` what the connection has already buffered of a `Content-Length` body
    /// (a small response arrives with its head): written with the head, no frame made.
    pub fn read_buffered_into(&mut self, out: &mut Vec<u8>) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let BodyDecoder::Length(left) = &mut conn.body.decoder else {
            return;
        };
        let filled = conn.rbuf.filled();
        let n = filled
            .len()
            .min(usize::try_from(*left).unwrap_or(usize::MAX));
        if n == 0 {
            return;
        }
        out.extend_from_slice(&filled[..n]);
        conn.rbuf.consume(n);
        *left -= n as u64;
        if *left == 0 {
            self.finish();
        }
    }

    /// Pools the connection if its body is over and it can be reused; else it closes.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && conn.body.reusable
            && conn.body.decoder.is_done()
            && conn.rbuf.is_empty()
        {
            let began = conn.body.began;
            release(self.key, conn, began);
        }
    }
}

impl Drop for UpBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let body = &mut conn.body;
            match body.decoder.next(&mut conn.rbuf) {
                Ok(Step::Data(data)) => {
                    if body.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("upstream body: {e}"),
                    ))));
                }
            }
            match conn.rbuf.poll_fill(cx, &mut conn.io, MAX_RESPONSE_HEAD) {
                Poll::Ready(Ok(0)) => {
                    let close_delimited = matches!(body.decoder, BodyDecoder::Close);
                    this.conn = None;
                    if close_delimited {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection mid-body",
                    ))));
                }
                Poll::Ready(Ok(n)) => body.read += n as u64,
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => {
                    let deadline = body.stalled.deadline(body.read, body.stall);
                    if conn.timer.timed_out(deadline, cx) {
                        this.conn = None;
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the upstream sent no body bytes within the route's timeout",
                        ))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.as_ref().is_none_or(|c| c.body.decoder.is_done())
    }

    fn size_hint(&self) -> SizeHint {
        match self.conn.as_ref().map(|c| c.body.decoder.remaining()) {
            None => SizeHint::with_exact(0),
            Some(Some(n)) => SizeHint::with_exact(n),
            Some(None) => SizeHint::default(),
        }
    }
}
