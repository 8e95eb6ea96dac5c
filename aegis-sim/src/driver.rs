//! The simulated gateway: drives aegis-policy's pipeline step by step (`on_request` →
//! counter store → `on_counter` → `forward` → `on_upstream_result`) exactly as the gateway
//! does, and checks the invariants after every step against a shadow model of its own.
//!
//! Nothing here decides what happens to a request; the policy does. The driver only counts,
//! keeps the bookkeeping a real gateway keeps (requests in flight), and watches.

use std::collections::HashMap;
use std::time::Duration;

use aegis_policy::config::LimitAlgorithm;
use aegis_policy::http::header::RETRY_AFTER;
use aegis_policy::{
    Attempt, Balancer, BreakerState, CounterKey, CounterReply, CounterRequest, CounterStore,
    FixedHasher, MemoryStore, Nanos, Now, Policy, Reason, Reply, RequestView, RouteId, Step,
    StoreError, UnixMillis, UpstreamOutcome, Verdict,
};

use crate::scenario::StoreFault;

/// The counter store of the simulation: aegis-policy's `MemoryStore` with a fixed hasher (it
/// stands for Redis too: the Redis script mirrors the same pure step), failing during the
/// scenario's store faults. A slow command that exceeds `command_timeout` is an error to the
/// gateway even though the store may have applied it, so it is applied and then refused.
#[derive(Debug)]
pub struct FaultyStore {
    inner: MemoryStore<FixedHasher>,
    faults: Vec<StoreFault>,
    command_timeout: u64,
    /// Virtual time of the command, set by the driver before each call.
    now: u64,
}

impl FaultyStore {
    pub fn new(max_keys: usize, faults: Vec<StoreFault>, command_timeout: Duration) -> Self {
        FaultyStore {
            inner: MemoryStore::with_hasher(max_keys, FixedHasher),
            faults,
            command_timeout: u64::try_from(command_timeout.as_nanos()).unwrap_or(u64::MAX),
            now: 0,
        }
    }
}

impl CounterStore for FaultyStore {
    fn apply(&mut self, req: &CounterRequest) -> Result<CounterReply, StoreError> {
        for f in &self.faults {
            if f.from <= self.now && self.now < f.until {
                match f.slow {
                    None => {
                        return Err(StoreError(
                            "connection refused (simulated outage)".to_owned(),
                        ));
                    }
                    Some(latency) if latency >= self.command_timeout => {
                        let _ = self.inner.apply(req);
                        return Err(StoreError(format!(
                            "command timed out after {}ms (simulated slow store)",
                            self.command_timeout / 1_000_000
                        )));
                    }
                    // Slower but within the timeout: the same answer, a little later; the
                    // simulator does not delay the request for it.
                    Some(_) => {}
                }
            }
        }
        self.inner.apply(req)
    }
}

/// Labels of how requests ended, in report order.
pub const OUTCOMES: [&str; 13] = [
    "forwarded",
    "upstream_error",
    "upstream_timeout",
    "bad_request",
    "no_route",
    "method_not_allowed",
    "unauthorized",
    "rate_limited",
    "store_unavailable",
    "no_healthy_target",
    "uri_too_long",
    "headers_too_large",
    "body_too_large",
];

fn reason_index(r: &Reason) -> usize {
    match r {
        Reason::UpstreamError => 1,
        Reason::UpstreamTimeout => 2,
        Reason::BadRequest => 3,
        Reason::NotFound => 4,
        Reason::MethodNotAllowed => 5,
        Reason::Unauthorized(_) => 6,
        Reason::RateLimited => 7,
        Reason::StoreUnavailable => 8,
        Reason::NoHealthyTarget => 9,
        Reason::UriTooLong => 10,
        Reason::HeadersTooLarge => 11,
        Reason::BodyTooLarge => 12,
    }
}

/// A broken invariant: when, which, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    pub t_ms: u64,
    pub invariant: &'static str,
    pub detail: String,
}

/// A breaker state change, at its logical instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransitionRecord {
    pub at: Nanos,
    pub route: usize,
    pub target: usize,
    pub from: BreakerState,
    pub to: BreakerState,
}

