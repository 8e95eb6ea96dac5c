//! HTTP/2 with prior knowledge (h2c): a connection that opened with the HTTP/2 preface is
//! handed to hyper's HTTP/2 server, bytes already read included, and runs the same gateway.

use std::convert::Infallible;
use std::io;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::Limits;
use super::conn::{Conn, Io};
use crate::gateway::{self, Listener};
use crate::record::Peer;
use crate::state::Shared;

/// Hands a connection that opened with the HTTP/2 preface to hyper's HTTP/2 server, bytes
/// already read included. Stops gracefully when the worker stops.
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
    let Ok(io) = Rc::try_unwrap(conn).map(std::cell::RefCell::into_inner) else {
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
                gateway::handle(&shared, &rt, listener, &peer, &mut parts, body)
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
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A socket with some of its bytes already read: those are read again first.
#[derive(Debug)]
struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    io: S,
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
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
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
