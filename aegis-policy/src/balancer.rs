//! Load balancing over a route's targets: round robin (smooth weighted when weights differ)
//! or power of two choices on requests in flight, always skipping a target whose breaker
//! will not admit a request now (passive health) or whose health checks failed (active
//! health); the retry budget of the route; and the per-target stats snapshot.
//!
//! The one rule for the two health signals: a target takes requests when its circuit admits
//! one AND its last health checks say healthy (a route without health checks: the circuit
//! alone). Either signal alone takes it out of rotation.

use std::time::Duration;

use crate::breaker::{Breaker, BreakerState, Permit, Transition, Verdict};
use crate::config::{Balance, BreakerConfig, RetryBudgetConfig, RouteConfig, StatusSet};
use crate::health::{HealthChecks, HealthTransition};
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
    /// Why: every circuit is open, or every target failed its health checks.
    pub why: NoTarget,
}

/// Why a route has no target for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoTarget {
    /// Every target's circuit is open (or probing).
    CircuitsOpen,
    /// Every target whose circuit admits failed its health checks.
    Unhealthy,
    /// Every target was tried already (a retry has nowhere left to go).
    AllTried,
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
    /// Requests sent to it and not answered yet, and its open tunnels (WebSockets).
    pub in_flight: u32,
    /// Its weight, when the route's weights differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// What its health checks say, when the route has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
}

/// An open tunnel's hold on its target's in-flight count: given back once, by
/// [`Balancer::on_tunnel_closed`] (neither `Clone` nor `Copy`).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a tunnel's slot is given back with on_tunnel_closed when it closes"]
pub struct TunnelSlot {
    target: usize,
}

impl TunnelSlot {
    pub fn target(&self) -> usize {
        self.target
    }
}

#[derive(Debug, Clone)]
pub struct Balancer {
    urls: Vec<String>,
    breakers: Vec<Breaker>,
    cursor: usize,
    failure_statuses: StatusSet,
    transitions: Vec<TargetTransition>,
    scratch: Vec<Transition>,
    balance: Balance,
    /// Weights, when they differ (smooth weighted round robin), with each target's current
    /// credit.
    weights: Option<Vec<u32>>,
    credit: Vec<i64>,
    in_flight: Vec<u32>,
    health: Option<HealthChecks>,
    budget: RetryBudget,
    /// SplitMix64 state: the draws of power of two choices (seeded, never global).
    rng: u64,
    /// Consistent hashing: each target's URL hashed, mixed with a request's key to rank it.
    url_keys: Vec<u64>,
}

/// A request's key for consistent hashing (`hash_on`), as a number: FNV-1a, then a
/// finaliser. Unkeyed on purpose: every gateway instance sends a key to the same target.
pub fn affinity(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    crate::mix::finish(h)
}

