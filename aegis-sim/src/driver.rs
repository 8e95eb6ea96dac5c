//! The simulated gateway: drives aegis-policy's pipeline step by step (`on_request` →
//! counter store → `on_counter` → `forward` → `on_upstream_result`) exactly as the gateway
//! does, and checks every step twice: against the reference model ([`crate::oracle`]), which
//! says what the policy should have decided, and against the invariants, kept by a shadow
//! model built from the breakers' reported transitions.
//!
//! Nothing here decides what happens to a request; the policy does. The driver only counts,
//! keeps the bookkeeping a real gateway keeps (requests in flight), and watches.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aegis_policy::config::{LimitAlgorithm, LimitKeyKind};
use aegis_policy::http::header::RETRY_AFTER;
use aegis_policy::http::{HeaderMap, HeaderName};
use aegis_policy::pipeline::{
    AEGIS_RATELIMIT, RATELIMIT_LIMIT, RATELIMIT_POLICY, RATELIMIT_REMAINING, RATELIMIT_RESET,
    X_USER_ID,
};
use aegis_policy::{
    Attempt, Balancer, BreakerState, CounterKey, CounterReply, CounterRequest, CounterStore,
    FixedHasher, Forward, MemoryStore, Nanos, Now, Policy, Reason, Reply, RequestView, RouteId,
    Step, StoreError, UnixMillis, UpstreamOutcome, Verdict,
};

use crate::oracle::{self, Answer, Oracle, Rate};
use crate::scenario::StoreFault;
use crate::violation::Violation;

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
pub const OUTCOMES: [&str; 15] = [
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
    "client_cancelled",
    "outcome_lost",
];

const CANCELLED: usize = 13;
const LOST: usize = 14;

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
    oracle: Option<oracle::Ticket>,
    /// With retries modelled: what a retry needs.
    retry: Option<Box<RetryCtx>>,
}

/// What sending a request again needs: the policy's `Forward` (its tried targets), the
/// method, the client's path, when the first try went out, and the targets tried.
#[derive(Debug)]
struct RetryCtx {
    fwd: aegis_policy::Forward,
    method: aegis_policy::http::Method,
    original: String,
    first_at: u64,
    tried: Vec<usize>,
}

/// A try the policy sends again, for the runner to dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryTry {
    pub request: u64,
    pub slot: u32,
    pub route: usize,
    pub target: usize,
    pub timeout: Duration,
    pub upstream_path: String,
}

/// Watches a route's retries against its `[retry_budget]`, restated from the config: over a
/// window, at most `ratio` retries per request, or `min_per_second` × the window.
#[derive(Debug)]
struct BudgetWatch {
    ratio: f64,
    floor: f64,
    window: u64,
    requests: std::collections::VecDeque<u64>,
    retries: std::collections::VecDeque<u64>,
    /// Retries the policy may have taken from the budget and found no target for (it takes
    /// one before it picks): counted against the room, never as granted.
    maybe: std::collections::VecDeque<u64>,
}

impl BudgetWatch {
    fn new(c: &aegis_policy::config::RetryBudgetConfig) -> BudgetWatch {
        BudgetWatch {
            ratio: c.ratio,
            floor: f64::from(c.min_per_second) * c.window.as_secs_f64(),
            window: u64::try_from(c.window.as_nanos()).unwrap_or(u64::MAX),
            requests: std::collections::VecDeque::new(),
            retries: std::collections::VecDeque::new(),
            maybe: std::collections::VecDeque::new(),
        }
    }

    fn prune(&mut self, t: u64) {
        let from = t.saturating_sub(self.window);
        while self.requests.front().is_some_and(|x| *x < from) {
            self.requests.pop_front();
        }
        while self.retries.front().is_some_and(|x| *x < from) {
            self.retries.pop_front();
        }
        while self.maybe.front().is_some_and(|x| *x < from) {
            self.maybe.pop_front();
        }
    }

    fn since(v: &std::collections::VecDeque<u64>, from: u64) -> usize {
        v.iter().filter(|x| **x >= from).count()
    }

    /// The budget's window is kept in ten slots, so it spans between nine tenths of the
    /// window and the whole of it: a retry granted at `t` means fewer retries in the last
    /// nine tenths than the allowance over the whole window. `Some` explains a breach.
    fn granted(&mut self, t: u64) -> Option<String> {
        self.prune(t);
        let narrow = t.saturating_sub(self.window / 10 * 9);
        let retries = Self::since(&self.retries, narrow);
        let requests = self.requests.len();
        let allowed = (self.ratio * requests as f64).max(self.floor);
        self.retries.push_back(t);
        ((retries as f64) >= allowed).then(|| {
            format!(
                "a retry granted with {retries} retries already in the last 9/10 of the window,                  {requests} requests in the window: the budget allows {allowed:.1}"
            )
        })
    }

    fn describe(&self, t: u64) -> String {
        let narrow = t.saturating_sub(self.window / 10 * 9);
        format!(
            "{} retries and {} requests in the window, {} requests in its last 9/10; ratio {}, floor {}",
            self.retries.len(),
            self.requests.len(),
            Self::since(&self.requests, narrow),
            self.ratio,
            self.floor
        )
    }

