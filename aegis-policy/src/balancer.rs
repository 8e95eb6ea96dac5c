//! Round-robin load balancing over a route's targets, skipping any target whose breaker will
//! not admit a request now, and the per-target stats snapshot.

use std::time::Duration;

use crate::breaker::{Breaker, BreakerState, Permit, Transition, Verdict};
use crate::config::{BreakerConfig, RouteConfig, StatusSet};
use crate::time::Nanos;

/// How one upstream attempt ended, as the shell (or the simulator) saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// The upstream answered with this status.
    Status(u16),
    /// No connection could be made (refused, reset before a response, DNS).
    ConnectError,
    /// No response within the route's timeout.
    Timeout,
    /// The exchange ended for a reason that says nothing about the target: the client went
    /// away, the task was cancelled, the upstream closed a pooled keep-alive connection just
    /// as the request went out (a race, not a fault), or the gateway itself ran out of a local
    /// resource (file descriptors, ports, a per-target slot). Releases a half-open probe;
    /// never counts as a failure.
    Cancelled,
}

/// A forwarded request's claim on a target; give it back to [`Balancer::on_result`].
#[must_use = "report the outcome with on_result"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub target: usize,
    pub permit: Permit,
}

/// A breaker state change of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetTransition {
    pub target: usize,
    pub transition: Transition,
}

/// No target will take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable {
    /// Time until the soonest target could take one (its probe).
    pub retry_after: Duration,
}

/// One target's line in `/gateway/stats`. The first four fields are the seed's, unchanged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetStats {
    pub path: String,
    pub target_url: String,
    pub failures: u32,
    pub state: BreakerState,
    pub route: String,
    pub requests: u64,
    pub probe_in_flight: bool,
    /// Milliseconds until an OPEN circuit half-opens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_probe_in_ms: Option<u64>,
    /// Milliseconds since the last state change (absent if it never changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_transition_ms: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Balancer {
    urls: Vec<String>,
    breakers: Vec<Breaker>,
    cursor: usize,
    failure_statuses: StatusSet,
    transitions: Vec<TargetTransition>,
    scratch: Vec<Transition>,
}