impl Balancer {
    pub fn new(route: &RouteConfig, breaker: &BreakerConfig) -> Balancer {
        let n = route.targets.len();
        let weights: Vec<u32> = route.targets.iter().map(|t| t.weight).collect();
        let differ = weights.iter().any(|w| *w != weights[0]);
        // A seed of the route's own (the shell may reseed): draws differ between routes and
        // are the same on every run of a simulation.
        let seed = route.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
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
            balance: route.balance,
            weights: differ.then_some(weights),
            credit: vec![0; n],
            in_flight: vec![0; n],
            health: route
                .health_check
                .as_ref()
                .map(|h| HealthChecks::new(h, n, seed)),
            budget: RetryBudget::new(&RetryBudgetConfig {
                ratio: 0.2,
                min_per_second: 10,
                window: Duration::from_secs(10),
            }),
            rng: seed,
            url_keys: route
                .targets
                .iter()
                .map(|t| affinity(t.url.as_bytes()))
                .collect(),
        }
    }

    /// Sets the retry budget (from `[retry_budget]`).
    pub fn with_budget(mut self, budget: &RetryBudgetConfig) -> Balancer {
        self.budget = RetryBudget::new(budget);
        self
    }

    /// Reseeds the draws of power of two choices (the gateway seeds each process from the
    /// system's randomness, so that instances do not draw alike; the simulator from its seed).
    pub fn reseed(&mut self, seed: u64) {
        self.rng = seed;
        if let Some(h) = &mut self.health {
            h.reseed(seed ^ 0x9e37_79b9_7f4a_7c15);
        }
    }

    fn next_random(&mut self) -> u64 {
        crate::mix::splitmix64(&mut self.rng)
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
        if let (Some(h), Some(old_h)) = (&mut self.health, &old.health) {
            h.inherit(old_h, &self.urls, &old.urls);
        }
    }

    fn flush(&mut self, target: usize) {
        for t in self.scratch.drain(..) {
            self.transitions.push(TargetTransition {
                target,
                transition: t,
            });
        }
    }

    /// Picks a target for a request: the next in round-robin order (or by weight, or the
    /// better of two random ones) among those whose breaker admits a request now and whose
    /// health checks pass.
    pub fn pick(&mut self, now: Nanos) -> Result<Attempt, Unavailable> {
        self.pick_excluding(now, &[])
    }

    /// [`Balancer::pick`] among the targets not in `tried` (a retry goes elsewhere).
    pub fn pick_excluding(&mut self, now: Nanos, tried: &[usize]) -> Result<Attempt, Unavailable> {
        self.pick_keyed(now, tried, 0)
    }

    /// [`Balancer::pick_excluding`] for a request whose key (`hash_on`, see [`affinity`])
    /// is `key`: with `balance = "hash"`, the target that ranks first for it among those that
    /// would take the request (the next one when it is tried already or unavailable).
    pub fn pick_keyed(
        &mut self,
        now: Nanos,
        tried: &[usize],
        key: u64,
    ) -> Result<Attempt, Unavailable> {
        let n = self.breakers.len();
        let healthy =
            |h: &Option<HealthChecks>, i: usize| h.as_ref().is_none_or(|h| h.is_healthy(i));
        if self.balance == Balance::RoundRobin && self.weights.is_none() {
            for i in 0..n {
                let idx = (self.cursor + i) % n;
                if tried.contains(&idx) || !healthy(&self.health, idx) {
                    continue;
                }
                let permit = self.breakers[idx].try_acquire(now, &mut self.scratch);
                self.flush(idx);
                if let Some(permit) = permit {
                    self.cursor = (idx + 1) % n;
                    return Ok(self.taken(idx, permit));
                }
            }
            return Err(self.unavailable(now, tried));
        }
        // The targets that would take a request now.
        let mut open: Vec<usize> = Vec::with_capacity(n);
        for i in 0..n {
            self.breakers[i].advance(now, &mut self.scratch);
            self.flush(i);
            if !tried.contains(&i) && healthy(&self.health, i) && self.breakers[i].admits() {
                open.push(i);
            }
        }
        let chosen = match (self.balance, open.len()) {
            (_, 0) => return Err(self.unavailable(now, tried)),
            (_, 1) => open[0],
            (Balance::Hash, _) => {
                let mut best = (open[0], self.rank(open[0], key));
                for &i in &open[1..] {
                    let r = self.rank(i, key);
                    if r > best.1 {
                        best = (i, r);
                    }
                }
                best.0
            }
            (Balance::P2c, k) => {
                let a = open[(self.next_random() % k as u64) as usize];
                let mut b = open[(self.next_random() % (k as u64 - 1)) as usize];
                if b == a {
                    b = open[k - 1];
                }
                if self.load(b) < self.load(a) { b } else { a }
            }
            (Balance::RoundRobin, _) => {
                // Smooth weighted round robin (nginx): every candidate gains its weight, the
                // richest is chosen and pays the candidates' total.
                let weights = self.weights.as_deref().unwrap_or_default();
                let total: i64 = open.iter().map(|&i| i64::from(weights[i])).sum();
                let mut best = open[0];
                for &i in &open {
                    self.credit[i] += i64::from(weights[i]);
                    if self.credit[i] > self.credit[best] {
                        best = i;
                    }
                }
                self.credit[best] -= total;
                best
            }
        };
        let permit = self.breakers[chosen].try_acquire(now, &mut self.scratch);
        self.flush(chosen);
        match permit {
            Some(p) => Ok(self.taken(chosen, p)),
            None => Err(self.unavailable(now, tried)),
        }
    }

    /// Power of two choices' measure of a target: requests in flight, made heavier by recent
    /// failures, so that a target that fails fast (and so has few in flight) does not draw
    /// the traffic (Traefik #12306). A HALF_OPEN circuit waiting for its probe weighs nothing:
    /// its failures would otherwise lose it every comparison under light traffic, it would
    /// never be probed and never close (found by the simulator, `scenarios/websocket.toml` with
    /// P2C); the probe is one request.
    fn load(&self, i: usize) -> u64 {
        if self.breakers[i].wants_probe() {
            return 0;
        }
        (u64::from(self.in_flight[i]) + 1) * (1 + u64::from(self.breakers[i].failures()))
    }

    /// Rendezvous hashing's rank of target `i` for `key`: a uniform draw from the pair, and
    /// with differing weights `weight / -ln(draw)` (a target ranks first for a share of the
    /// keys proportional to its weight). Ties are as likely as two equal 53-bit draws.
    fn rank(&self, i: usize, key: u64) -> f64 {
        let h = crate::mix::finish(key ^ self.url_keys[i]);
        let draw = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        match &self.weights {
            None => draw,
            Some(w) => f64::from(w[i]) / -draw.ln(),
        }
    }

    fn taken(&mut self, target: usize, permit: Permit) -> Attempt {
        self.in_flight[target] += 1;
        Attempt { target, permit }
    }

    fn unavailable(&self, now: Nanos, tried: &[usize]) -> Unavailable {
        let n = self.breakers.len();
        let left: Vec<usize> = (0..n).filter(|i| !tried.contains(i)).collect();
        if left.is_empty() {
            return Unavailable {
                retry_after: Duration::from_secs(1),
                why: NoTarget::AllTried,
            };
        }
        let circuits: Vec<Duration> = left
            .iter()
            .map(|&i| self.breakers[i].ready_in(now))
            .collect();
        let some_circuit_admits = circuits.iter().any(|d| d.is_zero());
        match &self.health {
            Some(h) if some_circuit_admits => Unavailable {
                retry_after: h.interval(),
                why: NoTarget::Unhealthy,
            },
            _ => Unavailable {
                retry_after: circuits.into_iter().min().unwrap_or(Duration::ZERO),
                why: NoTarget::CircuitsOpen,
            },
        }
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

    /// An upgrade to `target` was answered `101` (its outcome reported, a success): the
    /// tunnel that follows counts as a request in flight until [`Balancer::on_tunnel_closed`],
    /// so that power of two choices weighs open WebSockets as load (least-request, as for
    /// any long request). The breaker has had its answer: a tunnel holds no probe slot.
    pub fn on_tunnel_opened(&mut self, target: usize) -> TunnelSlot {
        if let Some(n) = self.in_flight.get_mut(target) {
            *n += 1;
        }
        TunnelSlot { target }
    }

    /// The tunnel closed (either side, the idle timeout or the drain).
    pub fn on_tunnel_closed(&mut self, slot: TunnelSlot) {
        if let Some(n) = self.in_flight.get_mut(slot.target) {
            *n = n.saturating_sub(1);
        }
    }

    pub fn on_result(&mut self, attempt: Attempt, outcome: UpstreamOutcome, now: Nanos) {
        let verdict = self.verdict(outcome);
        if let Some(n) = self.in_flight.get_mut(attempt.target) {
            *n = n.saturating_sub(1);
        }
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

    /// The route's health checks, if it has them (the prober asks which are due and reports
    /// what they found).
    pub fn health(&mut self) -> Option<&mut HealthChecks> {
        self.health.as_mut()
    }

    /// Health changes since the last call, oldest first.
    pub fn drain_health_transitions(&mut self) -> Vec<HealthTransition> {
        self.health
            .as_mut()
            .map(HealthChecks::drain_transitions)
            .unwrap_or_default()
    }

    /// Counts a request in the retry budget (its first try).
    pub fn on_request(&mut self, now: Nanos) {
        self.budget.on_request(now);
    }

    /// Takes one retry from the budget, if it has one left.
    #[must_use]
    pub fn take_retry(&mut self, now: Nanos) -> bool {
        self.budget.take_retry(now)
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
                    in_flight: 0,
                    weight: None,
                    healthy: None,
                }
            })
            .enumerate()
            .map(|(i, mut s)| {
                s.in_flight = self.in_flight[i];
                s.weight = self.weights.as_ref().map(|w| w[i]);
                s.healthy = self.health.as_ref().map(|h| h.is_healthy(i));
                s
            })
            .collect()
    }
}

