//! The client side of a connection: an HTTP/1.1 server loop over one socket, in one task.
//!
//! ```text
//!   read head (reused buffer, header_read_timeout) ─▶ proxy::handle (same task; watches for
//!   the client leaving) ─▶ write head + body (coalesced, one write for a small response)
//!   ─▶ keep-alive? next head : close (lingering when request bytes are left unread)
//! ```
//!
//! A connection that opens with the HTTP/2 preface is handed to hyper's HTTP/2 server. The
//! request body is read by whoever polls [`ReqBody`] (the upstream exchange), from the same
//! buffer the loop reads heads from; a `100 Continue` is sent when it is first polled.

use std::cell::{RefCell, RefMut};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::timer::{Stall, Timer};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::h1::{self, BodyDecoder, Framing, HeadError, Pumped, ReadBuf, Step};
use crate::proxy::{self, Peer, ProxyBody};
use crate::runtime::Shared;

/// How long a closing connection keeps reading (and dropping) what the client still sends,
/// so that the response is not destroyed by a reset.
const LINGER: Duration = Duration::from_secs(2);
/// Bytes read per body frame.
const BODY_READ: usize = 16 * 1024;

/// Per-connection settings from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_uri: usize,
    pub max_head: usize,
    pub max_header_list: u32,
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
            max_header_list: u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX),
        }
    }
}

/// A worker's stop signal for its connections. Set once; a connection waiting for its next
/// request registers its task's waker once (not per request) and is woken to close.
#[derive(Debug, Default)]
pub struct Stop {
    stopped: AtomicBool,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, Waker>>,
}

impl Stop {
    /// Tells every connection to finish its exchange in flight, then close.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let waiting =
            std::mem::take(&mut *self.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        for w in waiting.into_values() {
            w.wake();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Registers `waker` to be woken on stop (the first time, or when the task's waker
    /// changed) and says whether the worker has stopped.
    fn poll(&self, reg: &mut Registration, waker: &Waker) -> bool {
        if !reg.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            let id = *reg
                .id
                .get_or_insert_with(|| self.next.fetch_add(1, Ordering::Relaxed));
            self.waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, waker.clone());
            reg.waker = Some(waker.clone());
        }
        self.is_stopped()
    }

    fn deregister(&self, reg: &Registration) {
        if let Some(id) = reg.id {
            self.waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        }
    }
}

/// A connection's place in [`Stop`]'s list.
#[derive(Debug, Default)]
struct Registration {
    id: Option<u64>,
    waker: Option<Waker>,
}

/// Removes the connection from the stop list when it ends.
struct Registered<'a> {
    stop: &'a Stop,
    reg: Registration,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.stop.deregister(&self.reg);
    }
}

/// The connection's socket and read state, shared by the loop and the request body.
#[derive(Debug)]
struct Io {
    stream: TcpStream,
    rbuf: ReadBuf,
    /// The current request's body still to be read (`None`: read, or there was none).
    body: Option<BodyDecoder>,
    /// `100 Continue` bytes still to send before the body is read.
    continue_left: &'static [u8],
}

/// Shared by the connection's loop and its request body, both in the connection's one task
/// (spawned on the worker's `LocalSet`): no lock, no atomics.
type Conn = Rc<RefCell<Io>>;

fn lock(c: &Conn) -> RefMut<'_, Io> {
    c.borrow_mut()
}

/// A client's request body, read from its connection as it is polled.
#[derive(Debug)]
pub struct ReqBody {
    conn: Option<Conn>,
    /// Bytes still to come when the framing says (Content-Length).
    size: Option<u64>,
}

