//! Listeners, connections, signals: accept on the proxy (and admin) listener, serve each
//! connection with hyper (HTTP/1.1 and h2c, detected), reload on SIGHUP, drain on
//! SIGTERM/SIGINT.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

use crate::admin;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::proxy::{self, ProxyBody, X_REQUEST_ID};
use crate::runtime::{ConfigSource, LogFormat, Runtime, Shared};

/// hyper never buffers less than this for a request head.
const MIN_BUF: usize = 8192;

/// Loads the config, binds, prints `listening on http://ADDR` (and `admin listening on ...`)
/// to stdout, and serves until SIGTERM or SIGINT, then drains. Errors are for the operator:
/// a bad config or an address that cannot be bound.
pub async fn serve(
    source: ConfigSource,
    log_format: LogFormat,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let config = source.load()?;
    let metrics = Metrics::default();
    let server = config.server.clone();
    let rt = Runtime::build(config, None, &metrics)?;
    let routes = rt.policy.config().routes.len();
    let store = rt.store.kind();
    let listener = TcpListener::bind(server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", server.listen))?;
    let admin = match server.admin_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|e| format!("cannot listen on {a} (server.admin_listen): {e}"))?,
        ),
        None => None,
    };
    let shared = Arc::new(Shared {
        clock: Clock::new(),
        metrics,
        runtime: ArcSwap::from_pointee(rt),
        log_format,
        source,
        admin_on_proxy: admin.is_none(),
    });

    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{addr}");
    if let Some(a) = &admin {
        println!(
            "admin listening on http://{}",
            a.local_addr().map_err(|e| e.to_string())?
        );
    }
    tracing::info!("aegis serving {routes} routes on http://{addr} ({store} rate-limit store)");
    on_ready(addr);

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper starts this timer whenever it waits for a request head, so it also closes
        // idle keep-alive connections (slowloris and idle alike).
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size((server.max_header_bytes + server.max_uri_bytes + 1024).max(MIN_BUF))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(server.idle_timeout / 2))
        .keep_alive_timeout(server.idle_timeout / 2);

    let graceful = GracefulShutdown::new();
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP: {e}"))?;
    let why = loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, addr)) => {
                    let shared = shared.clone();
                    let peer = proxy::Peer::new(addr);
                    let svc = service_fn(move |req| {
                        proxy::handle(shared.clone(), peer.clone(), req)
                    });
                    spawn(&builder, &graceful, stream, svc);
                }
                Err(e) => accept_error(e).await,
            },
            r = accept_opt(admin.as_ref()) => match r {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    let svc = service_fn(move |req| admin_only(shared.clone(), req));
                    spawn(&builder, &graceful, stream, svc);
                }
                Err(e) => accept_error(e).await,
            },
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => reload(&shared),
        }
    };
    drop(listener);
    drop(admin);
    let drain = shared.runtime.load().policy.config().server.drain_timeout;
    tracing::info!(
        "{why}: stopped accepting; draining in-flight requests (up to {}s)",
        drain.as_secs()
    );
    let started = Instant::now();
    match tokio::time::timeout(drain, graceful.shutdown()).await {
        Ok(()) => tracing::info!("drained in {}ms; bye", started.elapsed().as_millis()),
        Err(_) => tracing::warn!(
            "drain timeout of {}s reached; closing the remaining connections",
            drain.as_secs()
        ),
    }
    Ok(())
}

fn spawn<S>(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    svc: S,
) where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ProxyBody>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("connection closed with an error: {e}");
        }
    });
}

async fn accept_opt(l: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Out of file descriptors and the like: log, pause briefly, keep serving.
async fn accept_error(e: io::Error) {
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
}

/// The admin listener: `/gateway/*` only.
async fn admin_only(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let rt = shared.runtime.load_full();
    let (parts, _) = req.into_parts();
    let mut resp = if parts.uri.path().starts_with(admin::PREFIX) {
        admin::handle(&shared, &rt, &parts)
    } else {
        proxy::error(
            http::StatusCode::NOT_FOUND,
            "not_found",
            "the admin listener serves /gateway/stats, /gateway/health and /gateway/metrics",
        )
    };
    if let Some(id) = parts.headers.get(X_REQUEST_ID) {
        resp.headers_mut().insert(X_REQUEST_ID, id.clone());
    }
    Ok(resp)
}

/// SIGHUP: read the config again and swap it in whole, or keep the old one and say why.
fn reload(shared: &Shared) {
    if let ConfigSource::Inline(_) = shared.source {
        tracing::info!("SIGHUP: this config is built in; nothing to reload");
        return;
    }
    let old = shared.runtime.load_full();
    let result = shared.source.load().and_then(|c| {
        let was = old.policy.config().server.clone();
        if c.server.listen != was.listen || c.server.admin_listen != was.admin_listen {
            tracing::warn!("listen addresses changed in the config: a restart applies them");
        }
        Runtime::build(c, Some(&old), &shared.metrics)
    });
    match result {
        Ok(rt) => {
            let n = rt.policy.config().routes.len();
            shared.runtime.store(Arc::new(rt));
            shared.metrics.reloads.fetch_add(1, Relaxed);
            tracing::info!("config reloaded: {n} routes");
        }
        Err(e) => {
            shared.metrics.reload_failures.fetch_add(1, Relaxed);
            tracing::error!("config reload refused, the previous config keeps serving: {e}");
        }
    }
}