/// Retries a route may add over its requests (Finagle's and Envoy's retry budget): over a
/// sliding window, at most `ratio` retries per request, plus `min_per_second` whatever the
/// traffic. The window is ten slots; the oldest slot is dropped as time moves on.
#[derive(Debug, Clone)]
struct RetryBudget {
    ratio: f64,
    min: f64,
    slot: Duration,
    /// (slot number, requests, retries), the current slot last.
    slots: std::collections::VecDeque<(u64, u32, u32)>,
}

const BUDGET_SLOTS: u64 = 10;

impl RetryBudget {
    fn new(c: &RetryBudgetConfig) -> RetryBudget {
        RetryBudget {
            ratio: c.ratio,
            min: f64::from(c.min_per_second) * c.window.as_secs_f64(),
            slot: (c.window / BUDGET_SLOTS as u32).max(Duration::from_millis(1)),
            slots: std::collections::VecDeque::with_capacity(BUDGET_SLOTS as usize + 1),
        }
    }

    fn current(&mut self, now: Nanos) -> &mut (u64, u32, u32) {
        let n = now.0 / self.slot.as_nanos().max(1) as u64;
        while self.slots.front().is_some_and(|s| s.0 + BUDGET_SLOTS <= n) {
            self.slots.pop_front();
        }
        if self.slots.back().is_none_or(|s| s.0 != n) {
            self.slots.push_back((n, 0, 0));
        }
        self.slots.back_mut().expect("pushed")
    }