impl ReqBody {
    fn empty() -> ReqBody {
        ReqBody {
            conn: None,
            size: Some(0),
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let Some(conn) = &this.conn else {
            return Poll::Ready(None);
        };
        let mut guard = lock(conn);
        let io = &mut *guard;
        while !io.continue_left.is_empty() {
            match Pin::new(&mut io.stream).poll_write(cx, io.continue_left) {
                Poll::Ready(Ok(n)) if n > 0 => io.continue_left = &io.continue_left[n..],
                Poll::Ready(Ok(_)) => {
                    return Poll::Ready(Some(Err(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        loop {
            let Some(decoder) = io.body.as_mut() else {
                drop(guard);
                this.conn = None;
                return Poll::Ready(None);
            };
            match decoder.next(&mut io.rbuf) {
                Ok(Step::Data(data)) => {
                    this.size = decoder.remaining();
                    if decoder.is_done() {
                        io.body = None;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End) => {
                    io.body = None;
                    continue;
                }
                Ok(Step::More) => {}
                Err(e) => {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("request body: {e}"),
                    ))));
                }
            }
            match io.rbuf.poll_fill(cx, &mut io.stream, BODY_READ) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the connection mid-body",
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.size == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.size {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
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

/// Serves one accepted connection until it closes.
pub async fn serve(
    stream: TcpStream,
    peer: Peer,
    shared: Arc<Shared>,
    limits: Limits,
    stop: Arc<Stop>,
) {
    let _open = crate::metrics::GaugeGuard::enter(shared.metrics.connections.mine());
    let _ = stream.set_nodelay(true);
    let conn: Conn = Rc::new(RefCell::new(Io {
        stream,
        rbuf: ReadBuf::new(),
        body: None,
        continue_left: b"",
    }));
    let mut stopping = Registered {
        stop: &stop,
        reg: Registration::default(),
    };
    let mut timer = Timer::default();
    // The config a request runs on: checked per request with one atomic load, the Arc
    // cloned only when a reload swapped it.
    let mut runtime = arc_swap::Cache::new(&shared.runtime);
    let mut wbuf = Vec::with_capacity(4096);
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
            &conn,
            &limits,
            deadline,
            &mut timer,
            &mut stopping,
            &mut parts,
        )
        .await;
        let head = match read {
            HeadRead::Head(h) => h,
            HeadRead::Failed(HeadError::H2Preface) if first && !stop.is_stopped() => {
                return serve_h2(conn, peer, shared.clone(), limits, &mut stopping).await;
            }
            HeadRead::Failed(e) => {
                let body = proxy::error(e.status(), "bad_request", e.message());
                let _ = respond_and_close(&conn, &mut wbuf, body, &mut timer, limits.idle_timeout)
                    .await;
                return;
            }
            HeadRead::TimedOut(true) => {
                let body = proxy::error(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the request head did not arrive within server.header_read_timeout",
                );
                let _ = respond_and_close(&conn, &mut wbuf, body, &mut timer, limits.idle_timeout)
                    .await;
                return;
            }
            HeadRead::TimedOut(false) | HeadRead::Closed | HeadRead::Io => return,
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
            let mut io = lock(&conn);
            io.body = Some(BodyDecoder::new(framing));
            if expect_continue {
                io.continue_left = b"HTTP/1.1 100 Continue\r\n\r\n";
            }
            ReqBody {
                conn: Some(conn.clone()),
                size: BodyDecoder::new(framing).remaining(),
            }
        };
        let rt = runtime.load();
        let watched = handle_watching(&conn, &limits, &shared, rt, &peer, &mut parts, body);
        let Some(answer) = watched.await else {
            // The client left; the exchange was dropped (its outcome reported as cancelled).
            return;
        };
        let unread = {
            let mut io = lock(&conn);
            io.continue_left = b"";
            io.body.is_some()
        };
        let keep = keep_alive && !unread && !stop.is_stopped();
        let out = Out {
            request_id: Some(&answer.request_id),
            version,
            head_request,
            keep,
            stall: limits.idle_timeout,
        };
        let written = write_response(&conn, &mut wbuf, answer.response, out, &mut timer).await;
        match written {
            Ok(true) if keep => {}
            Ok(_) => {
                close(&conn, unread).await;
                return;
            }
            Err(_) => return,
        }
        if stop.is_stopped() {
            close(&conn, false).await;
            return;
        }
    }
}

/// Reads the next request head: from what is buffered, else from the socket, until
/// `deadline`. Between requests (nothing buffered) it also ends when the worker stops.
async fn read_head(
    conn: &Conn,
    limits: &Limits,
    idle_deadline: Instant,
    timer: &mut Timer,
    stopping: &mut Registered<'_>,
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
        drop(guard);
        if !partial && stopping.stop.poll(&mut stopping.reg, cx.waker()) {
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
async fn handle_watching(
    conn: &Conn,
    limits: &Limits,
    shared: &Shared,
    rt: &crate::runtime::Runtime,
    peer: &Peer,
    parts: &mut http::request::Parts,
    body: ReqBody,
) -> Option<proxy::Answer> {
    // Made here, in place: the exchange's future is large, and moving it costs a copy.
    let mut fut = pin!(proxy::handle(shared, rt, peer, parts, body));
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

/// How a response is to be written.
struct Out<'a> {
    request_id: Option<&'a proxy::RequestId>,
    /// The request's version and method.
    version: Version,
    head_request: bool,
    /// The connection may stay open after it.
    keep: bool,
    /// A client that takes no bytes for this long is disconnected (`server.idle_timeout`).
    stall: Duration,
}

/// Writes a response: the head, then the body, in as few writes as it allows. `Ok(false)`:
/// the body is delimited by the close, so the connection must close.
async fn write_response(
    conn: &Conn,
    wbuf: &mut Vec<u8>,
    resp: Response<ProxyBody>,
    out: Out<'_>,
    timer: &mut Timer,
) -> io::Result<bool> {
    let Out {
        request_id,
        version,
        head_request,
        keep,
        stall,
    } = out;
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        None
    } else {
        Some(match body.size_hint().exact() {
            Some(n) => Framing::Length(n),
            None if version == Version::HTTP_11 => Framing::Chunked,
            None => Framing::Close,
        })
    };
    let keep = keep && framing != Some(Framing::Close);

    wbuf.clear();
    h1::put_status_line(wbuf, status);
    let raw = match &body {
        ProxyBody::Upstream(up) => up.headers(),
        ProxyBody::Full(_) => None,
    };
    if let Some(raw) = raw {
        put_upstream_headers(wbuf, raw, &parts.headers, framing.is_some());
    }
    let has_date = raw.is_some_and(|r| r.has_date);
    for (name, value) in &parts.headers {
        // The framing headers are this hop's (a HEAD or 304 answer keeps the length it names).
        if framing.is_some() && (name == CONTENT_LENGTH || name == TRANSFER_ENCODING) {
            continue;
        }
        h1::put_header(wbuf, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(id) = request_id {
        h1::put_header(wbuf, b"x-request-id", id.as_bytes());
    }
    if !has_date && !parts.headers.contains_key(DATE) {
        h1::put_header(wbuf, b"date", h1::date().as_bytes());
    }
    // The length of the body sent, or (the gateway's own answer to HEAD) of the body a GET
    // would have had (RFC 9110 §9.3.2; an upstream's answer carries its own).
    let length = match (&framing, &body) {
        (Some(Framing::Length(n)), _) => Some(*n),
        (None, ProxyBody::Full(Some(b))) if head_request => Some(b.len() as u64),
        _ => None,
    };
    if let Some(n) = length {
        wbuf.extend_from_slice(b"content-length: ");
        h1::put_u64(wbuf, n);
        wbuf.extend_from_slice(b"\r\n");
    } else if framing == Some(Framing::Chunked) {
        wbuf.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep {
        wbuf.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        wbuf.extend_from_slice(b"connection: keep-alive\r\n");
    }
    wbuf.extend_from_slice(b"\r\n");
    if let (ProxyBody::Upstream(up), Some(Framing::Length(_))) = (&mut body, framing) {
        up.read_buffered_into(wbuf);
    }

    let mut pump = h1::Pump::new(framing);
    let mut stalled = Stall::default();
    poll_fn(|cx| {
        let mut io = lock(conn);
        match pump.poll(cx, wbuf, Pin::new(&mut body), &mut io.stream) {
            Pumped::Done => Poll::Ready(Ok(())),
            Pumped::WritePending => {
                if timer.timed_out(stalled.deadline(pump.written(), stall), cx) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client took no response bytes within server.idle_timeout",
                    )));
                }
                Poll::Pending
            }
            // The upstream's pace, not the client's.
            Pumped::BodyPending => Poll::Pending,
            Pumped::WriteFailed(e) => Poll::Ready(Err(e)),
            Pumped::BodyFailed(e) => Poll::Ready(Err(io::Error::other(e))),
        }
    })
    .await?;
    Ok(keep)
}

/// Writes the upstream's response headers (already without hop-by-hop ones and
/// `Content-Length`), minus those the gateway sets (`set`: rate-limit headers; and the
/// request id, always).
fn put_upstream_headers(out: &mut Vec<u8>, raw: &h1::RawHeaders, set: &HeaderMap, framed: bool) {
    if raw.may_collide {
        for (name, _, line) in raw.lines() {
            let gateways = name.eq_ignore_ascii_case(b"x-request-id")
                || set
                    .keys()
                    .any(|k| name.eq_ignore_ascii_case(k.as_str().as_bytes()));
            if !gateways {
                out.extend_from_slice(line);
            }
        }
    } else {
        out.extend_from_slice(raw.as_bytes());
    }
    if !framed && let Some(n) = raw.content_length {
        out.extend_from_slice(b"content-length: ");
        h1::put_u64(out, n);
        out.extend_from_slice(b"\r\n");
    }
}

/// A gateway-made answer on a connection that then closes.
async fn respond_and_close(
    conn: &Conn,
    wbuf: &mut Vec<u8>,
    resp: Response<ProxyBody>,
    timer: &mut Timer,
    stall: Duration,
) -> io::Result<()> {
    let out = Out {
        request_id: None,
        version: Version::HTTP_11,
        head_request: false,
        keep: false,
        stall,
    };
    write_response(conn, wbuf, resp, out, timer).await?;
    close(conn, true).await;
    Ok(())
}

/// Closes the connection: shuts down the write side and, when the client may still be
/// sending, reads and drops what it sends for up to [`LINGER`], so the response is not lost
/// to a reset.
async fn close(conn: &Conn, linger: bool) {
    let _ = poll_fn(|cx| Pin::new(&mut lock(conn).stream).poll_shutdown(cx)).await;
    if !linger {
        return;
    }
    let drain = poll_fn(|cx| {
        let mut guard = lock(conn);
        let io = &mut *guard;
        loop {
            io.rbuf.consume(io.rbuf.filled().len());
            match io.rbuf.poll_fill(cx, &mut io.stream, BODY_READ) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    });
    let _ = tokio::time::timeout(LINGER, drain).await;
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 (prior knowledge, h2c).

/// Hands a connection that opened with the HTTP/2 preface to hyper's HTTP/2 server, bytes
/// already read included. Stops gracefully when the worker stops.
async fn serve_h2(
    conn: Conn,
    peer: Peer,
    shared: Arc<Shared>,
    limits: Limits,
    stopping: &mut Registered<'_>,
) {
    let Ok(io) = Rc::try_unwrap(conn).map(RefCell::into_inner) else {
        return;
    };
    let Io {
        stream, mut rbuf, ..
    } = io;
    let prefix = rbuf.take_filled();
    let io = Prefixed {
        prefix,
        pos: 0,
        io: stream,
    };
    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
        let (shared, peer) = (shared.clone(), peer.clone());
        async move {
            let rt = shared.runtime.load_full();
            let (mut parts, body) = req.into_parts();
            Ok::<_, Infallible>(
                proxy::handle(&shared, &rt, &peer, &mut parts, body)
                    .await
                    .into_response(),
            )
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_list)
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(limits.idle_timeout / 2);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), svc));
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("HTTP/2 connection closed with an error: {e}");
            }
        }
        () = poll_fn(|cx| {
            if stopping.stop.poll(&mut stopping.reg, cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A socket with some of its bytes already read: those are read again first.
#[derive(Debug)]
struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