/// What the shadow model believes about one breaker, built only from the transitions the
/// balancer reports and the forwards the driver sees.
#[derive(Debug, Clone, Copy)]
struct Shadow {
    state: BreakerState,
    opened_at: Nanos,
    last_at: Nanos,
    /// Bumps on every transition; probes of older eras no longer count.
    era: u64,
    probes: u32,
}

/// A forward in flight: only what reporting its outcome needs (the `Forward` itself is
/// large and is dropped once the upstream request is described).
#[derive(Debug)]
struct Flight {
    request: u64,
    route: usize,
    attempt: Attempt,
    probe_era: Option<u64>,
}

/// Counters for the report.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub requests: u64,
    pub responses: u64,
    pub status: Vec<u64>,
    pub outcomes: [u64; OUTCOMES.len()],
    /// 401s by `AuthFailure::reason()`.
    pub auth: Vec<(&'static str, u64)>,
    pub store_errors: u64,
    /// Admitted without a rate-limit check because the store failed (`on_store_error = allow`).
    pub unchecked: u64,
    /// `[route][target]` → (forwards, failures as the breaker judges them).
    pub per_target: Vec<Vec<(u64, u64)>>,
    pub checks: u64,
}

/// How the pipeline handled a new request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// The gateway answered at once.
    Respond {
        request: u64,
        status: u16,
        /// The route that answered (401, 429, 503), if routing got that far.
        route: Option<usize>,
    },
    /// Sent upstream; report how it went with [`Driver::complete`].
    Forward {
        request: u64,
        slot: u32,
        route: usize,
        target: usize,
        timeout: Duration,
        /// The path and query the upstream receives, when the policy rewrote it
        /// (normalisation, `strip_prefix`, a target base path); `None`: as the client sent it.
        upstream_path: Option<String>,
    },
}

/// The pipeline, its mutable state, the bookkeeping and the invariant checks.
#[derive(Debug)]
pub struct Driver {
    pub policy: Policy,
    pub balancers: Vec<Balancer>,
    store: FaultyStore,
    shadow: Vec<Vec<Shadow>>,
    /// Admissions per fixed-window key in its current window.
    fixed: HashMap<CounterKey, (u64, u64), FixedHasher>,
    flights: Vec<Option<Flight>>,
    free: Vec<u32>,
    answered: Vec<bool>,
    pub counts: Counts,
    /// Requests answered 429, per counter key.
    pub limited: HashMap<CounterKey, u64, FixedHasher>,
    pub transitions: Vec<TransitionRecord>,
    pub violations: Vec<Violation>,
    /// Instants at which a route's breakers change state on their own; the runner calls
    /// [`Driver::tick`] then, so that timelines show the change when it happens.
    pub ticks: Vec<(u64, usize)>,
    open_for: Duration,
    probe_timeout: Duration,
    /// Keys fetched from JWKS URLs, by provider (`[idp]` scenarios set them as time passes).
    pub keys: Vec<Option<std::sync::Arc<aegis_policy::KeySet>>>,
}

fn violation(now: Nanos, invariant: &'static str, detail: String) -> Violation {
    Violation {
        t_ms: now.as_millis(),
        invariant,
        detail,
    }
}

impl Driver {
    pub fn new(policy: Policy, store: FaultyStore) -> Driver {
        let balancers = policy.balancers();
        let cfg = policy.config();
        let shadow = cfg
            .routes
            .iter()
            .map(|r| {
                vec![
                    Shadow {
                        state: BreakerState::Closed,
                        opened_at: Nanos::ZERO,
                        last_at: Nanos::ZERO,
                        era: 0,
                        probes: 0,
                    };
                    r.targets.len()
                ]
            })
            .collect();
        let counts = Counts {
            status: vec![0; 600],
            per_target: cfg
                .routes
                .iter()
                .map(|r| vec![(0, 0); r.targets.len()])
                .collect(),
            ..Counts::default()
        };
        Driver {
            open_for: cfg.breaker.open_for,
            probe_timeout: cfg.breaker.probe_timeout,
            policy,
            balancers,
            store,
            shadow,
            fixed: HashMap::with_hasher(FixedHasher),
            flights: Vec::new(),
            free: Vec::new(),
            answered: Vec::new(),
            counts,
            limited: HashMap::with_hasher(FixedHasher),
            transitions: Vec::new(),
            violations: Vec::new(),
            ticks: Vec::new(),
            keys: Vec::new(),
        }
    }