    fn on_request(&mut self, now: Nanos) {
        let s = self.current(now);
        s.1 = s.1.saturating_add(1);
    }

    fn take_retry(&mut self, now: Nanos) -> bool {
        self.current(now);
        let (requests, retries) = self.slots.iter().fold((0u64, 0u64), |(q, r), s| {
            (q + u64::from(s.1), r + u64::from(s.2))
        });
        let allowed = (self.ratio * requests as f64).max(self.min);
        if (retries as f64) < allowed {
            let s = self.current(now);
            s.2 = s.2.saturating_add(1);
            true
        } else {
            false
        }
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

    fn route(text: &str) -> (Config, Balancer) {
        let c = Config::from_toml(text, &MapEnv::default()).unwrap();
        let b = Balancer::new(&c.routes[0], &c.breaker);
        (c, b)
    }

    #[test]
    fn weights_are_honoured_exactly_and_smoothly() {
        let (_, mut b) = route(
            "[[routes]]\npath = \"/\"\ntargets = [{ url = \"http://a:1\", weight = 3 }, \"http://b:1\", { url = \"http://c:1\", weight = 2 }]\n",
        );
        let t = Nanos::from_millis(1);
        let picks: Vec<usize> = (0..6000)
            .map(|_| {
                let a = b.pick(t).unwrap();
                b.on_result(a, UpstreamOutcome::Status(200), t);
                a.target
            })
            .collect();
        let count = |i| picks.iter().filter(|&&p| p == i).count();
        assert_eq!((count(0), count(1), count(2)), (3000, 1000, 2000));
        // Smooth: the heavy target is never picked more than twice in a row.
        assert!(
            picks
                .windows(3)
                .all(|w| !(w[0] == 0 && w[1] == 0 && w[2] == 0)),
            "{:?}",
            &picks[..12]
        );
    }

    #[test]
    fn p2c_prefers_fewer_in_flight_and_skips_open_circuits() {
        let (_, mut b) = route(
            "[breaker]\nfailure_threshold = 1\n[[routes]]\npath = \"/\"\nbalance = \"p2c\"\ntargets = [\"http://a:1\", \"http://b:1\", \"http://c:1\"]\n",
        );
        let t = Nanos::from_millis(1);
        // Hold 5 requests on whatever is picked: the picks spread, none gets 3 more than another.
        let held: Vec<Attempt> = (0..30).map(|_| b.pick(t).unwrap()).collect();
        let counts: Vec<u32> = (0..3)
            .map(|i| held.iter().filter(|a| a.target == i).count() as u32)
            .collect();
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 3,
            "{counts:?}"
        );
        for a in held {
            b.on_result(a, UpstreamOutcome::Status(200), t);
        }
        // Open target 1's circuit: it gets nothing.
        loop {
            let a = b.pick(t).unwrap();
            let t1 = a.target == 1;
            b.on_result(a, UpstreamOutcome::Status(if t1 { 500 } else { 200 }), t);
            if t1 {
                break;
            }
        }
        for _ in 0..300 {
            let a = b.pick(t).unwrap();
            assert_ne!(a.target, 1);
            b.on_result(a, UpstreamOutcome::Status(200), t);
        }
    }

