//! Reports a forwarded request's outcome to its target's breaker exactly once, and logs the
//! circuit transitions it causes.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use aegis_policy::{Attempt, Balancer, TunnelSlot, UpstreamOutcome};

use crate::record::RequestId;
use crate::state::{Runtime, Shared, lock};

/// Reports a forwarded request's outcome to its breaker exactly once: explicitly with
/// [`OutcomeGuard::report`], or as `Cancelled` when dropped unreported (the client went away
/// and hyper dropped the handler mid-exchange).
pub(super) struct OutcomeGuard<'a> {
    pub(super) shared: &'a Shared,
    pub(super) rt: &'a Runtime,
    pub(super) route: usize,
    pub(super) attempt: Option<Attempt>,
    /// For the log line of a breaker transition this outcome causes.
    pub(super) request_id: RequestId,
}

impl OutcomeGuard<'_> {
    pub(super) fn report(&mut self, outcome: UpstreamOutcome) {
        self.report_at(outcome, Instant::now());
    }

    /// [`OutcomeGuard::report`] with the clock already read.
    pub(super) fn report_at(&mut self, outcome: UpstreamOutcome, instant: Instant) {
        let Some(attempt) = self.attempt.take() else {
            return;
        };
        let now = self.shared.clock.at(instant);
        let balancer = &self.rt.balancers[self.route];
        let mut b = lock(balancer);
        self.rt
            .policy
            .on_upstream_result(&mut b, attempt, outcome, now);
        let transitions: Vec<_> = b.drain_transitions().collect();
        if !transitions.is_empty() {
            let urls: Vec<String> = transitions
                .iter()
                .map(|t| b.url(t.target).to_owned())
                .collect();
            drop(b);
            let route = &self.rt.policy.config().routes[self.route].name;
            let id = self.request_id.as_str();
            for (t, url) in transitions.iter().zip(urls) {
                tracing::warn!(
                    "circuit {} → {} for {url} on route {route} [{id}]",
                    t.transition.from.as_str(),
                    t.transition.to.as_str()
                );
            }
        }
    }
}

impl Drop for OutcomeGuard<'_> {
    fn drop(&mut self) {
        self.report(UpstreamOutcome::Cancelled);
    }
}

/// An open tunnel's place among its target's requests in flight (power of two choices weighs
/// open WebSockets as load): taken when the `101` goes out, given back when dropped (the
/// tunnel closed, or the drain closed it), to the balancer it came from even if a reload has
/// replaced the route's since.
#[derive(Debug)]
pub struct TunnelLease {
    balancer: Arc<Mutex<Balancer>>,
    slot: Option<TunnelSlot>,
}

impl TunnelLease {
    pub(super) fn open(rt: &Runtime, route: usize, target: usize) -> Option<TunnelLease> {
        let balancer = rt.balancers.get(route)?.clone();
        let slot = lock(&balancer).on_tunnel_opened(target);
        Some(TunnelLease {
            balancer,
            slot: Some(slot),
        })
    }
}

impl Drop for TunnelLease {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            lock(&self.balancer).on_tunnel_closed(slot);
        }
    }
}
