//! Listeners, connections, signals.
//!
//! ```text
//!   main thread (control runtime)          worker threads (one current-thread runtime each)
//!   ─ loads the config, builds Runtime      ─ own SO_REUSEPORT listener on the proxy address
//!   ─ admin listener (if admin_listen)      ─ accept → downstream::serve (HTTP/1.1; h2c → hyper)
//!   ─ SIGHUP: reload → ArcSwap<Runtime>     ─ own pooled upstream client (thread-local)
//!   ─ SIGTERM/SIGINT: stop ───watch──────▶  ─ drop listener, drain in-flight, exit thread
//! ```
//!
//! Thread-per-core: a request is accepted, proxied and answered on one thread, with no
//! work-stealing and no cross-thread wake-ups on the hot path; the kernel spreads connections
//! over the workers' listeners.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{oneshot, watch};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::proxy::{self, ProxyBody, X_REQUEST_ID};
use crate::runtime::{ConfigSource, LogFormat, Runtime, Shared};
use crate::{admin, downstream};

/// hyper never buffers less than this for a request head.
const MIN_BUF: usize = 8192;
/// Pending connections per listener.
const BACKLOG: u32 = 1024;

/// Loads the config, starts `workers` worker threads, prints `listening on http://ADDR` (and
/// `admin listening on ...`) to stdout, and serves until SIGTERM or SIGINT, then drains.
/// Run it on a current-thread runtime: that thread handles signals, reloads and the admin
/// listener. Errors are for the operator: a bad config or an address that cannot be bound.
pub async fn serve(
    source: ConfigSource,
    log_format: LogFormat,
    workers: usize,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let workers = workers.max(1);
    let config = source.load()?;
    let metrics = Metrics::default();
    let server = config.server.clone();
    let rt = Runtime::build(config, None, &metrics)?;
    let routes = rt.policy.config().routes.len();
    let store = rt.store.kind();
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

    // Worker 0 binds the configured address; the others join it on the address it got (so
    // port 0 means one port for all of them).
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut threads = Vec::with_capacity(workers);
    let mut addr = server.listen;
    for i in 0..workers {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (shared, stop) = (shared.clone(), stop_rx.clone());
        let reuse = workers > 1;
        let spawned = std::thread::Builder::new()
            .name(format!("aegis-worker-{i}"))
            .spawn(move || worker(i, addr, reuse, shared, stop, ready_tx));
        let bound = match spawned {
            Ok(h) => {
                threads.push(h);
                ready_rx
                    .await
                    .unwrap_or_else(|_| Err("a worker thread exited while starting".into()))
            }
            Err(e) => Err(format!("cannot start worker thread {i}: {e}")),
        };
        match bound {
            Ok(a) => addr = a,
            Err(e) => {
                let _ = stop_tx.send(true);
                join(threads).await;
                return Err(e);
            }
        }
    }

    println!("listening on http://{addr}");
    if let Some(a) = &admin {
        println!(
            "admin listening on http://{}",
            a.local_addr().map_err(|e| e.to_string())?
        );
    }
    tracing::info!(
        "aegis serving {routes} routes on http://{addr} with {workers} worker thread{} ({store} rate-limit store)",
        if workers == 1 { "" } else { "s" }
    );
    on_ready(addr);

    let graceful = GracefulShutdown::new();
    let builder = connection_builder(&server);
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP: {e}"))?;
    let why = loop {
        tokio::select! {
            r = accept_opt(admin.as_ref()) => match r {
                Ok((stream, _)) => {
                    let s = shared.clone();
                    let svc = service_fn(move |req| admin_only(s.clone(), req));
                    spawn(&shared, &builder, &graceful, stream, svc);
                }
                Err(e) => accept_error(e).await,
            },
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => reload(&shared),
        }
    };
    let _ = stop_tx.send(true);
    drop(admin);
    let drain = shared.runtime.load().policy.config().server.drain_timeout;
    tracing::info!(
        "{why}: stopped accepting; draining in-flight requests (up to {}s)",
        drain.as_secs()
    );
    let started = Instant::now();
    let all = async {
        join(threads).await;
        graceful.shutdown().await;
    };
    // The workers bound themselves by drain_timeout; the margin covers their last writes.
    match tokio::time::timeout(drain + Duration::from_secs(1), all).await {
        Ok(()) => tracing::info!("drained in {}ms; bye", started.elapsed().as_millis()),
        Err(_) => tracing::warn!("drain timeout of {}s reached", drain.as_secs()),
    }
    Ok(())
}

/// Waits for worker threads to finish without blocking the control runtime.
async fn join(threads: Vec<std::thread::JoinHandle<()>>) {
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
}

/// One worker: its own runtime and listener; serves until told to stop, then drains.
fn worker(
    i: usize,
    addr: SocketAddr,
    reuse_port: bool,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<Result<SocketAddr, String>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("worker {i}: cannot start a runtime: {e}")));
            return;
        }
    };
    crate::metrics::set_shard(i);
    // Connections are tasks local to this thread (they share state through Rc/RefCell).
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = match bind(addr, reuse_port) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot listen on {addr}: {e}")));
                return;
            }
        };
        let local = listener.local_addr();
        if ready
            .send(local.map_err(|e| format!("listener address: {e}")))
            .is_err()
        {
            return;
        }
        let server = shared.runtime.load().policy.config().server.clone();
        let limits = downstream::Limits::new(&server);
        let mut conns = tokio::task::JoinSet::new();
        let signal = Arc::new(downstream::Stop::default());
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, addr)) => {
                        let peer = proxy::Peer::new(addr);
                        conns.spawn_local(downstream::serve(
                            stream,
                            peer,
                            shared.clone(),
                            limits,
                            signal.clone(),
                        ));
                    }
                    Err(e) => accept_error(e).await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                _ = stop.changed() => break,
            }
        }
        drop(listener);
        signal.stop();
        let drain = shared.runtime.load().policy.config().server.drain_timeout;
        let all = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(drain, all).await.is_err() {
            tracing::warn!("worker {i}: drain timeout reached; closing its remaining connections");
        }
    });
}

/// A listener on `addr`; with `reuse_port`, one of a group of workers' listeners on the same
/// address (Linux spreads new connections over them).
fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
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

/// hyper's per-connection settings from `[server]`.
fn connection_builder(server: &aegis_policy::config::ServerConfig) -> auto::Builder<TokioExecutor> {
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
    builder
}

fn spawn<S>(
    shared: &Arc<Shared>,
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
    let shared = shared.clone();
    tokio::spawn(async move {
        let _open = crate::metrics::GaugeGuard::enter(shared.metrics.connections.mine());
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
    tokio::time::sleep(Duration::from_millis(20)).await;
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
        let was = &old.policy.config().server;
        if c.server.listen != was.listen || c.server.admin_listen != was.admin_listen {
            tracing::warn!("listen addresses changed in the config: a restart applies them");
        }
        if c.server.header_read_timeout != was.header_read_timeout
            || c.server.idle_timeout != was.idle_timeout
        {
            tracing::warn!(
                "server.header_read_timeout / server.idle_timeout changed: a restart applies them"
            );
        }
        if c.server.max_header_bytes > was.max_header_bytes
            || c.server.max_uri_bytes > was.max_uri_bytes
        {
            tracing::warn!(
                "server.max_header_size / server.max_uri_length raised: a restart applies the \
                 larger read buffer (until then heads past the old size get 431/414)"
            );
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