    /// Consistent hashing: a key always gets the same target, keys spread by weight, and a
    /// target that stops admitting moves only its own keys (and they come back with it).
    #[test]
    fn hash_is_sticky_weighted_and_moves_only_a_lost_targets_keys() {
        let (_, mut b) = route(
            "[breaker]\nfailure_threshold = 1\nopen_for = \"10s\"\n[[routes]]\npath = \"/\"\nbalance = \"hash\"\ntargets = [\"http://a:1\", \"http://b:1\", \"http://c:1\"]\n",
        );
        let t = Nanos::from_millis(1);
        let pick = |b: &mut Balancer, key: u64, now: Nanos| {
            let a = b.pick_keyed(now, &[], key).unwrap();
            let target = a.target;
            b.on_result(a, UpstreamOutcome::Status(200), now);
            target
        };
        let keys: Vec<u64> = (0..3000u32).map(|i| affinity(&i.to_le_bytes())).collect();
        let home: Vec<usize> = keys.iter().map(|&k| pick(&mut b, k, t)).collect();
        assert_eq!(
            keys.iter().map(|&k| pick(&mut b, k, t)).collect::<Vec<_>>(),
            home,
            "the same key, the same target"
        );
        for i in 0..3 {
            let n = home.iter().filter(|&&h| h == i).count();
            assert!((900..=1100).contains(&n), "target {i}: {n} of 3000 keys");
        }
        // b's circuit opens: its keys move, the others stay.
        let k_b = keys[home.iter().position(|&h| h == 1).unwrap()];
        let a = b.pick_keyed(t, &[], k_b).unwrap();
        b.on_result(a, UpstreamOutcome::Status(500), t);
        for (k, h) in keys.iter().zip(&home) {
            let now = pick(&mut b, *k, t);
            if *h == 1 {
                assert_ne!(now, 1);
            } else {
                assert_eq!(now, *h);
            }
        }
        // A retry of a key goes to its next-ranked target, not the one tried.
        let k_a = keys[home.iter().position(|&h| h == 0).unwrap()];
        let retry = b.pick_keyed(t, &[0], k_a).unwrap();
        assert_eq!(retry.target, 2, "with b open, the only other one");
        b.on_result(retry, UpstreamOutcome::Status(200), t);

        let (_, mut w) = route(
            "[[routes]]\npath = \"/\"\nbalance = \"hash\"\ntargets = [{ url = \"http://a:1\", weight = 3 }, \"http://b:1\"]\n",
        );
        let on_a = keys.iter().filter(|&&k| pick(&mut w, k, t) == 0).count();
        assert!(
            (2150..=2350).contains(&on_a),
            "{on_a} of 3000 keys on the weight-3 target"
        );
    }

    /// Open tunnels count as load: with P2C, new WebSockets go to the target holding fewer,
    /// and a closed tunnel gives its slot back. The breaker had its answer at the 101.
    #[test]
    fn p2c_weighs_open_tunnels_until_they_close() {
        let (c, mut b) = route(
            "[[routes]]\npath = \"/\"\nbalance = \"p2c\"\ntargets = [\"http://a:1\", \"http://b:1\"]\n",
        );
        let t = Nanos::from_millis(1);
        let mut open: Vec<TunnelSlot> = Vec::new();
        for _ in 0..40 {
            let a = b.pick(t).unwrap();
            let target = a.target;
            b.on_result(a, UpstreamOutcome::Status(101), t);
            open.push(b.on_tunnel_opened(target));
        }
        let on = |open: &[TunnelSlot], i| open.iter().filter(|s| s.target() == i).count();
        // Of two targets, P2C compares both: every new tunnel goes to the one with fewer.
        assert_eq!((on(&open, 0), on(&open, 1)), (20, 20));
        let stats = b.snapshot(&c.routes[0], t);
        assert_eq!((stats[0].in_flight, stats[1].in_flight), (20, 20));
        assert_eq!(stats[0].state, BreakerState::Closed);
        // Target 0's tunnels close: the next 20 all go to it.
        let (zero, one): (Vec<_>, Vec<_>) = open.into_iter().partition(|s| s.target() == 0);
        for s in zero {
            b.on_tunnel_closed(s);
        }
        let picked: Vec<usize> = (0..20)
            .map(|_| {
                let a = b.pick(t).unwrap();
                let target = a.target;
                b.on_result(a, UpstreamOutcome::Status(101), t);
                let _kept = b.on_tunnel_opened(target);
                target
            })
            .collect();
        assert_eq!(picked, vec![0; 20]);
        for s in one {
            b.on_tunnel_closed(s);
        }
        assert_eq!(b.snapshot(&c.routes[0], t)[1].in_flight, 0);
    }

