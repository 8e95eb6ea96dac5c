//! A worker thread: its own current-thread runtime, its own `SO_REUSEPORT` listener on the
//! proxy address and its own upstream pools; it serves until told to stop, then drains.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::listen;
use crate::gateway::Listener;
use crate::state::Shared;
use crate::upstream::{self, Key};

/// How often the reaper looks at idle upstream connections when none closes.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// One worker: reports the address it bound (or why it could not) on `ready`, then serves.
pub(super) fn run(
    i: usize,
    addr: SocketAddr,
    reuse_port: bool,
    shared: Arc<Shared>,
    stop: CancellationToken,
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
    crate::observe::metrics::set_shard(i);
    // Connections are tasks local to this thread (they share state through Rc/RefCell).
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = match listen::bind(addr, reuse_port) {
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
        tokio::task::spawn_local(reap(shared.clone(), stop.clone()));
        if !listen::serve(listener, Listener::Proxy, shared, stop).await {
            tracing::warn!("worker {i}: drain timeout reached; closing its remaining connections");
        }
    });
}

/// The worker's upstream pool reaper: a pass over its idle connections every second (idle
/// ones expire, those of targets a reload removed close) and at once whenever an upstream
/// closes one of them (no connection lingers in CLOSE_WAIT). Ends when the worker stops.
async fn reap(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    let mut stopped = pin!(stop.cancelled());
    poll_fn(|cx| {
        if stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        while tick.poll_tick(cx).is_ready() {}
        let rt = shared.runtime.load();
        let live: Vec<Key> = rt
            .routes
            .iter()
            .flat_map(|r| r.targets.iter().map(|t| t.pool))
            .collect();
        upstream::sweep(cx, |k| live.contains(&k));
        Poll::Pending
    })
    .await;
}

/// Waits for worker threads to finish without blocking the control runtime.
pub(super) async fn join(threads: Vec<std::thread::JoinHandle<()>>) {
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
}
