//! HTTP/2 with prior knowledge (h2c): a connection that opened with the HTTP/2 preface is
//! handed to hyper's HTTP/2 server, bytes already read included, and runs the same gateway.

use std::convert::Infallible;

use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;

use http::Request;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::Limits;
use super::conn::{Conn, Io, Prefixed};
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
