//! Active health checks: the probes of every route whose config asks for them, run from one
//! place per gateway process (the control thread), whatever the number of workers. Which
//! target is due and what a result means are the policy's (`aegis_policy::HealthChecks`);
//! this module sends the `GET`s and reports what came back.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use hyper::body::Body;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::BodyError;
use crate::record::RequestId;
use crate::state::{Runtime, Shared, lock};
use crate::upstream;

/// The longest the prober sleeps: a reload that adds health checks is seen within it.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Response bytes of a probe read (and dropped) so its connection can be reused.
const MAX_PROBE_BODY: usize = 64 * 1024;

/// Probes targets as they fall due until `stop`.
pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let rt = shared.runtime.load_full();
        let now = shared.clock.now();
        let mut next = now.mono.saturating_add(MAX_SLEEP);
        for (route, balancer) in rt.balancers.iter().enumerate() {
            let mut b = lock(balancer);
            let Some(checks) = b.health() else {
                continue;
            };
            for target in checks.due(now.mono) {
                let (path, timeout) = (checks.path().to_owned(), checks.timeout());
                tokio::task::spawn_local(probe(
                    shared.clone(),
                    rt.clone(),
                    route,
                    target,
                    path,
                    timeout,
                ));
            }
            if let Some(due) = checks.next_due() {
                next = next.min(due);
            }
        }
        let wait = Duration::from_nanos(next.0.saturating_sub(now.mono.0));
        tokio::select! {
            () = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One probe: `GET path` to the target, a 2xx within `timeout` passes.
async fn probe(
    shared: Arc<Shared>,
    rt: Arc<Runtime>,
    route: usize,
    target: usize,
    path: String,
    timeout: Duration,
) {
    let t = &rt.routes[route].targets[target];
    let headers = HeaderMap::new();
    let request_id = RequestId::of(&headers);
    let outgoing = upstream::Outgoing {
        method: &Method::GET,
        path_and_query: &path,
        headers: &headers,
        set: upstream::SetHeaders {
            host: &t.host,
            forwarded_for: None,
            forwarded_host: None,
            request_id: &request_id,
            upgrade: None,
            tls: false,
        },
    };
    let start = Instant::now();
    let timing = upstream::Timing {
        connect_timeout: timeout,
        now: start,
        deadline: start + timeout,
        body_stall: timeout,
    };
    let exchange = async {
        let resp = upstream::send(t, &outgoing, &mut NoBody, timing)
            .await
            .ok()?;
        let passed = resp.status().is_success();
        let mut body = resp.into_body();
        let mut read = 0;
        while let Some(Ok(frame)) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > MAX_PROBE_BODY {
                break;
            }
        }
        Some(passed)
    };
    let passed = matches!(
        tokio::time::timeout(timeout, exchange).await,
        Ok(Some(true))
    );
    let now = shared.clock.now();
    let mut b = lock(&rt.balancers[route]);
    let Some(checks) = b.health() else {
        return;
    };
    checks.on_probe(target, passed, now.mono);
    for change in b.drain_health_transitions() {
        let url = b.url(change.target).to_owned();
        let name = &rt.policy.config().routes[route].name;
        if change.healthy {
            tracing::info!(
                "target {url} of route {name} passes its health checks: back in rotation"
            );
        } else {
            tracing::warn!("target {url} of route {name} fails its health checks: out of rotation");
        }
    }
}

/// A request with no body.
struct NoBody;

impl Body for NoBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        std::task::Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }
}