    /// Whether the budget certainly has a retry left at `t`: fewer retries in the whole
    /// window than the allowance over its last nine tenths.
    fn has_room(&mut self, t: u64) -> bool {
        self.prune(t);
        let narrow = t.saturating_sub(self.window / 10 * 9);
        let requests = Self::since(&self.requests, narrow);
        let allowed = (self.ratio * requests as f64).max(self.floor);
        ((self.retries.len() + self.maybe.len()) as f64) + 1.0 < allowed
    }
}

/// The route's retry rule, restated from the README: a try that was never sent (refused)
/// goes to another target once each, whatever the method; a sent one again only if the
/// method is idempotent, the outcome is a status in `retry_on`, a reset or a timeout, and
/// fewer than `retries` retries were made.
fn rule_allows(
    route: &aegis_policy::config::RouteConfig,
    method: &aegis_policy::http::Method,
    outcome: UpstreamOutcome,
    sent: bool,
    tries: usize,
) -> bool {
    use aegis_policy::http::Method as M;
    if !sent {
        return matches!(
            outcome,
            UpstreamOutcome::ConnectError | UpstreamOutcome::Timeout
        ) && tries < route.targets.len();
    }
    let idempotent = [M::GET, M::HEAD, M::OPTIONS, M::TRACE, M::PUT, M::DELETE].contains(method);
    let retryable = match outcome {
        UpstreamOutcome::Status(s) => route.retry.on.contains(s),
        UpstreamOutcome::ConnectError | UpstreamOutcome::Timeout => true,
        UpstreamOutcome::Cancelled => false,
    };
    idempotent && retryable && tries <= route.retry.retries as usize
}