    pub fn failed(&self) -> bool {
        !self.violations.is_empty()
    }

    /// A new request arrives at `now`.
    pub fn request(&mut self, view: &RequestView<'_>, now: Now) -> Handled {
        let request = self.answered.len() as u64;
        self.answered.push(false);
        self.counts.requests += 1;
        let ticket = match self.policy.on_request_with(view, &self.keys, now) {
            Step::Respond(reply) => return self.reply(request, &reply, now),
            Step::Admit(t) => t,
            Step::Count(pending) => {
                self.store.now = now.mono.0;
                let result = self.store.apply(pending.request());
                let mut denied_key = None;
                match &result {
                    Ok(r) if r.admitted => self.check_fixed_window(pending.request(), now),
                    Ok(_) => denied_key = Some(pending.request().key.clone()),
                    Err(_) => self.counts.store_errors += 1,
                }
                let failed_store = result.is_err();
                match self.policy.on_counter(pending, result, now) {
                    Ok(t) => {
                        if failed_store {
                            self.counts.unchecked += 1;
                        }
                        t
                    }
                    Err(reply) => {
                        if let Some(k) = denied_key {
                            *self.limited.entry(k).or_insert(0) += 1;
                        }
                        return self.reply(request, &reply, now);
                    }
                }
            }
        };
        let route = ticket.route().0;
        let result = self.policy.forward(ticket, &mut self.balancers[route], now);
        self.drain(route);
        let fwd = match result {
            Ok(f) => f,
            Err(reply) => return self.reply(request, &reply, now),
        };
        let target = fwd.target();
        self.counts.checks += 1;
        let shadow = &mut self.shadow[route][target];
        let mut probe_era = None;
        match shadow.state {
            BreakerState::Open => {
                let v = violation(
                    now.mono,
                    "no_forward_to_open",
                    format!(
                        "request {request} forwarded to {} of route {} whose breaker is OPEN",
                        self.balancers[route].url(target),
                        self.policy.route(fwd.route).name
                    ),
                );
                self.violations.push(v);
            }
            BreakerState::HalfOpen => {
                shadow.probes += 1;
                probe_era = Some(shadow.era);
                if shadow.probes > 1 {
                    let v = violation(
                        now.mono,
                        "one_probe_per_half_open",
                        format!(
                            "{} probes in flight to HALF_OPEN {} of route {}",
                            shadow.probes,
                            self.balancers[route].url(target),
                            self.policy.route(fwd.route).name
                        ),
                    );
                    self.violations.push(v);
                }
                self.ticks
                    .push((now.mono.saturating_add(self.probe_timeout).0, route));
            }
            BreakerState::Closed => {}
        }
        self.check_consistent(route, target, now.mono);
        self.counts.per_target[route][target].0 += 1;
        let timeout = fwd.timeout;
        let original = view.path_and_query;
        let upstream_path = match fwd.path_and_query(original) {
            p if *p == *original => None,
            p => Some(p.into_owned()),
        };
        let flight = Flight {
            request,
            route,
            attempt: fwd.attempt,
            probe_era,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.flights[s as usize] = Some(flight);
                s
            }
            None => {
                self.flights.push(Some(flight));
                (self.flights.len() - 1) as u32
            }
        };
        Handled::Forward {
            request,
            slot,
            route,
            target,
            timeout,
            upstream_path,
        }
    }

    /// The upstream outcome of the request in `slot`, known at `now`. Returns the request id
    /// and the status its client gets.
    pub fn complete(
        &mut self,
        slot: u32,
        outcome: UpstreamOutcome,
        now: Now,
    ) -> Option<(u64, u16)> {
        self.counts.checks += 1;
        let Some(flight) = self.flights.get_mut(slot as usize).and_then(Option::take) else {
            self.violations.push(violation(
                now.mono,
                "outcome_reported_once",
                format!("an outcome for slot {slot} arrived, but nothing is in flight there"),
            ));
            return None;
        };
        self.free.push(slot);
        let route = flight.route;
        let target = flight.attempt.target;
        if self.balancers[route].verdict(outcome) == Verdict::Failure {
            self.counts.per_target[route][target].1 += 1;
        }
        if let Some(era) = flight.probe_era {
            let s = &mut self.shadow[route][target];
            if s.era == era {
                s.probes = s.probes.saturating_sub(1);
            }
        }
        self.policy
            .on_upstream_result(&mut self.balancers[route], flight.attempt, outcome, now);
        self.drain(route);
        self.check_consistent(route, target, now.mono);
        // 502/504 are the policy's answer, as in the gateway.
        let failed = self
            .policy
            .upstream_failure(RouteId(route), target, outcome, "");
        let (status, label) = match (failed, outcome) {
            (Some(r), _) => (r.status.as_u16(), reason_index(&r.reason)),
            (None, UpstreamOutcome::Status(s)) => (s, 0),
            // The client is gone; nobody reads this status.
            (None, _) => (499, 1),
        };
        self.answer(flight.request, status, label, now.mono);
        Some((flight.request, status))
    }

    /// Every breaker transition so far, named by route and target URL (t_ms from start).
    pub fn transition_reports(&self) -> Vec<crate::report::TransitionReport> {
        let routes = &self.policy.config().routes;
        self.transitions
            .iter()
            .map(|x| crate::report::TransitionReport {
                t_ms: x.at.as_millis(),
                route: routes[x.route].name.clone(),
                target: routes[x.route].targets[x.target].url.clone(),
                from: x.from.as_str(),
                to: x.to.as_str(),
            })
            .collect()
    }

    /// Applies the time-driven transitions of `route` up to `now`.
    pub fn tick(&mut self, route: usize, now: Nanos) {
        if let Some(b) = self.balancers.get_mut(route) {
            b.advance(now);
            self.drain(route);
        }
    }

    /// Ends the run at `end`: time-driven transitions up to then, and the end-of-run checks
    /// (every request answered once, every forward's outcome reported).
    pub fn finish(&mut self, end: Nanos) {
        for r in 0..self.balancers.len() {
            self.tick(r, end);
        }
        if let Some(f) = self.flights.iter().flatten().next() {
            self.violations.push(violation(
                end,
                "outcome_reported_once",
                format!(
                    "request {} was forwarded but its outcome was never reported",
                    f.request
                ),
            ));
        }
        if let Some(i) = self.answered.iter().position(|a| !a) {
            self.violations.push(violation(
                end,
                "one_response_per_request",
                format!("request {i} never got a response"),
            ));
        }
    }

    /// The state of every breaker at `end`, by route then target.
    pub fn final_states(&self, end: Nanos) -> Vec<Vec<BreakerState>> {
        self.balancers
            .iter()
            .map(|b| (0..b.len()).map(|t| b.breaker(t).state_at(end)).collect())
            .collect()
    }

    fn reply(&mut self, request: u64, reply: &Reply, now: Now) -> Handled {
        let status = reply.status.as_u16();
        if let Reason::Unauthorized(f) = &reply.reason {
            let r = f.reason();
            match self.counts.auth.iter_mut().find(|(k, _)| *k == r) {
                Some(e) => e.1 += 1,
                None => {
                    self.counts.auth.push((r, 1));
                    self.counts.auth.sort();
                }
            }
        }
        if status == 503 || status == 429 {
            self.counts.checks += 1;
            let retry = reply
                .headers
                .iter()
                .find(|(k, _)| k == RETRY_AFTER)
                .and_then(|(_, v)| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if !matches!(retry, Some(s) if s >= 1) {
                self.violations.push(violation(
                    now.mono,
                    "retry_after_on_refusal",
                    format!(
                        "request {request} answered {status} without a Retry-After of at least 1 s"
                    ),
                ));
            }
        }
        self.answer(request, status, reason_index(&reply.reason), now.mono);
        Handled::Respond {
            request,
            status,
            route: reply.route.map(|r| r.0),
        }
    }

    fn answer(&mut self, request: u64, status: u16, label: usize, now: Nanos) {
        self.counts.checks += 1;
        match self.answered.get_mut(request as usize) {
            Some(a) if !*a => *a = true,
            _ => {
                self.violations.push(violation(
                    now,
                    "one_response_per_request",
                    format!("request {request} answered a second time ({status})"),
                ));
                return;
            }
        }
        self.counts.responses += 1;
        if let Some(c) = self.counts.status.get_mut(status as usize) {
            *c += 1;
        }
        self.counts.outcomes[label] += 1;
    }

    fn check_fixed_window(&mut self, req: &CounterRequest, now: Now) {
        if req.limit.algorithm != LimitAlgorithm::FixedWindow {
            return;
        }
        self.counts.checks += 1;
        let window = req.limit.window_start(req.now);
        let max = req.limit.max;
        let entry = match self.fixed.get_mut(&req.key) {
            Some(e) => e,
            None => self.fixed.entry(req.key.clone()).or_insert((window, 0)),
        };
        if entry.0 != window {
            *entry = (window, 0);
        }
        entry.1 += 1;
        if entry.1 > max {
            let detail = format!(
                "{} admitted {} requests in the window starting at {} (max {max})",
                req.key,
                entry.1,
                UnixMillis(window).0
            );
            self.violations
                .push(violation(now.mono, "fixed_window_max", detail));
        }
    }

    /// The breaker that just moved must agree with the shadow model.
    fn check_consistent(&mut self, route: usize, target: usize, now: Nanos) {
        self.counts.checks += 1;
        let actual = self.balancers[route].breaker(target).state_at(now);
        let believed = self.shadow[route][target].state;
        if actual != believed {
            self.violations.push(violation(
                now,
                "transitions_account_for_state",
                format!(
                    "breaker of {} on route {} is {} but its reported transitions lead to {}",
                    self.balancers[route].url(target),
                    self.policy.route(aegis_policy::RouteId(route)).name,
                    actual.as_str(),
                    believed.as_str()
                ),
            ));
        }
    }

    /// Takes the balancer's transitions into the record and the shadow model, checking each.
    fn drain(&mut self, route: usize) {
        let open_for = self.open_for;
        let balancer = &mut self.balancers[route];
        for tt in balancer.drain_transitions() {
            let t = tt.transition;
            let s = &mut self.shadow[route][tt.target];
            self.counts.checks += 1;
            let mut problems = Vec::new();
            if t.from != s.state {
                problems.push((
                    "transitions_account_for_state",
                    format!(
                        "transition {}→{} but the breaker was {}",
                        t.from.as_str(),
                        t.to.as_str(),
                        s.state.as_str()
                    ),
                ));
            }
            if t.at < s.last_at {
                problems.push((
                    "transitions_in_time_order",
                    format!("transition at {} after one at {}", t.at, s.last_at),
                ));
            }
            if t.from == BreakerState::Open && t.at.since(s.opened_at) < open_for {
                problems.push((
                    "open_for_respected",
                    format!(
                        "left OPEN after {}ms, before open_for ({}ms)",
                        t.at.since(s.opened_at).as_millis(),
                        open_for.as_millis()
                    ),
                ));
            }
            if t.to == BreakerState::Open {
                s.opened_at = t.at;
                self.ticks.push((t.at.saturating_add(open_for).0, route));
            }
            s.state = t.to;
            s.last_at = t.at;
            s.era += 1;
            s.probes = 0;
            for (inv, detail) in problems {
                self.violations.push(Violation {
                    t_ms: t.at.as_millis(),
                    invariant: inv,
                    detail: format!("{} target {}: {detail}", route, tt.target),
                });
            }
            self.transitions.push(TransitionRecord {
                at: t.at,
                route,
                target: tt.target,
                from: t.from,
                to: t.to,
            });
        }
    }
}
