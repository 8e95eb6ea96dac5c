//! Listening sockets and their accept loops, for the proxy listener (one per worker) and the
//! admin listener alike: every accepted connection is served by `downstream::serve`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::downstream::{self, Limits};
use crate::gateway::Listener;
use crate::record::Peer;
use crate::state::Shared;

/// Pending connections per listener.
const BACKLOG: u32 = 1024;

/// A listener on `addr`; with `reuse_port`, one of a group of workers' listeners on the same
/// address (Linux spreads new connections over them).
pub(super) fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    if reuse_port {
        sock.set_reuseport(true)?;
    }
    sock.bind(addr)?;
    sock.listen(BACKLOG)
}

/// Accepts connections on `listener` until `stop`, each served on this thread's `LocalSet`
/// (in `conns`), then stops accepting: the connections are left to finish.
async fn accept_loop(
    listener: TcpListener,
    role: Listener,
    shared: &Arc<Shared>,
    limits: Limits,
    stop: &CancellationToken,
    conns: &mut JoinSet<()>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    // The one hook for TLS: a TLS listener's connections handshake first.
                    match shared.tls.as_ref().filter(|_| role == Listener::Proxy) {
                        None => conns.spawn_local(downstream::serve(
                            stream,
                            Peer::new(addr),
                            shared.clone(),
                            role,
                            limits,
                            stop.clone(),
                        )),
                        Some(tls) => conns.spawn_local(downstream::serve_tls(
                            stream,
                            Peer::new(addr),
                            shared.clone(),
                            tls.clone(),
                            role,
                            limits,
                            stop.clone(),
                        )),
                    };
                }
                Err(e) => accept_error(e).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = stop.cancelled() => break,
        }
    }
}

/// Out of file descriptors and the like: log, pause briefly, keep serving.
async fn accept_error(e: io::Error) {
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// Serves `listener` until `stop`, then waits up to `server.drain_timeout` for its
/// connections to finish their exchanges in flight; says whether they all did.
pub(super) async fn serve(
    listener: TcpListener,
    role: Listener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> bool {
    let limits = Limits::new(&shared.runtime.load().policy.config().server);
    let mut conns = JoinSet::new();
    accept_loop(listener, role, &shared, limits, &stop, &mut conns).await;
    let drain = shared.runtime.load().policy.config().server.drain_timeout;
    let all = async { while conns.join_next().await.is_some() {} };
    tokio::time::timeout(drain, all).await.is_ok()
}
