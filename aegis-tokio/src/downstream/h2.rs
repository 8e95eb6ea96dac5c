//! HTTP/2 with prior knowledge (h2c): a connection that opened with the HTTP/2 preface is
//! handed to hyper's HTTP/2 server (the `h2` crate underneath), bytes already read included,
//! and runs the same gateway, under the limits of `[server]` and the HTTP/1.1 timeouts.
//!
//! What `h2` enforces once configured (each proved against a running gateway in
//! tests/h2.rs): `h2_max_concurrent_streams` (REFUSED_STREAM past it),
//! `h2_max_header_list_size` (431; four times it, or a CONTINUATION flood, is GOAWAY
//! ENHANCE_YOUR_CALM; so is an HPACK bomb, counted as it decodes), `h2_max_pending_resets`
//! (rapid reset), `h2_max_error_resets` (streams it resets for the client's errors),
//! `h2_max_send_buffer_size`, malformed requests (connection-specific or upper-case fields,
//! bad pseudo-headers, a body that disagrees with its `content-length`), and one pending
//! SETTINGS ACK or PONG at a time (a flood stops being read).
//!
//! What this module adds, because hyper's server does not:
//!
//! ```text
//!   connection: no open stream and no response byte (DATA) sent for header_read_timeout
//!               (before the first stream) or idle_timeout (after) ─▶ GOAWAY ─▶ closed when
//!               the client acks it, or CLOSE_GRACE after the last stream or byte. PINGs and
//!               SETTINGS are not activity. (hyper's keep-alive pings are off: this replaces
//!               them, and a dead client's streams stall, below.)
//!   stream:     response head sent ─▶ waiting on the client: neither the stream asked its
//!               body for more nor the connection sent a DATA byte for idle_timeout (a window
//!               or a socket that stays full) ─▶ RST_STREAM(CANCEL), upstream connection
//!               closed. While the body waits for the upstream, the upstream's timeout
//!               applies.
//!   request:    a `content-length` body's last bytes are held until the client's stream has
//!               ended, so an upstream never gets a whole request that h2 then finds too long;
//!               a missing :path, CONNECT, two `host` fields or one that differs from
//!               :authority are refused before the policy.
//! ```
//!
//! Each stream runs in a task of its own on the worker's `LocalSet` ([`StreamTasks`]), which
//! counts the open streams and times the stalled ones; the stream's response body reports to
//! that task ([`Watch`]) through a task-local, so that nothing depends on the order in which
//! hyper makes a stream's service future and spawns it.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::Limits;
use super::conn::{Conn, Io};
use crate::gateway::{self, Listener, ProxyBody};
use crate::record::{Peer, RequestId};
use crate::state::Shared;
use crate::time::{Stall, Timer};

/// After a GOAWAY, how long a connection with no open stream (and no response byte leaving)
/// waits for its client to acknowledge it before the gateway closes it anyway.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// The stream whose task is running: its response body reports progress to it.
    static STREAM: Rc<Watch>;
}