/// Retries, health checks and tunnels: what the driver models beyond one try per request.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Send failed tries again as the gateway does (scenarios opt in; see `Scenario`).
    pub retries: bool,
    /// Planted: the shell ignores health probe results.
    pub ignore_probes: bool,
    budgets: Vec<BudgetWatch>,
    pub report: crate::report::TrafficReport,
    /// A retry the runner must dispatch.
    pub pending: Option<RetryTry>,
    /// Weighted routes: forwards per target made while every target could take them.
    pub weighted: Vec<Option<Vec<u64>>>,
    /// Compare the balancers' in-flight counts with the tries out (traffic scenarios).
    pub check_in_flight: bool,
    /// Tries whose outcome was lost, per route and target (never given back).
    lost: Vec<Vec<u32>>,
    /// Open tunnels, per route and target: counted in flight until they close.
    tunnels_open: Vec<Vec<u32>>,
    /// Weighted routes: picks made among fewer than all targets (first tries without every
    /// target admissible, and retries).
    partial: Vec<u64>,
    /// `balance = "hash"` routes: each key's target, as chosen while every target could take
    /// the request (its home).
    homes: Vec<Option<BTreeMap<String, usize>>>,
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
    oracle: Option<Oracle>,
    /// Keys fetched from JWKS URLs, by provider (`[idp]` scenarios set them as time passes).
    pub keys: Vec<Option<std::sync::Arc<aegis_policy::KeySet>>>,
    pub traffic: Traffic,
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
        let traffic = Traffic {
            partial: vec![0; cfg.routes.len()],
            homes: cfg
                .routes
                .iter()
                .map(|r| r.hash_on.is_some().then(BTreeMap::new))
                .collect(),
            tunnels_open: cfg
                .routes
                .iter()
                .map(|r| vec![0; r.targets.len()])
                .collect(),
            lost: cfg
                .routes
                .iter()
                .map(|r| vec![0; r.targets.len()])
                .collect(),
            budgets: cfg
                .routes
                .iter()
                .map(|_| BudgetWatch::new(&cfg.retry_budget))
                .collect(),
            weighted: cfg
                .routes
                .iter()
                .map(|r| {
                    // Weights steer round robin only (power of two choices weighs load).
                    let w = r.targets.first().map_or(1, |t| t.weight);
                    (r.balance == aegis_policy::config::Balance::RoundRobin
                        && r.targets.iter().any(|t| t.weight != w))
                    .then(|| vec![0; r.targets.len()])
                })
                .collect(),
            ..Traffic::default()
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
            oracle: None,
            keys: Vec::new(),
            traffic,
        }
    }

    /// Checks every step against the reference model too (scenario runs and fuzz). The store
    /// faults are the world's: the model needs them to know when the store fails.
    pub fn enable_oracle(&mut self, store_faults: &[StoreFault]) {
        self.oracle = Some(Oracle::new(self.policy.config(), store_faults));
    }

    fn disagree(&mut self, now: Nanos, detail: String) {
        self.violations
            .push(violation(now, "oracle_agrees", detail));
    }

    /// Compares the oracle's answer for a request with the policy's.
    fn judge(
        &mut self,
        request: u64,
        view: &RequestView<'_>,
        now: Now,
        want: &Answer,
        got: &Answer,
    ) {
        self.counts.checks += 1;
        if want != got {
            let detail = format!(
                "request {request} at {}ms (wall {}): {} {}{} from {}: the reference model says {want}; the policy did {got}",
                now.mono.as_millis(),
                now.wall.0,
                view.method,
                view.path_and_query,
                view.host
                    .map(|h| format!(" (host {h})"))
                    .unwrap_or_default(),
                view.peer,
            );
            self.disagree(now.mono, detail);
        }
    }

    /// Every breaker of `route` must be in the state, with the failure count, the model has.
    fn compare_breakers(&mut self, route: usize, now: Nanos) {
        let Some(o) = self.oracle.as_mut() else {
            return;
        };
        o.settle(route, now.0);
        let mut problems = Vec::new();
        for t in 0..self.balancers[route].len() {
            let mut b = self.balancers[route].breaker(t).clone();
            b.advance(now, &mut Vec::new());
            let got = (b.state_at(now).as_str(), u64::from(b.failures()));
            let want = o.circuit(route, t);
            if got != want {
                problems.push(format!(
                    "breaker of {} on route {} at {}ms: the reference model says {} with {} failures; the policy's is {} with {}",
                    self.balancers[route].url(t),
                    self.policy.route(RouteId(route)).name,
                    now.as_millis(),
                    want.0,
                    want.1,
                    got.0,
                    got.1
                ));
            }
        }
        self.counts.checks += 1;
        for p in problems {
            self.disagree(now, p);
        }
    }

    /// Models retries: every failed try goes through the gateway's retry loop, and the
    /// reference model follows every route's choice of target (a retry's is the policy's).
    pub fn enable_retries(&mut self) {
        self.traffic.retries = true;
        if let Some(o) = self.oracle.as_mut() {
            o.follow_all();
        }
    }

    /// Planted: the shell builds its balancers without the config's `[retry_budget]` (each
    /// keeps the balancer's built-in default).
    pub fn plant_default_budget(&mut self) {
        let cfg = self.policy.config();
        self.balancers = cfg
            .routes
            .iter()
            .map(|r| Balancer::new(r, &cfg.breaker))
            .collect();
    }

    /// Health checks: the targets of `route` due for a probe at `now` (each is reported
    /// once with [`Driver::probe_result`]), with the probe's path and timeout.
    pub fn health_due(&mut self, route: usize, now: Nanos) -> (Vec<usize>, String, Duration) {
        match self.balancers[route].health() {
            Some(h) => (h.due(now), h.path().to_owned(), h.timeout()),
            None => (Vec::new(), String::new(), Duration::ZERO),
        }
    }

    /// When `route`'s next probe falls due.
    pub fn health_next(&mut self, route: usize) -> Option<u64> {
        self.balancers[route]
            .health()
            .and_then(|h| h.next_due())
            .map(|n| n.0)
    }

    /// The route and target of the try in `slot` (before its outcome is reported).
    pub fn flight_target(&self, slot: u32) -> Option<(usize, usize)> {
        let f = self.flights.get(slot as usize)?.as_ref()?;
        Some((f.route, f.attempt.target))
    }

    /// An upgrade's `101` went out: its tunnel counts in its target's in-flight requests
    /// until [`Driver::tunnel_closed`], as in the gateway.
    pub fn tunnel_opened(&mut self, route: usize, target: usize) -> aegis_policy::TunnelSlot {
        self.traffic.tunnels_open[route][target] += 1;
        self.balancers[route].on_tunnel_opened(target)
    }

    pub fn tunnel_closed(&mut self, route: usize, slot: aegis_policy::TunnelSlot) {
        let t = &mut self.traffic.tunnels_open[route][slot.target()];
        *t = t.saturating_sub(1);
        self.balancers[route].on_tunnel_closed(slot);
    }

    /// Invariant `hash_keeps_keys_on_their_target` (`balance = "hash"`): a key's home is the
    /// target its requests went to while every target could take them; it never changes,
    /// and a request goes home whenever its home could take it (a target that leaves moves
    /// only its own keys). The key is read from the request here, not from the policy.
    fn check_home(
        &mut self,
        route: usize,
        view: &RequestView<'_>,
        fwd: &Forward,
        all_admissible: bool,
        admissible: &[usize],
        now: Nanos,
    ) {
        let Some(Some(homes)) = self.traffic.homes.get_mut(route) else {
            return;
        };
        let ip = || format!("ip {}", self.policy.client_ip(view.peer, view.headers));
        let key = match &self.policy.config().routes[route].hash_on {
            Some(LimitKeyKind::Header(name)) => view
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= 256)
                .map_or_else(ip, |v| format!("header {v}")),
            Some(LimitKeyKind::User) => format!("user {:?}", fwd.user()),
            _ => ip(),
        };
        self.counts.checks += 1;
        let chosen = fwd.target();
        let detail = match homes.get(&key) {
            Some(&home) if home != chosen && (all_admissible || admissible.contains(&home)) => {
                format!(
                    "key {key} went to target #{chosen} on route #{route}; its home #{home} could take it"
                )
            }
            None if all_admissible => {
                homes.insert(key, chosen);
                return;
            }
            _ => return,
        };
        self.violations
            .push(violation(now, "hash_keeps_keys_on_their_target", detail));
    }

    /// Invariant `in_flight_accounts_for_tries`: the balancer's requests in flight per target
    /// (what power of two choices weighs) are the tries the driver has out, plus the ones
    /// whose outcome was lost, plus the open tunnels (once its 101 is in, an upgrade is no
    /// longer a try but holds its place until the tunnel closes).
    pub fn check_in_flight(&mut self, now: Nanos) {
        if !self.traffic.check_in_flight {
            return;
        }
        self.counts.checks += 1;
        let mut out: Vec<Vec<u32>> = self.balancers.iter().map(|b| vec![0; b.len()]).collect();
        for f in self.flights.iter().flatten() {
            out[f.route][f.attempt.target] += 1;
        }
        for (r, b) in self.balancers.iter().enumerate() {
            let lines = b.snapshot(self.policy.route(RouteId(r)), now);
            for (t, line) in lines.iter().enumerate() {
                let want = out[r][t] + self.traffic.lost[r][t] + self.traffic.tunnels_open[r][t];
                if line.in_flight != want {
                    let detail = format!(
                        "{} on route {} counts {} in flight; {} tries are out",
                        line.target_url, line.route, line.in_flight, want
                    );
                    self.violations
                        .push(violation(now, "in_flight_accounts_for_tries", detail));
                    return;
                }
            }
        }
    }

    /// Invariant `weights_honoured`: on a route with differing weights, the first tries
    /// made while every target could take them are shared in proportion to the weights,
    /// within the total weight plus 1 % of the requests, plus one per pick made among fewer
    /// targets (smooth weighted round robin: a target's count is its weight's share less
    /// its change of credit over the total weight; a pick among fewer targets moves a
    /// credit by at most the total weight, so a share by at most one).
    pub fn check_weights(&mut self, now: Nanos) {
        for (r, counts) in self.traffic.weighted.iter().enumerate() {
            let Some(counts) = counts else {
                continue;
            };
            let route = &self.policy.config().routes[r];
            let weights: Vec<u64> = route.targets.iter().map(|t| u64::from(t.weight)).collect();
            let total_w: u64 = weights.iter().sum();
            let n: u64 = counts.iter().sum();
            let tolerance = total_w + n / 100 + self.traffic.partial[r];
            self.counts.checks += 1;
            for (t, got) in counts.iter().enumerate() {
                let want = n * weights[t] / total_w.max(1);
                if got.abs_diff(want) > tolerance {
                    let detail = format!(
                        "{} of route {} got {got} of {n} requests; weight {} of {total_w} gives {want} ± {tolerance}",
                        route.targets[t].url, route.name, weights[t]
                    );
                    self.violations
                        .push(violation(now, "weights_honoured", detail));
                }
            }
        }
    }

    /// Whether the policy has `target` of `route` in rotation by its health checks.
    pub fn is_healthy(&mut self, route: usize, target: usize) -> bool {
        self.balancers[route]
            .health()
            .is_none_or(|h| h.is_healthy(target))
    }

    /// A probe's result, as the gateway's prober reports it; the model's standing must agree.
    pub fn probe_result(&mut self, route: usize, target: usize, passed: bool, now: Nanos) {
        self.traffic.report.health_probes += 1;
        if self.traffic.ignore_probes {
            return;
        }
        let Some(h) = self.balancers[route].health() else {
            return;
        };
        h.on_probe(target, passed, now);
        let got = h.is_healthy(target);
        for change in self.balancers[route].drain_health_transitions() {
            let routes = &self.policy.config().routes;
            self.traffic
                .report
                .health_transitions
                .push(crate::report::HealthReport {
                    t_ms: change.at.as_millis(),
                    route: routes[route].name.clone(),
                    target: routes[route].targets[change.target].url.clone(),
                    healthy: change.healthy,
                });
        }
        self.counts.checks += 1;
        if let Some(o) = self.oracle.as_mut() {
            let want = o.probe(route, target, passed);
            if want != got {
                let url = self.balancers[route].url(target).to_owned();
                self.disagree(
                    now,
                    format!(
                        "after a {} probe of {url}, the reference model says {}; the policy's health checks say {}",
                        if passed { "passed" } else { "failed" },
                        if want { "healthy" } else { "unhealthy" },
                        if got { "healthy" } else { "unhealthy" },
                    ),
                );
            }
        }
    }

    /// `[idp]`: the IdP's document with `kids` reached the gateway at `mono` (the model
    /// learns the keys from the world, not from the policy's cache).
    pub fn jwks_fetched(
        &mut self,
        kids: Vec<String>,
        max_age: Option<std::time::Duration>,
        mono: u64,
    ) {
        if let Some(o) = self.oracle.as_mut() {
            o.jwks_fetched(kids, max_age, mono);
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
        let mut expected = self
            .oracle
            .as_mut()
            .and_then(|o| o.request(view, now.mono.0, now.wall.0));
        let (handled, got) = self.pipeline(request, view, now, expected.as_mut());
        // No expectation: the oracle cannot judge this request's token (not HMAC-signed).
        if let (Some((want, _)), Some(got)) = (&expected, &got) {
            self.judge(request, view, now, want, got);
        }
        let route = match &handled {
            Handled::Respond { route, .. } => *route,
            Handled::Forward { route, .. } => Some(*route),
        };
        if let Some(r) = route {
            self.compare_breakers(r, now.mono);
        }
        handled
    }

    fn pipeline(
        &mut self,
        request: u64,
        view: &RequestView<'_>,
        now: Now,
        expected: Option<&mut (Answer, Option<oracle::Ticket>)>,
    ) -> (Handled, Option<Answer>) {
        let ticket = match self.policy.on_request_with(view, &self.keys, now) {
            Step::Respond(reply) => return self.reply(request, &reply, now),
            Step::Admit(t) => t,
            Step::Count(pending) => {
                self.store.now = now.mono.0;
                let result = self.store.apply(pending.request());
                let mut denied_key = None;
                match &result {
                    Ok(r) if r.admitted => {
                        self.check_fixed_window(pending.route().0, pending.request(), now);
                    }
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
        // The budget counts every request that reached the balancer.
        if self.traffic.retries {
            let b = &mut self.traffic.budgets[route];
            b.requests.push_back(now.mono.0);
            b.prune(now.mono.0);
        }
        let fwd = match result {
            Ok(f) => f,
            Err(reply) => return self.reply(request, &reply, now),
        };
        // A followed route: the policy's choice must be one the model allows.
        let mut ticket_o = None;
        let mut all_admissible = false;
        let mut admissible: Vec<usize> = Vec::new();
        if let Some((want, Some(t))) = expected {
            if t.follows()
                && let Some(o) = self.oracle.as_mut()
            {
                all_admissible = o.all_admissible(route);
                admissible = o.admissible_now(route).unwrap_or_default().to_vec();
                if let Err((inv, detail)) = o.bind(t, want, fwd.target(), now.mono.0) {
                    self.violations.push(violation(now.mono, inv, detail));
                }
            }
            ticket_o = Some(*t);
        }
        if self.oracle.is_some() {
            self.check_home(route, view, &fwd, all_admissible, &admissible, now.mono);
        }
        if let Some(Some(w)) = self.traffic.weighted.get_mut(route) {
            if all_admissible {
                w[fwd.target()] += 1;
            } else {
                self.traffic.partial[route] += 1;
            }
        }
        let described = self.oracle.is_some().then(|| {
            let mut h = HeaderMap::new();
            fwd.apply_response_headers(&mut h);
            let num = |name: &HeaderName| {
                h.get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
            };
            let rate = if h.is_empty() {
                Rate::None
            } else if h.contains_key(AEGIS_RATELIMIT) {
                Rate::Unchecked
            } else {
                match (
                    num(&RATELIMIT_LIMIT),
                    num(&RATELIMIT_REMAINING),
                    num(&RATELIMIT_RESET),
                ) {
                    (Some(limit), Some(remaining), Some(reset)) => Rate::Headers {
                        limit,
                        remaining,
                        reset,
                        policy: h
                            .get(RATELIMIT_POLICY)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned(),
                    },
                    _ => Rate::None,
                }
            };
            Answer::Forward {
                max_body: self.policy.max_body(RouteId(route)),
                route,
                target: fwd.target(),
                probe: fwd.attempt.permit.is_probe(),
                upstream: fwd.path_and_query(view.path_and_query).into_owned(),
                // The identity the upstream receives: the request's headers as the gateway
                // edits them (a client-sent x-user-id must never pass).
                // (Only x-user-id is edited, so only it is copied.)
                // It must also be the identity the forward names (for the access log).
                user: if fwd.user().is_none() && !view.headers.contains_key(X_USER_ID) {
                    // Nothing to forward and nothing to strip.
                    None
                } else {
                    let mut sent = HeaderMap::new();
                    for v in view.headers.get_all(X_USER_ID) {
                        sent.append(X_USER_ID, v.clone());
                    }
                    fwd.apply_request_headers(&mut sent);
                    let sent = sent.get(X_USER_ID);
                    if sent == fwd.user() {
                        sent.and_then(|u| u.to_str().ok()).map(str::to_owned)
                    } else {
                        Some(format!("{sent:?} sent upstream but {:?} named", fwd.user()))
                    }
                },
                rate,
            }
        });
        let retry = self.traffic.retries.then(|| {
            Box::new(RetryCtx {
                method: view.method.clone(),
                original: view.path_and_query.to_owned(),
                first_at: now.mono.0,
                tried: Vec::new(),
                fwd: fwd.clone(),
            })
        });
        let (slot, target, timeout, upstream_path) =
            self.launch(request, fwd, view.path_and_query, ticket_o, retry, now);
        (
            Handled::Forward {
                request,
                slot,
                route,
                target,
                timeout,
                upstream_path,
            },
            described,
        )
    }

    /// A try goes out: the shadow model's checks, and a slot for its outcome.
    fn launch(
        &mut self,
        request: u64,
        fwd: aegis_policy::Forward,
        original: &str,
        ticket_o: Option<oracle::Ticket>,
        retry: Option<Box<RetryCtx>>,
        now: Now,
    ) -> (u32, usize, Duration, Option<String>) {
        let route = fwd.route.0;
        let target = fwd.target();
        self.counts.checks += 1;
        let url = &self.policy.config().routes[route].targets[target].url;
        if self.oracle.is_some() && self.balancers[route].url(target) != url.as_str() {
            let detail = format!(
                "request {request}: the balancer names target {target} {:?}, the config {url:?}",
                self.balancers[route].url(target)
            );
            self.disagree(now.mono, detail);
        }
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
        let upstream_path = match fwd.path_and_query(original) {
            p if *p == *original => None,
            p => Some(p.into_owned()),
        };
        let flight = Flight {
            request,
            route,
            attempt: fwd.attempt,
            probe_era,
            oracle: ticket_o,
            retry,
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
        (slot, target, timeout, upstream_path)
    }

    /// The upstream outcome of the request in `slot`, known at `now`. Returns the request id
    /// and the status its client gets.
    pub fn complete(
        &mut self,
        slot: u32,
        outcome: UpstreamOutcome,
        now: Now,
    ) -> Option<(u64, u16)> {
        // A refused connection sent nothing; anything else was (at least partly) sent.
        let sent = outcome != UpstreamOutcome::ConnectError;
        self.complete_try(slot, outcome, sent, now)
    }

    /// [`Driver::complete`] saying whether any of the request was written (a reset after it
    /// was sent is a `ConnectError` that was). With retries modelled, a failed try may be
    /// sent again: then nothing is answered (`None`) and [`Traffic::pending`] holds the
    /// try for the runner to dispatch.
    pub fn complete_try(
        &mut self,
        slot: u32,
        outcome: UpstreamOutcome,
        sent: bool,
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
        // The model hears of the outcome first, so that it expects the transitions the policy
        // is about to report.
        let want = match (self.oracle.as_mut(), flight.oracle) {
            (Some(o), Some(ticket)) => Some(o.outcome(ticket, outcome, now.mono.0)),
            _ => None,
        };
        self.policy
            .on_upstream_result(&mut self.balancers[route], flight.attempt, outcome, now);
        self.drain(route);
        self.check_consistent(route, target, now.mono);
        if let Some(ctx) = flight.retry
            && let Some(again) =
                self.try_again(flight.request, route, target, outcome, sent, ctx, now)
        {
            self.compare_breakers(route, now.mono);
            self.traffic.pending = Some(again);
            return None;
        }
        // 502/504 are the policy's answer, as in the gateway.
        let failed = self
            .policy
            .upstream_failure(RouteId(route), target, outcome, "");
        let (status, label) = match (failed, outcome) {
            (Some(r), _) => (r.status.as_u16(), reason_index(&r.reason)),
            (None, UpstreamOutcome::Status(s)) => (s, 0),
            // The client is gone; nobody reads this status.
            (None, _) => (499, CANCELLED),
        };
        if let Some(want) = want {
            self.counts.checks += 1;
            if want != status {
                self.disagree(
                    now.mono,
                    format!(
                        "request {} at {}ms: upstream outcome {outcome:?}: the reference model says the client gets {want}; the policy's answer is {status}",
                        flight.request,
                        now.mono.as_millis()
                    ),
                );
            }
        }
        self.compare_breakers(route, now.mono);
        self.answer(flight.request, status, label, now.mono);
        Some((flight.request, status))
    }

    /// After a failed try, what the gateway does (aegis-tokio's gateway loop): it asks the
    /// policy for another try on a reset, a timeout, a refusal, or a status in `retry_on`
    /// (when the route retries at all), and sends it if the route's deadline has not passed.
    /// Checks the answer against the rule, the budget and the model's targets.
    #[allow(clippy::too_many_arguments)]
    fn try_again(
        &mut self,
        request: u64,
        route: usize,
        target: usize,
        outcome: UpstreamOutcome,
        sent: bool,
        mut ctx: Box<RetryCtx>,
        now: Now,
    ) -> Option<RetryTry> {
        let cfg = &self.policy.config().routes[route];
        let asks = match outcome {
            UpstreamOutcome::Status(s) => cfg.retry.retries > 0 && cfg.retry.on.contains(s),
            UpstreamOutcome::Cancelled => false,
            UpstreamOutcome::ConnectError | UpstreamOutcome::Timeout => true,
        };
        if !asks {
            return None;
        }
        ctx.tried.push(target);
        let allowed = rule_allows(cfg, &ctx.method, outcome, sent, ctx.tried.len());
        let unsafe_method = !rule_allows(cfg, &ctx.method, UpstreamOutcome::Timeout, true, 0);
        let name = cfg.name.clone();
        let deadline = ctx
            .first_at
            .saturating_add(u64::try_from(ctx.fwd.deadline.as_nanos()).unwrap_or(u64::MAX));
        let mono = now.mono.0;
        let room = self.traffic.budgets[route].has_room(mono);
        let next = self.policy.retry(
            &ctx.fwd,
            aegis_policy::FailedTry {
                outcome,
                sent,
                method: &ctx.method,
                idempotency_key: false,
                body_replayable: true,
            },
            &mut self.balancers[route],
            now,
        );
        self.drain(route);
        self.counts.checks += 1;
        let Some(next) = next else {
            let left = match self.oracle.as_mut() {
                Some(o) => !o.retry_targets(route, &ctx.tried, mono).is_empty(),
                None => false,
            };
            if allowed && !left {
                self.traffic.budgets[route].maybe.push_back(mono);
            }
            if allowed && room && left && mono < deadline {
                self.violations.push(violation(
                    now.mono,
                    "retry_when_allowed",
                    format!(
                        "request {request}: {} try {} failed ({outcome:?}); the rule, the budget ({}) and an untried target allow a retry, the policy made none",
                        ctx.method,
                        ctx.tried.len(),
                        self.traffic.budgets[route].describe(mono),
                    ),
                ));
            }
            return None;
        };
        if !allowed {
            let inv = if sent && unsafe_method {
                "no_replay_of_unsafe_method"
            } else {
                "retry_rule"
            };
            self.violations.push(violation(
                now.mono,
                inv,
                format!(
                    "request {request}: {} retried after try {} ended {outcome:?} (sent: {sent})",
                    ctx.method,
                    ctx.tried.len()
                ),
            ));
        }
        if let Some(why) = self.traffic.budgets[route].granted(mono) {
            self.violations.push(violation(
                now.mono,
                "retry_budget_respected",
                format!("request {request} on route {name}: {why}"),
            ));
        }
        let ticket = match self.oracle.as_mut() {
            Some(o) => match o.retry(route, &ctx.tried, next.target(), mono) {
                Ok(t) => Some(t),
                Err((inv, detail)) => {
                    self.violations.push(violation(now.mono, inv, detail));
                    None
                }
            },
            None => None,
        };
        if mono >= deadline {
            // Past the route's deadline the gateway answers with the failure: the try it
            // was given is given back unsent (the aegis-tokio gateway drops it unreported;
            // see the report of this branch).
            if let (Some(o), Some(t)) = (self.oracle.as_mut(), ticket) {
                o.outcome(t, UpstreamOutcome::Cancelled, mono);
            }
            self.policy.on_upstream_result(
                &mut self.balancers[route],
                next.attempt,
                UpstreamOutcome::Cancelled,
                now,
            );
            self.drain(route);
            return None;
        }
        self.traffic.report.retries += 1;
        self.traffic.partial[route] += 1;
        let original = ctx.original.clone();
        ctx.fwd = next.clone();
        let left = Duration::from_nanos(deadline - mono);
        let (slot, target, timeout, upstream_path) =
            self.launch(request, next, &original, ticket, Some(ctx), now);
        Some(RetryTry {
            request,
            slot,
            route,
            target,
            timeout: timeout.min(left),
            upstream_path: upstream_path.unwrap_or(original),
        })
    }

    /// The outcome of the request in `slot` is lost: neither the policy nor the model hears of
    /// it (only the breaker's `probe_timeout` frees a lost probe). The shell's own deadline
    /// answers the client 504.
    pub fn lose(&mut self, slot: u32, now: Now) -> Option<(u64, u16)> {
        self.counts.checks += 1;
        let Some(flight) = self.flights.get_mut(slot as usize).and_then(Option::take) else {
            self.violations.push(violation(
                now.mono,
                "outcome_reported_once",
                format!("slot {slot} lost an outcome, but nothing is in flight there"),
            ));
            return None;
        };
        self.free.push(slot);
        self.traffic.lost[flight.route][flight.attempt.target] += 1;
        self.answer(flight.request, 504, LOST, now.mono);
        Some((flight.request, 504))
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
            if let Some(o) = self.oracle.as_mut() {
                o.settle(route, now.0);
            }
            self.drain(route);
            self.compare_breakers(route, now);
            self.compare_stats(route, now);
        }
    }

    /// The route's `/gateway/stats` lines (what an operator sees) against the model's, at a
    /// breaker tick (every breaker of the route has just been brought up to `now`).
    fn compare_stats(&mut self, route: usize, now: Nanos) {
        let Some(o) = self.oracle.as_ref() else {
            return;
        };
        let at = Now {
            mono: now,
            wall: aegis_policy::UnixMillis(0),
        };
        let all = self.policy.stats(&self.balancers, at);
        let first: usize = self.balancers[..route].iter().map(Balancer::len).sum();
        let lines = all
            .get(first..first + self.balancers[route].len())
            .unwrap_or_default();
        let config = self.policy.route(RouteId(route));
        let mut problems = Vec::new();
        if lines.len() != config.targets.len() {
            problems.push(format!(
                "{} stats lines for the {} targets of route {}",
                lines.len(),
                config.targets.len(),
                config.name
            ));
        }
        for (t, line) in lines.iter().enumerate() {
            let named = (
                line.route.as_str(),
                line.path.as_str(),
                line.target_url.as_str(),
            );
            let target = config.targets.get(t).map_or("", |x| x.url.as_str());
            if named != (config.name.as_str(), config.path.as_str(), target) {
                problems.push(format!(
                    "stats line {named:?} names another route or target"
                ));
            }
            let got = oracle::StatsLine {
                failures: u64::from(line.failures),
                state: line.state.as_str(),
                requests: line.requests,
                probe_in_flight: line.probe_in_flight,
                next_probe_in_ms: line.next_probe_in_ms,
                since_transition_ms: line.since_transition_ms,
            };
            let want = o.stats(route, t, now.0);
            if got != want {
                problems.push(format!(
                    "stats of {} at {}ms: the reference model says {want:?}; the policy's {got:?}",
                    line.target_url,
                    now.as_millis()
                ));
            }
        }
        self.counts.checks += 1;
        for p in problems {
            self.disagree(now, p);
        }
    }

    /// Ends the run at `end`: time-driven transitions up to then, and the end-of-run checks
    /// (every request answered once, every forward's outcome reported).
    pub fn finish(&mut self, end: Nanos) {
        for r in 0..self.balancers.len() {
            self.tick(r, end);
        }
        if let Some(o) = self.oracle.as_mut() {
            let mut missing = Vec::new();
            for r in 0..self.balancers.len() {
                for t in 0..self.balancers[r].len() {
                    if let Some(c) = o.next_change(r, t) {
                        missing.push(format!(
                            "the reference model expected {} {}→{} at {}ms, which the policy never reported",
                            self.balancers[r].url(t),
                            c.from,
                            c.to,
                            c.at / 1_000_000
                        ));
                    }
                }
            }
            for m in missing {
                self.disagree(end, m);
            }
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

    fn reply(&mut self, request: u64, reply: &Reply, now: Now) -> (Handled, Option<Answer>) {
        let status = reply.status.as_u16();
        let retry_after = reply
            .headers
            .iter()
            .find(|(k, _)| k == RETRY_AFTER)
            .and_then(|(_, v)| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let described = self.oracle.is_some().then(|| Answer::Respond {
            status,
            reason: reply.reason.label(),
            auth: match &reply.reason {
                Reason::Unauthorized(f) => Some(f.reason()),
                _ => None,
            },
            route: reply.route.map(|r| r.0),
            retry_after,
        });
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
        if self.oracle.is_some() {
            self.check_body(request, reply, retry_after, now);
        }
        if status == 503 || status == 429 {
            self.counts.checks += 1;
            if !matches!(retry_after, Some(s) if s >= 1) {
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
        (
            Handled::Respond {
                request,
                status,
                route: reply.route.map(|r| r.0),
            },
            described,
        )
    }

    /// What the client reads of a refusal agrees with its status: a 401 names its reason in
    /// the body and describes it in the `WWW-Authenticate` challenge; a 429 or a 503 for want
    /// of a target repeats `Retry-After` as `retryAfter`.
    fn check_body(&mut self, request: u64, reply: &Reply, retry_after: Option<u64>, now: Now) {
        let status = reply.status.as_u16();
        if !matches!(status, 401 | 429 | 503) {
            return;
        }
        self.counts.checks += 1;
        let mut problems = Vec::new();
        let refusal = matches!(reply.reason, Reason::RateLimited | Reason::NoHealthyTarget);
        if refusal {
            let said = retry_after.map(|s| format!("\"retryAfter\":{s}"));
            if !said.is_some_and(|s| reply.body.contains(&s)) {
                problems.push(format!(
                    "its body {} says another retryAfter than Retry-After {retry_after:?}",
                    reply.body
                ));
            }
        }
        if let Reason::Unauthorized(f @ aegis_policy::AuthFailure::KeysUnavailable) = &reply.reason
        {
            // Not the client's fault: a 503 that names the reason and when to come back.
            let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
            if status != 503
                || body["error"] != "auth_unavailable"
                || body["reason"] != f.reason()
                || body["retryAfter"].as_u64() != retry_after
            {
                problems.push(format!(
                    "its body {} does not say keys_unavailable with Retry-After {retry_after:?}",
                    reply.body
                ));
            }
        } else if let Reason::Unauthorized(f) = &reply.reason {
            let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
            let message = body["message"].as_str().unwrap_or_default();
            if body["error"] != "unauthorized" || body["reason"] != f.reason() {
                problems.push(format!(
                    "its body {} does not name the reason {}",
                    reply.body,
                    f.reason()
                ));
            }
            let challenge = reply
                .headers
                .iter()
                .find(|(k, _)| k == aegis_policy::http::header::WWW_AUTHENTICATE)
                .and_then(|(_, v)| v.to_str().ok())
                .unwrap_or_default();
            let described = format!("error_description=\"{message}\"");
            if message.is_empty()
                || !challenge.starts_with("Bearer realm=\"aegis\"")
                || !challenge.contains(&described)
            {
                problems.push(format!(
                    "its challenge {challenge:?} does not carry the body's message {message:?}"
                ));
            }
        }
        for p in problems {
            self.disagree(
                now.mono,
                format!("request {request} answered {status}: {p}"),
            );
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

    /// At most `max` admissions per key per window, with `max` and `window` read from the
    /// route's config (not from the policy's counter request, which a bug could get wrong in
    /// agreement with itself).
    fn check_fixed_window(&mut self, route: usize, req: &CounterRequest, now: Now) {
        let Some(limit) = self.policy.config().routes[route].rate_limit.as_ref() else {
            return;
        };
        if limit.algorithm != LimitAlgorithm::FixedWindow {
            return;
        }
        self.counts.checks += 1;
        let window_ms = (limit.window.as_millis() as u64).max(1);
        let window = now.wall.0 / window_ms * window_ms;
        let max = limit.max;
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
            if let Some(o) = self.oracle.as_mut() {
                let want = o.next_change(route, tt.target);
                let got = (t.at.0, t.from.as_str(), t.to.as_str());
                let same = want.is_some_and(|w| (w.at, w.from, w.to) == got);
                if !same {
                    let want = match want {
                        Some(w) => format!("{}→{} at {}ms", w.from, w.to, w.at / 1_000_000),
                        None => "no change".to_owned(),
                    };
                    problems.push((
                        "oracle_agrees",
                        format!(
                            "the reference model expected {want}; the policy reported {}→{} at {}ms",
                            got.1,
                            got.2,
                            t.at.as_millis()
                        ),
                    ));
                }
            }
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
