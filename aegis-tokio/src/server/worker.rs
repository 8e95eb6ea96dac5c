//! A worker thread: its own current-thread runtime, its own `SO_REUSEPORT` listener on the
//! proxy address and its own upstream pools; it serves until told to stop, then drains.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::listen;
use crate::gateway::Listener;
use crate::state::Shared;

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
        if !listen::serve(listener, Listener::Proxy, shared, stop).await {
            tracing::warn!("worker {i}: drain timeout reached; closing its remaining connections");
        }
    });
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