/// Serves a connection that opened with the HTTP/2 preface, bytes already read included,
/// until the client closes it, it idles out, or the worker stops (then gracefully).
pub(super) async fn serve<S>(
    conn: Conn<S>,
    peer: Peer,
    shared: Arc<Shared>,
    listener: Listener,
    limits: Limits,
    stop: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let Ok(io) = Rc::try_unwrap(conn).map(RefCell::into_inner) else {
        return;
    };
    let Io {
        stream, mut rbuf, ..
    } = io;
    let prefix = rbuf.take_filled();
    // The HTTP/1.1 read buffer is not kept: h2 has its own.
    drop(rbuf);
    let activity = Rc::new(Activity::default());
    let io = Prefixed {
        prefix,
        pos: 0,
        io: stream,
        sent: FrameMeter::default(),
        activity: activity.clone(),
    };
    let tasks = StreamTasks {
        activity: activity.clone(),
        stall: limits.idle_timeout,
    };
    let svc = service_fn(move |req: Request<Incoming>| {
        let (shared, peer) = (shared.clone(), peer.clone());
        async move {
            let watch = STREAM.try_with(Rc::clone).ok();
            let (mut parts, body) = req.into_parts();
            if let Some(refused) = refuse(&parts) {
                return Ok::<_, Infallible>(H2Body::new(refused, watch));
            }
            let rt = shared.runtime.load_full();
            let body = HeldBack::new(body);
            let answer = gateway::handle(&shared, &rt, listener, &peer, &mut parts, body).await;
            Ok(H2Body::new(answer.into_response(), watch))
        }
    });
    let h2 = limits.h2;
    let mut builder = hyper::server::conn::http2::Builder::new(tasks);
    builder
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_header_list_size(h2.max_header_list_bytes)
        .max_pending_accept_reset_streams(h2.max_pending_resets)
        .max_local_error_reset_streams(h2.max_error_resets)
        .max_send_buf_size(h2.max_send_buffer_bytes)
        // No keep-alive pings: idleness is timed below, and a dead client's streams stall.
        .keep_alive_interval(None);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), svc));
    let mut stopped = pin!(stop.cancelled());
    let mut timer = Timer::default();
    // No stream open and no progress (a stream ended, a DATA byte sent) until the deadline.
    let mut idle = Stall::default();
    let mut closing = false;
    let ended = poll_fn(|cx| {
        loop {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(r.err());
            }
            if !closing && stopped.as_mut().poll(cx).is_ready() {
                conn.as_mut().graceful_shutdown();
                closing = true;
                idle = Stall::default();
                continue;
            }
            activity.register(cx.waker());
            if activity.open.get() > 0 {
                return Poll::Pending;
            }
            let limit = if closing {
                CLOSE_GRACE
            } else if activity.served.get() {
                limits.idle_timeout
            } else {
                limits.header_read_timeout
            };
            let deadline = idle.deadline(activity.progress(), limit);
            if !timer.timed_out(deadline, cx) {
                return Poll::Pending;
            }
            if closing {
                // The client never acknowledged the GOAWAY: close without it.
                return Poll::Ready(None);
            }
            conn.as_mut().graceful_shutdown();
            closing = true;
            idle = Stall::default();
        }
    })
    .await;
    if let Some(e) = ended {
        tracing::debug!("HTTP/2 connection closed with an error: {e}");
    }
}

/// What hyper's HTTP/2 server would forward but a strict gateway refuses, before the policy
/// sees the request (h2 itself refuses the rest of what RFC 9113 calls malformed).
fn refuse(parts: &http::request::Parts) -> Option<Response<ProxyBody>> {
    let bad = |status, code, message: &str| {
        let mut r = gateway::error(status, code, message);
        r.headers_mut().insert(
            crate::headers::X_REQUEST_ID,
            RequestId::of(&parts.headers).to_header(),
        );
        Some(r)
    };
    if parts.method == Method::CONNECT {
        return bad(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "CONNECT is not supported",
        );
    }
    // h2 refuses a request with :authority and no :path, but not one without either (its
    // URI is then empty: no path, where any :path gives at least "/").
    if parts.uri.path().is_empty() {
        return bad(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "an HTTP/2 request needs a :path",
        );
    }
    let mut hosts = parts.headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return bad(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "more than one host header",
        );
    }
    // RFC 9113 §8.3.1: a host that names another authority than :authority is malformed.
    if let (Some(a), Some(h)) = (parts.uri.authority(), host)
        && !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes())
    {
        return bad(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the host header differs from :authority",
        );
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Streams: counted while open, reset when their client takes no response bytes.

/// A connection's streams and what it sends, as its tasks see them. One connection's tasks
/// all run on its worker's thread: cells, no locks.
#[derive(Debug, Default)]
struct Activity {
    /// Streams whose task is running (from the request head to the response's end).
    open: Cell<usize>,
    /// Streams ended so far.
    ended: Cell<u64>,
    /// Whether any stream has opened (before the first, `header_read_timeout` applies).
    served: Cell<bool>,
    /// DATA payload bytes written to the socket: response bytes the client took room for.
    data_sent: Cell<u64>,
    /// The connection's task, woken when its last stream ends (its idle timer starts).
    waker: RefCell<Option<Waker>>,
}

impl Activity {
    fn register(&self, w: &Waker) {
        let mut slot = self.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|s| s.will_wake(w)) {
            *slot = Some(w.clone());
        }
    }

    fn opened(&self) {
        self.open.set(self.open.get() + 1);
        self.served.set(true);
    }

    fn closed(&self) {
        self.ended.set(self.ended.get() + 1);
        let left = self.open.get().saturating_sub(1);
        self.open.set(left);
        if left == 0
            && let Some(w) = self.waker.borrow_mut().take()
        {
            w.wake();
        }
    }

    /// What makes a connection not idle: streams ending, response bytes leaving.
    fn progress(&self) -> u64 {
        self.ended.get().wrapping_add(self.data_sent.get())
    }
}