impl Balancer {
    pub fn new(route: &RouteConfig, breaker: &BreakerConfig) -> Balancer {
        Balancer {
            urls: route.targets.iter().map(|t| t.url.clone()).collect(),
            breakers: route
                .targets
                .iter()
                .map(|_| Breaker::new(breaker))
                .collect(),
            cursor: 0,
            failure_statuses: breaker.failure_statuses,
            transitions: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Carries breaker state over a reload: each target whose URL `old` also has keeps its
    /// state (see [`Breaker::inherit`]); new targets start CLOSED.
    pub fn inherit(&mut self, old: &Balancer) {
        for (i, url) in self.urls.iter().enumerate() {
            if let Some(j) = old.urls.iter().position(|u| u == url) {
                self.breakers[i].inherit(&old.breakers[j]);
            }
        }
        self.cursor = old.cursor % self.breakers.len().max(1);
    }

    fn flush(&mut self, target: usize) {
        for t in self.scratch.drain(..) {
            self.transitions.push(TargetTransition {
                target,
                transition: t,
            });
        }
    }

    /// Picks the next target in round-robin order whose breaker admits a request now.
    pub fn pick(&mut self, now: Nanos) -> Result<Attempt, Unavailable> {
        let n = self.breakers.len();
        for i in 0..n {
            let idx = (self.cursor + i) % n;
            let permit = self.breakers[idx].try_acquire(now, &mut self.scratch);
            self.flush(idx);
            if let Some(permit) = permit {
                self.cursor = (idx + 1) % n;
                return Ok(Attempt {
                    target: idx,
                    permit,
                });
            }
        }
        let retry_after = self
            .breakers
            .iter()
            .map(|b| b.ready_in(now))
            .min()
            .unwrap_or(Duration::ZERO);
        Err(Unavailable { retry_after })
    }

    /// The breaker's reading of an outcome: connect errors, timeouts and the configured
    /// statuses (5xx by default) are failures.
    pub fn verdict(&self, outcome: UpstreamOutcome) -> Verdict {
        match outcome {
            UpstreamOutcome::Status(s) if self.failure_statuses.contains(s) => Verdict::Failure,
            UpstreamOutcome::Status(_) => Verdict::Success,
            UpstreamOutcome::ConnectError | UpstreamOutcome::Timeout => Verdict::Failure,
            UpstreamOutcome::Cancelled => Verdict::Neutral,
        }
    }

    pub fn on_result(&mut self, attempt: Attempt, outcome: UpstreamOutcome, now: Nanos) {
        let verdict = self.verdict(outcome);
        if let Some(b) = self.breakers.get_mut(attempt.target) {
            b.on_result(attempt.permit, verdict, now, &mut self.scratch);
            self.flush(attempt.target);
        }
    }

    /// Applies time-driven transitions on every target (so that a quiet route's breakers are
    /// seen half-opening at the right instant).
    pub fn advance(&mut self, now: Nanos) {
        for i in 0..self.breakers.len() {
            self.breakers[i].advance(now, &mut self.scratch);
            self.flush(i);
        }
    }

    /// State changes since the last call, oldest first.
    pub fn drain_transitions(&mut self) -> std::vec::Drain<'_, TargetTransition> {
        self.transitions.drain(..)
    }

    pub fn len(&self) -> usize {
        self.breakers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.breakers.is_empty()
    }

    pub fn url(&self, target: usize) -> &str {
        &self.urls[target]
    }

    pub fn breaker(&self, target: usize) -> &Breaker {
        &self.breakers[target]
    }

    /// The stats lines of this route's targets, in config order.
    pub fn snapshot(&self, route: &RouteConfig, now: Nanos) -> Vec<TargetStats> {
        self.breakers
            .iter()
            .zip(&self.urls)
            .map(|(b, url)| {
                let state = b.state_at(now);
                TargetStats {
                    path: route.path.clone(),
                    target_url: url.clone(),
                    failures: b.failures(),
                    state,
                    route: route.name.clone(),
                    requests: b.requests(),
                    probe_in_flight: state == BreakerState::HalfOpen && b.probe_in_flight(),
                    next_probe_in_ms: (state == BreakerState::Open)
                        .then(|| u64::try_from(b.ready_in(now).as_millis()).unwrap_or(u64::MAX)),
                    since_transition_ms: (b.last_transition() != Nanos::ZERO
                        || state != BreakerState::Closed)
                        .then(|| now.since(b.last_transition()).as_millis() as u64),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MapEnv};
    use proptest::prelude::*;

    fn setup(n: usize) -> (Config, Balancer) {
        let targets: Vec<String> = (0..n)
            .map(|i| format!("\"http://127.0.0.1:{}\"", 3001 + i))
            .collect();
        let text = format!(
            "[breaker]\nfailure_threshold = 3\nopen_for = \"60s\"\n[[routes]]\npath = \"/users\"\ntargets = [{}]\n",
            targets.join(",")
        );
        let c = Config::from_toml(&text, &MapEnv::default()).unwrap();
        let b = Balancer::new(&c.routes[0], &c.breaker);
        (c, b)
    }

    #[test]
    fn skips_open_targets_and_reports_retry_after() {
        let (c, mut b) = setup(3);
        let t = Nanos::from_millis(1000);
        // Fail target 0 three times.
        let mut failed = 0;
        while failed < 3 {
            let a = b.pick(t).unwrap();
            let outcome = if a.target == 0 {
                failed += 1;
                UpstreamOutcome::Status(500)
            } else {
                UpstreamOutcome::Status(200)
            };
            b.on_result(a, outcome, t);
        }
        let picks: Vec<usize> = (0..6)
            .map(|_| {
                let a = b.pick(t).unwrap();
                b.on_result(a, UpstreamOutcome::Status(200), t);
                a.target
            })
            .collect();
        assert!(!picks.contains(&0), "{picks:?}");
        let stats = b.snapshot(&c.routes[0], t);
        assert_eq!(stats[0].state, BreakerState::Open);
        assert_eq!(stats[0].failures, 3);
        assert_eq!(stats[1].state, BreakerState::Closed);
        let json = serde_json::to_value(&stats[0]).unwrap();
        assert_eq!(json["targetUrl"], "http://127.0.0.1:3001");
        assert_eq!(json["path"], "/users");
        assert_eq!(json["state"], "OPEN");
        // Every target down: unavailable, with the time to the soonest probe.
        let t1 = t.saturating_add(Duration::from_secs(1));
        while let Ok(a) = b.pick(t1) {
            assert_ne!(a.target, 0);
            b.on_result(a, UpstreamOutcome::ConnectError, t1);
        }
        let err = b.pick(Nanos::from_millis(2000)).unwrap_err();
        assert_eq!(err.retry_after, Duration::from_secs(59));
        // After open_for the first target half-opens and takes the probe.
        let a = b.pick(Nanos::from_millis(61_000)).unwrap();
        assert_eq!(a.target, 0);
        assert!(a.permit.is_probe());
        let kinds: Vec<_> = b
            .drain_transitions()
            .map(|t| (t.target, t.transition.to))
            .collect();
        assert_eq!(kinds.first(), Some(&(0, BreakerState::Open)));
        assert_eq!(kinds.last(), Some(&(0, BreakerState::HalfOpen)));
    }

    #[test]
    fn inherit_keeps_state_of_unchanged_targets() {
        let (_, mut old) = setup(2);
        let t = Nanos::from_millis(5);
        for _ in 0..6 {
            let a = old.pick(t).unwrap();
            let o = if a.target == 1 {
                UpstreamOutcome::Timeout
            } else {
                UpstreamOutcome::Status(204)
            };
            old.on_result(a, o, t);
        }
        let (c, mut new) = setup(3);
        new.inherit(&old);
        let s = new.snapshot(&c.routes[0], t);
        assert_eq!(
            (s[0].state, s[1].state, s[2].state),
            (
                BreakerState::Closed,
                BreakerState::Open,
                BreakerState::Closed
            )
        );
    }

    proptest! {
        /// With a fixed healthy set, each of the k targets gets n/k ± 1 of n picks.
        #[test]
        fn round_robin_is_fair(k in 1usize..7, down in prop::collection::btree_set(0usize..7, 0..6), n in 1usize..200) {
            let (_, mut b) = setup(k);
            let t = Nanos::from_millis(1);
            let down: Vec<usize> = down.into_iter().filter(|d| *d < k).collect();
            for &d in &down {
                for _ in 0..3 {
                    // Drive d's breaker open directly.
                    let p = b.breakers[d].try_acquire(t, &mut Vec::new()).unwrap();
                    b.breakers[d].on_result(p, Verdict::Failure, t, &mut Vec::new());
                }
            }
            let healthy = k - down.len();
            let mut counts = vec![0usize; k];
            for _ in 0..n {
                match b.pick(t) {
                    Ok(a) => { counts[a.target] += 1; b.on_result(a, UpstreamOutcome::Status(200), t); }
                    Err(_) => prop_assert_eq!(healthy, 0),
                }
            }
            for (i, c) in counts.iter().enumerate() {
                if down.contains(&i) {
                    prop_assert_eq!(*c, 0);
                } else {
                    let fair = n as f64 / healthy as f64;
                    prop_assert!((*c as f64 - fair).abs() <= 1.0, "target {} got {} of {}", i, c, n);
                }
            }
        }
    }
}
