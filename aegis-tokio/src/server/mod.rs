//! Listeners, workers, signals.
//!
//! ```text
//!   main thread (control runtime)          worker threads (one current-thread runtime each)
//!   ─ loads the config, builds Runtime      ─ own SO_REUSEPORT listener on the proxy address
//!   ─ admin listener (if admin_listen)      ─ accept → downstream::serve (HTTP/1.1; h2c → hyper)
//!   ─ SIGHUP: reload → ArcSwap<Runtime>     ─ own pooled upstream client (thread-local)
//!   ─ SIGTERM/SIGINT: stop ──cancel──────▶  ─ drop listener, drain in-flight, exit thread
//! ```
//!
//! Thread-per-core: a request is accepted, proxied and answered on one thread, with no
//! work-stealing and no cross-thread wake-ups on the hot path; the kernel spreads connections
//! over the workers' listeners. The admin listener is served by the same connection loop, in
//! admin-only mode, on the control thread.

mod health;
mod listen;
mod redirect;
mod reload;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::task::LocalSet;
use tokio_util::sync::CancellationToken;

use crate::gateway::Listener;
use crate::observe::log::LogFormat;
use crate::state::{ConfigSource, Shared};

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
    // The admin listener's connections are tasks local to this thread, like a worker's.
    LocalSet::new()
        .run_until(control(source, log_format, workers, on_ready))
        .await
}

/// Fetches every JWKS before the listeners serve: waits for each provider's first keys up to
/// its `jwks_ready_timeout`, then serves anyway (its routes answer 503 and
/// `/gateway/health` says so until keys arrive).
async fn jwks_first_fetch(shared: &Shared) {
    let rt = shared.runtime.load_full();
    rt.start_jwks(shared.clock);
    let waits = rt.jwks.iter().flatten().map(|h| async move {
        let within = h.config.ready_timeout;
        if !h.wait_ready(&shared.clock, within).await {
            let why = h
                .status(shared.clock.now().mono)
                .last_error
                .unwrap_or_else(|| "no answer yet".into());
            tracing::warn!(
                "{}: no keys from {} within jwks_ready_timeout ({within:?}): {why}; serving \
                 anyway, its routes answer 503 until keys arrive",
                h.section,
                h.config.url
            );
        }
    });
    for w in waits {
        w.await;
    }
}

async fn control(
    source: ConfigSource,
    log_format: LogFormat,
    workers: usize,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let workers = workers.max(1);
    // Before anything is served: a signal that comes as soon as the workers accept (a
    // supervisor that stops what it just started) must drain them, not kill the process.
    // One that comes earlier waits here and is handled once serving begins.
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP: {e}"))?;
    let shared = Arc::new(Shared::new(source, log_format)?);
    for w in shared.runtime.load().policy.config().warnings() {
        tracing::warn!("{w}");
    }
    jwks_first_fetch(&shared).await;
    let (server, routes, store) = {
        let rt = shared.runtime.load();
        (
            rt.policy.config().server.clone(),
            rt.policy.config().routes.len(),
            rt.store.kind(),
        )
    };
    let admin = match server.admin_listen {
        Some(a) => Some(
            listen::bind(a, false)
                .map_err(|e| format!("cannot listen on {a} (server.admin_listen): {e}"))?,
        ),
        None => None,
    };

    // Worker 0 binds the configured address; the others join it on the address it got (so
    // port 0 means one port for all of them).
    let stop = CancellationToken::new();
    let mut threads = Vec::with_capacity(workers);
    let mut addr = server.listen;
    for i in 0..workers {
        let (ready_tx, ready_rx) = oneshot::channel();
        // A token per worker: its connections wait on their own thread's node.
        let (shared, token) = (shared.clone(), stop.child_token());
        let reuse = workers > 1;
        let spawned = std::thread::Builder::new()
            .name(format!("aegis-worker-{i}"))
            .spawn(move || worker::run(i, addr, reuse, shared, token, ready_tx));
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
                stop.cancel();
                worker::join(threads).await;
                return Err(e);
            }
        }
    }

    let scheme = if shared.tls.is_some() {
        "https"
    } else {
        "http"
    };
    crate::say!("listening on {scheme}://{addr}");
    if let Some(r) = server.tls.as_ref().and_then(|t| t.redirect_listen) {
        let l = listen::bind(r, false)
            .map_err(|e| format!("cannot listen on {r} (server.tls.redirect_listen): {e}"))?;
        crate::say!(
            "redirect listening on http://{}",
            l.local_addr().map_err(|e| e.to_string())?
        );
        tokio::task::spawn_local(redirect::serve(l, addr.port(), stop.child_token()));
    }
    let admin = match admin {
        Some(l) => {
            crate::say!(
                "admin listening on http://{}",
                l.local_addr().map_err(|e| e.to_string())?
            );
            let (shared, token) = (shared.clone(), stop.child_token());
            Some(tokio::task::spawn_local(async move {
                if !listen::serve(l, Listener::Admin, shared, token).await {
                    tracing::warn!("admin listener: drain timeout reached");
                }
            }))
        }
        None => None,
    };
    // Health checks: one prober per process, on this thread.
    tokio::task::spawn_local(health::run(shared.clone(), stop.child_token()));
    tracing::info!(
        "aegis serving {routes} routes on {scheme}://{addr} with {workers} worker thread{} ({store} rate-limit store)",
        if workers == 1 { "" } else { "s" }
    );
    on_ready(addr);

    let why = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => reload::reload(&shared),
        }
    };
    stop.cancel();
    let drain = shared.runtime.load().policy.config().server.drain_timeout;
    tracing::info!(
        "{why}: stopped accepting; draining in-flight requests (up to {}s)",
        drain.as_secs()
    );
    let started = Instant::now();
    let all = async {
        worker::join(threads).await;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
    };
    // The workers bound themselves by drain_timeout; the margin covers their last writes.
    match tokio::time::timeout(drain + Duration::from_secs(1), all).await {
        Ok(()) => tracing::info!("drained in {}ms; bye", started.elapsed().as_millis()),
        Err(_) => tracing::warn!("drain timeout of {}s reached", drain.as_secs()),
    }
    Ok(())
}