/// hyper's executor for this connection's streams: each stream (and nothing else: the
/// server spawns nothing else here) runs as a local task that counts as open while it runs
/// and is dropped, resetting its stream, when its response stalls on the client.
#[derive(Debug, Clone)]
struct StreamTasks {
    activity: Rc<Activity>,
    /// `idle_timeout`: the longest a client may take no bytes of a response.
    stall: Duration,
}

impl<F: Future<Output = ()> + 'static> hyper::rt::Executor<F> for StreamTasks {
    fn execute(&self, fut: F) {
        let watch = Rc::new(Watch::default());
        self.activity.opened();
        let task = StreamTask {
            fut: Box::pin(STREAM.scope(watch.clone(), fut)),
            watch,
            activity: self.activity.clone(),
            stall: self.stall,
            stalled: Stall::default(),
            timer: Timer::default(),
        };
        tokio::task::spawn_local(task);
    }
}

/// Where a stream's response stands, as its body reports it.
#[derive(Debug, Default)]
struct Watch {
    /// Polls of the response body so far (each is progress: hyper polls the body only when
    /// the stream can send).
    polls: Cell<u64>,
    /// Whether the response waits on the client: its head is out (or its body gave data) and
    /// the body has not been asked for more since. False while the body waits for upstream.
    on_client: Cell<bool>,
}

/// One stream's task: hyper's stream future, dropped (RST_STREAM CANCEL) when its response
/// has waited on the client for `stall` with no progress: the stream did not ask its body for
/// more, and the connection sent no DATA byte (a stream's own bytes are not told apart from
/// its neighbours': hyper does not say which stream is which).
struct StreamTask<F> {
    fut: Pin<Box<F>>,
    watch: Rc<Watch>,
    activity: Rc<Activity>,
    stall: Duration,
    stalled: Stall,
    timer: Timer,
}