    /// A target that fails fast has few requests in flight; its failures weigh on it so that
    /// it does not draw the traffic (Traefik #12306).
    #[test]
    fn p2c_does_not_starve_the_healthy_for_one_that_fails_fast() {
        let (_, mut b) = route(
            "[breaker]\nfailure_threshold = 1000\n[[routes]]\npath = \"/\"\nbalance = \"p2c\"\ntargets = [\"http://a:1\", \"http://b:1\", \"http://c:1\"]\n",
        );
        let t = Nanos::from_millis(1);
        // Targets 0 and 1 answer slowly (each holds 4 in flight), target 2 fails at once.
        let mut slow: Vec<Attempt> = Vec::new();
        let mut to_bad = 0;
        for _ in 0..3000 {
            let a = b.pick(t).unwrap();
            if a.target == 2 {
                to_bad += 1;
                b.on_result(a, UpstreamOutcome::Status(502), t);
            } else {
                slow.push(a);
                if slow.len() > 8 {
                    let done = slow.remove(0);
                    b.on_result(done, UpstreamOutcome::Status(200), t);
                }
            }
        }
        assert!(to_bad < 600, "{to_bad} of 3000 went to the failing target");
    }

    #[test]
    fn unhealthy_targets_are_skipped_and_all_unhealthy_is_its_own_answer() {
        let (_, mut b) = route(
            "[[routes]]\npath = \"/\"\ntargets = [\"http://a:1\", \"http://b:1\"]\nhealth_check = { interval = \"5s\", unhealthy_after = 1, healthy_after = 1 }\n",
        );
        let t = Nanos::from_millis(10);
        let h = b.health().unwrap();
        h.on_probe(0, false, t);
        for _ in 0..10 {
            let a = b.pick(t).unwrap();
            assert_eq!(a.target, 1);
            b.on_result(a, UpstreamOutcome::Status(200), t);
        }
        b.health().unwrap().on_probe(1, false, t);
        let u = b.pick(t).unwrap_err();
        assert_eq!(u.why, NoTarget::Unhealthy);
        assert_eq!(u.retry_after, Duration::from_secs(5));
        b.health().unwrap().on_probe(0, true, t);
        assert_eq!(b.pick(t).unwrap().target, 0);
    }

    #[test]
    fn the_retry_budget_bounds_retries_by_requests_with_a_floor() {
        let (_, b) = route("[[routes]]\npath = \"/\"\ntargets = [\"http://a:1\"]\n");
        let mut b = b.with_budget(&RetryBudgetConfig {
            ratio: 0.2,
            min_per_second: 1,
            window: Duration::from_secs(10),
        });
        let t = Nanos::from_millis(5_000);
        // The floor: 10 retries per 10 s with no traffic at all.
        let floor = (0..50).filter(|_| b.take_retry(t)).count();
        assert_eq!(floor, 10);
        // 1,000 requests buy 200 retries over the window (the 10 already taken count).
        for _ in 0..1000 {
            b.on_request(t);
        }
        let more = (0..1000).filter(|_| b.take_retry(t)).count();
        assert_eq!(more, 190);
        // The window slides: 11 s later the old slots are gone, the floor is back.
        let later = Nanos::from_millis(16_000);
        assert_eq!((0..50).filter(|_| b.take_retry(later)).count(), 10);
    }
}