impl<F: Future<Output = ()>> Future for StreamTask<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.fut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if this.watch.on_client.get() {
            let progress = this
                .watch
                .polls
                .get()
                .wrapping_add(this.activity.data_sent.get());
            let deadline = this.stalled.deadline(progress, this.stall);
            if this.timer.timed_out(deadline, cx) {
                tracing::debug!("HTTP/2 stream reset: its client took no response bytes");
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl<F> Drop for StreamTask<F> {
    fn drop(&mut self) {
        self.activity.closed();
    }
}

/// The response body of a stream: the gateway's, reporting each poll to its stream's task.
#[derive(Debug)]
struct H2Body {
    inner: ProxyBody,
    watch: Option<Rc<Watch>>,
}

impl H2Body {
    /// The response, its head about to go out: from now on it waits on the client.
    fn new(resp: Response<ProxyBody>, watch: Option<Rc<Watch>>) -> Response<H2Body> {
        if let Some(w) = &watch {
            w.polls.set(w.polls.get() + 1);
            w.on_client.set(true);
        }
        resp.map(|inner| H2Body { inner, watch })
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(w) = &this.watch {
            w.polls.set(w.polls.get() + 1);
            w.on_client.set(matches!(r, Poll::Ready(Some(Ok(_)))));
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------------------------
// The request body.

/// A request body with a declared length (`content-length`), whose last bytes are held until
/// the client's stream has ended: h2 finds a body longer than declared only when the excess
/// comes, and by then an upstream would have had a whole request to act on. A body without a
/// declared length goes upstream chunked, and its end (the last chunk) is sent only at the
/// stream's end anyway.
#[derive(Debug)]
struct HeldBack<B> {
    inner: B,
    /// Declared bytes not yet seen.
    left: Option<u64>,
    /// The data that completed the declared length, until the stream's end is seen.
    held: Option<Bytes>,
    /// A trailers frame that came after the held data.
    trailers: Option<Frame<Bytes>>,
}

impl<B: Body> HeldBack<B> {
    fn new(inner: B) -> HeldBack<B> {
        HeldBack {
            left: inner.size_hint().exact(),
            inner,
            held: None,
            trailers: None,
        }
    }
}

impl<B> Body for HeldBack<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(t) = this.trailers.take() {
            return Poll::Ready(Some(Ok(t)));
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Some(data) = frame.data_ref() else {
                        // Trailers end the stream: the held data may go, then them.
                        return Poll::Ready(Some(Ok(match this.held.take() {
                            Some(h) => {
                                this.trailers = Some(frame);
                                Frame::data(h)
                            }
                            None => frame,
                        })));
                    };
                    if let Some(left) = this.left.as_mut() {
                        *left = left.saturating_sub(data.len() as u64);
                        if *left == 0 && !data.is_empty() && !this.inner.is_end_stream() {
                            this.held = frame.into_data().ok();
                            continue;
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(None) => {
                    return Poll::Ready(this.held.take().map(|h| Ok(Frame::data(h))));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.held = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.trailers.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.held.as_ref().map_or(0, |h| h.len() as u64);
        let mut hint = self.inner.size_hint();
        hint.set_lower(hint.lower() + held);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

// ---------------------------------------------------------------------------------------------
// The socket.

/// A socket with some of its bytes already read: those are read again first. What is
/// written through it is metered: DATA payload bytes count as the connection's progress.
#[derive(Debug)]
struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    io: S,
    sent: FrameMeter,
    activity: Rc<Activity>,
}

/// Follows the frames in the bytes written to a client (the server's frames from the first
/// byte on) and counts their DATA payload bytes.
#[derive(Debug, Default)]
struct FrameMeter {
    head: [u8; 9],
    /// Bytes of `head` filled.
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
    data: bool,
}

impl FrameMeter {
    /// Takes `written` bytes; returns how many of them were DATA payload.
    fn take(&mut self, mut written: &[u8]) -> u64 {
        let mut data = 0;
        while !written.is_empty() {
            if self.left > 0 {
                let n = self.left.min(written.len());
                if self.data {
                    data += n as u64;
                }
                self.left -= n;
                written = &written[n..];
                continue;
            }
            let n = (9 - self.have).min(written.len());
            self.head[self.have..self.have + n].copy_from_slice(&written[..n]);
            self.have += n;
            written = &written[n..];
            if self.have == 9 {
                self.have = 0;
                self.left =
                    u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]) as usize;
                self.data = self.head[3] == 0;
            }
        }
        data
    }

    /// Takes the first `n` bytes of `bufs`.
    fn take_vectored(&mut self, bufs: &[io::IoSlice<'_>], mut n: usize) -> u64 {
        let mut data = 0;
        for b in bufs {
            if n == 0 {
                break;
            }
            let k = n.min(b.len());
            data += self.take(&b[..k]);
            n -= k;
        }
        data
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
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
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S> Prefixed<S> {
    fn count(&self, data: u64) {
        if data > 0 {
            let sent = &self.activity.data_sent;
            sent.set(sent.get() + data);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            let data = this.sent.take(&buf[..n]);
            this.count(data);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            let data = this.sent.take_vectored(bufs, n);
            this.count(data);
        }
        r
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ty: u8, len: usize) -> Vec<u8> {
        let mut f = (len as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[ty, 0, 0, 0, 0, 1]);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn the_meter_counts_data_payload_across_any_split_of_the_writes() {
        let mut bytes = frame(0x4, 6); // SETTINGS
        bytes.extend(frame(0x0, 1000)); // DATA
        bytes.extend(frame(0x6, 8)); // PING
        bytes.extend(frame(0x1, 30)); // HEADERS
        bytes.extend(frame(0x0, 0)); // DATA, empty (END_STREAM)
        bytes.extend(frame(0x0, 70_000)); // DATA
        for split in [1, 2, 7, 9, 10, 1009, 4096, bytes.len()] {
            let mut m = FrameMeter::default();
            let data: u64 = bytes.chunks(split).map(|c| m.take(c)).sum();
            assert_eq!(data, 71_000, "writes of {split} bytes");
        }
        let mut m = FrameMeter::default();
        let (a, b) = bytes.split_at(20);
        let bufs = [io::IoSlice::new(a), io::IoSlice::new(b)];
        assert_eq!(m.take_vectored(&bufs, 25), 1);
        assert_eq!(m.take(&bytes[25..]), 70_999);
    }
}
