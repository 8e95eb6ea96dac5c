//! The event loop of a scenario run: virtual time, clients that send requests, simulated
//! upstreams that answer them (after a latency, or not at all), breaker ticks; everything
//! ordered by (time, sequence number) so that a seed fixes the whole run.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::IpAddr;

use aegis_policy::http::{HeaderMap, Method};
use aegis_policy::{BreakerState, Nanos, Now, Policy, RequestView, UnixMillis, UpstreamOutcome};

use crate::driver::{Driver, FaultyStore, Handled, OUTCOMES};
use crate::idp::{self, SimIdp};
use crate::report::{LimitedKey, Report, TargetReport, TraceLine};
use crate::rng::Rng;
use crate::scenario::{
    Down, FaultKind, Latency, Plant, Scenario, ScenarioError, TokenKind, UpstreamSpec,
};
use crate::tokens::Minter;

/// How to run a scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub seed: u64,
    /// Record one [`TraceLine`] per request.
    pub trace: bool,
    /// How to name the scenario in the reproduce line (its path).
    pub scenario_ref: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Load(u32),
    /// A scripted entry's next request (its count so far is kept beside the queue, which
    /// keeps events 24 bytes).
    Script(u32),
    Done(u32),
    /// The outcome of the request in this slot is lost (never reported to the policy).
    Lost(u32),
    Tick(u32),
    /// `[idp]`: the JWKS cache's next scheduled fetch may be due.
    IdpWake,
    /// `[idp]`: the fetch in flight completes.
    IdpFetched,
    /// A route's health probes may be due.
    Health(u32),
    /// A health probe's result arrives (index into the probes).
    Probe(u32),
    /// A tunnel ends (index into the tunnels).
    TunnelEnd(u32),
    /// The drain's deadline: open tunnels are closed.
    DrainEnd,
    /// The health-check bound is checked on this route (every `interval`, whatever the
    /// prober does).
    Bound(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Event {
    t: u64,
    seq: u64,
    ev: Ev,
}

impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and we want the earliest first.
        (other.t, other.seq).cmp(&(self.t, self.seq))
    }
}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The event queue, ordered by (time, push sequence). Client arrivals (one pending event per
/// load or scripted entry) and everything else (upstream answers, breaker ticks: one per
/// request in flight) live in two heaps, so the big one sees half the traffic; `pop` takes
/// the earlier of the two tops, which gives exactly the order of a single heap.
#[derive(Debug, Default)]
struct Queue {
    arrivals: BinaryHeap<Event>,
    others: BinaryHeap<Event>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        let e = Event {
            t,
            seq: self.seq,
            ev,
        };
        match ev {
            Ev::Load(_) | Ev::Script(_) => self.arrivals.push(e),
            Ev::Done(_)
            | Ev::Lost(_)
            | Ev::Tick(_)
            | Ev::IdpWake
            | Ev::IdpFetched
            | Ev::Health(_)
            | Ev::Probe(_)
            | Ev::TunnelEnd(_)
            | Ev::DrainEnd
            | Ev::Bound(_) => self.others.push(e),
        }
    }

    fn pop(&mut self) -> Option<Event> {
        // `Event`'s order is reversed: the greater is the earlier.
        match (self.arrivals.peek(), self.others.peek()) {
            (Some(a), Some(o)) if a < o => self.others.pop(),
            (Some(_), _) => self.arrivals.pop(),
            (None, _) => self.others.pop(),
        }
    }
}

/// A simulated instance behind one target URL, with its own random stream.
#[derive(Debug)]
struct Upstream {
    spec: UpstreamSpec,
    rng: Rng,
    probe_rng: Rng,
}

impl Upstream {
    /// Whether a request at `t` meets a reset (written, then the connection closed).
    fn resets_at(&self, t: u64) -> bool {
        self.spec.faults.iter().any(|f| {
            f.from <= t
                && t < f.until
                && match f.kind {
                    FaultKind::Down(Down::Reset) => true,
                    FaultKind::Flap {
                        period,
                        down_for,
                        down: Down::Reset,
                    } => (t - f.from) % period < down_for,
                    _ => false,
                }
        })
    }
}

/// An upstream try in flight: how it ends, whether the request was written, and, for an
/// upgrade, how long its tunnel lives.
#[derive(Debug, Clone, Copy, Default)]
struct SlotOutcome {
    outcome: Option<UpstreamOutcome>,
    sent: bool,
    tunnel: Option<u64>,
}

fn sample(rng: &mut Rng, l: Latency) -> u64 {
    match l {
        Latency::Fixed(x) => x,
        Latency::Uniform { min, max } => rng.range(min, max),
        Latency::Exponential { min, mean, max } => {
            min.saturating_add(rng.exponential(mean)).min(max)
        }
    }
}

impl Upstream {
    /// A health probe `GET path` at `t`: whether it passes (a 2xx within `timeout`), and
    /// when its result is known. Probes draw from their own stream.
    fn probe(&mut self, t: u64, path: &str, timeout: u64) -> (bool, u64) {
        std::mem::swap(&mut self.rng, &mut self.probe_rng);
        let (outcome, delay) = self.answer(t, path, timeout);
        std::mem::swap(&mut self.rng, &mut self.probe_rng);
        let passed = matches!(outcome, Some(UpstreamOutcome::Status(s)) if (200..300).contains(&s));
        (passed, delay.min(timeout))
    }

    /// Whether a probe at `t` would fail for a fault (refused, reset, hang, lost, a non-2xx
    /// status), and since when the faults have held without a break: the start of the latest
    /// fault window (or flap phase) in force, which is no earlier than the real start.
    fn down_since(&self, t: u64) -> Option<u64> {
        let failing = |d: Down| !matches!(d, Down::Status(s) if (200..300).contains(&s));
        self.spec
            .faults
            .iter()
            .filter(|f| f.from <= t && t < f.until)
            .filter_map(|f| match f.kind {
                FaultKind::Down(d) if failing(d) => Some(f.from),
                FaultKind::Flap {
                    period,
                    down_for,
                    down: d,
                } if failing(d) && (t - f.from) % period < down_for => {
                    Some(f.from + (t - f.from) / period * period)
                }
                _ => None,
            })
            .max()
    }

    /// How a request sent at `t` to `path` ends (`None`: its outcome is lost), and when
    /// (delay from `t`).
    fn answer(&mut self, t: u64, path: &str, timeout: u64) -> (Option<UpstreamOutcome>, u64) {
        let down = |d: Down, lat: u64, connect: u64| match d {
            Down::Refused => (Some(UpstreamOutcome::ConnectError), connect),
            // Told apart from a refusal by `reset_at` (the request was written).
            Down::Reset => (Some(UpstreamOutcome::ConnectError), lat.max(connect + 1)),
            Down::Hang => (Some(UpstreamOutcome::Timeout), timeout),
            Down::Lost => (None, timeout),
            Down::Status(s) => (Some(UpstreamOutcome::Status(s)), lat),
        };
        let mut latency = self.spec.latency;
        let mut status = 200;
        for f in &self.spec.faults {
            if t < f.from || t >= f.until {
                continue;
            }
            match f.kind {
                FaultKind::Down(d) => {
                    let lat = sample(&mut self.rng, latency).min(timeout);
                    return down(d, lat, self.spec.connect_latency);
                }
                FaultKind::Flap {
                    period,
                    down_for,
                    down: d,
                } if (t - f.from) % period < down_for => {
                    let lat = sample(&mut self.rng, latency).min(timeout);
                    return down(d, lat, self.spec.connect_latency);
                }
                FaultKind::Flap { .. } => {}
                FaultKind::Errors { ppm, status: s } => {
                    if status == 200 && self.rng.chance_ppm(ppm) {
                        status = s;
                    }
                }
                FaultKind::Slow(l) => latency = l,
            }
        }
        if status == 200 && self.rng.chance_ppm(self.spec.error_ppm) {
            status = self.spec.error_status;
        }
        // The fake upstream's contract (`aegis upstream`): `/fail` answers 500, `?status=N`
        // answers N, `?sleep_ms=N` waits N ms.
        let (p, query) = path.split_once('?').unwrap_or((path, ""));
        if p.ends_with("/fail") {
            status = 500;
        }
        let mut sleep = None;
        for kv in query.split('&') {
            if let Some(v) = kv.strip_prefix("status=")
                && let Ok(s) = v.parse::<u16>()
                && (100..=599).contains(&s)
            {
                status = s;
            } else if let Some(v) = kv.strip_prefix("sleep_ms=")
                && let Ok(ms) = v.parse::<u64>()
            {
                sleep = Some(ms.min(60_000) * 1_000_000);
            }
        }
        let lat = match sleep {
            Some(s) => s,
            None => sample(&mut self.rng, latency),
        };
        if lat >= timeout {
            (Some(UpstreamOutcome::Timeout), timeout)
        } else {
            (Some(UpstreamOutcome::Status(status)), lat)
        }
    }
}

#[derive(Debug)]
struct LoadState {
    rng: Rng,
    k: u64,
    next: u64,
    cursor: u64,
    /// `[user][token kind]`, minted on first use (per-request kinds are minted every time).
    headers: Vec<Vec<Option<HeaderMap>>>,
    /// Its own stream for client cancellations, so they do not shift the other draws.
    cancel: Rng,
}

/// The wall clock at virtual time `t`: the start, plus `t`, plus every clock jump so far.
fn wall_at(s: &Scenario, t: u64) -> UnixMillis {
    let mut ms = i128::from(s.wall_start.0) + i128::from(t / 1_000_000);
    for j in s.clock_jumps.iter().take_while(|j| j.at <= t) {
        ms += i128::from(j.by_ms);
    }
    UnixMillis(u64::try_from(ms.max(0)).unwrap_or(u64::MAX))
}

/// Runs a scenario with the given seed.
pub fn run(s: &Scenario, opts: &RunOptions) -> Result<Report, ScenarioError> {
    let seed = opts.seed;
    let config = &s.config;
    let policy =
        Policy::new(config.clone()).map_err(|e| ScenarioError::new("gateway", e.to_string()))?;
    let end_secs = (s.wall_start.0 + s.duration / 1_000_000) / 1000;
    let minter = config
        .auth
        .as_ref()
        .and_then(|a| Minter::new(a, s.wall_start.as_secs(), end_secs));
    let needs_tokens = s
        .loads
        .iter()
        .any(|l| l.tokens.iter().any(|(k, _)| *k != TokenKind::Missing))
        || s.requests.iter().any(|r| r.token != TokenKind::Missing);
    if config.auth.is_some() && minter.is_none() && needs_tokens && s.idp.is_none() {
        return Err(ScenarioError::new(
            "gateway.auth.algorithms",
            "allows no HS algorithm: the simulator mints HS tokens with the config's secret and \
             cannot sign asymmetric ones; allow HS256 too, or send only missing tokens",
        ));
    }
    let empty = HeaderMap::new();
    let mint = |user: &str, kind: TokenKind, now_secs: u64| -> HeaderMap {
        minter
            .as_ref()
            .map(|m| m.headers(user, kind, now_secs))
            .unwrap_or_default()
    };

    let store = FaultyStore::new(
        config.rate_limit.memory_max_keys,
        s.store_faults.clone(),
        config.rate_limit.command_timeout,
    );
    let mut driver = Driver::new(policy, store);
    // As the gateway seeds each process's balancers (P2C draws, probe jitter) from the
    // system, the simulator seeds them from the run's seed: another seed, other draws.
    for (i, b) in driver.balancers.iter_mut().enumerate() {
        b.reseed(Rng::derive(seed, &format!("balancer {i}")).next_u64());
    }
    driver.enable_oracle(&s.store_faults);
    let mut idp = match &s.idp {
        Some(spec) => Some(SimIdp::new(spec.clone(), &driver.policy)?),
        None => None,
    };
    // [idp]: tokens are signed by the IdP's current key (a minter per signing kid).
    let idp_minters: BTreeMap<String, Minter> = match (&s.idp, &idp) {
        (Some(spec), Some(sim)) => {
            let auth = driver.policy.config().providers()[sim.provider.0].1.clone();
            spec.signing
                .iter()
                .filter_map(|(kid, _)| {
                    Minter::with_key(
                        &auth,
                        kid,
                        &idp::secret(kid),
                        s.wall_start.as_secs(),
                        end_secs,
                    )
                    .map(|m| (kid.clone(), m))
                })
                .collect()
        }
        _ => BTreeMap::new(),
    };
    let mut unknown_kids = 0u64;
    let mut held: Vec<HeldReq> = Vec::new();
    let mut idp_wake = 0u64;
    // Plant::DropKeysOnFailure: the last fetch failed.
    let mut last_fetch_failed = false;

    // Upstreams by URL, and each (route, target)'s index into them.
    let urls: Vec<&String> = s.upstreams.keys().collect();
    let mut upstreams: Vec<Upstream> = s
        .upstreams
        .iter()
        .map(|(url, spec)| Upstream {
            spec: spec.clone(),
            rng: Rng::derive(seed, &format!("upstream {url}")),
            probe_rng: Rng::derive(seed, &format!("probes {url}")),
        })
        .collect();
    let target_up: Vec<Vec<usize>> = config
        .routes
        .iter()
        .map(|r| {
            r.targets
                .iter()
                .map(|t| urls.iter().position(|u| **u == t.url).unwrap_or(0))
                .collect()
        })
        .collect();

    let mut q = Queue::default();
    if idp.is_some() {
        q.push(0, Ev::IdpWake);
    }
    if s.traffic.retries {
        driver.enable_retries();
    }
    match s.plant {
        Some(Plant::RetryPastBudget) => driver.plant_default_budget(),
        Some(Plant::IgnoreHealthProbes) => driver.traffic.ignore_probes = true,
        _ => {}
    }
    // Health checks: each route's prober wakes when its next probe is due.
    let mut health_wake: Vec<Option<u64>> = vec![None; config.routes.len()];
    // Per route: a health-check invariant already reported (each is reported once).
    let mut health_faults: Vec<bool> = vec![false; config.routes.len()];
    for (r, route) in config.routes.iter().enumerate() {
        if route.health_check.is_some() {
            health_wake[r] = Some(0);
            q.push(0, Ev::Health(r as u32));
            q.push(0, Ev::Bound(r as u32));
        }
    }
    let mut probes: Vec<(usize, usize, bool)> = Vec::new();
    // Each tunnel's slot among its target's requests, while it is open.
    let mut tunnels: Vec<Option<(usize, aegis_policy::TunnelSlot)>> = Vec::new();
    let mut open_tunnels = 0u64;
    if let Some(d) = s.traffic.drain_at {
        q.push(d.saturating_add(s.traffic.drain_timeout), Ev::DrainEnd);
    }
    let traffic_report = s.traffic.retries
        || config.routes.iter().any(|r| r.health_check.is_some())
        || s.loads.iter().any(|l| l.tunnel.is_some());
    driver.traffic.check_in_flight = traffic_report;
    let mut loads: Vec<LoadState> = s
        .loads
        .iter()
        .enumerate()
        .map(|(i, l)| LoadState {
            rng: Rng::derive(seed, &format!("load {i}")),
            k: 0,
            next: l.from,
            cursor: 0,
            headers: (0..l.users.len())
                .map(|_| vec![None; TokenKind::ALL.len()])
                .collect(),
            cancel: Rng::derive(seed, &format!("load {i} cancel")),
        })
        .collect();
    for (i, l) in loads.iter().enumerate() {
        q.push(l.next, Ev::Load(i as u32));
    }
    let script_headers: Vec<HeaderMap> = s
        .requests
        .iter()
        .map(|r| mint(&r.user, r.token, s.wall_start.as_secs()))
        .collect();
    for (i, r) in s.requests.iter().enumerate() {
        q.push(r.at, Ev::Script(i as u32));
    }
    let mut script_sent: Vec<u32> = vec![0; s.requests.len()];

    let mut outcomes: Vec<SlotOutcome> = Vec::new();
    let mut trace: Vec<TraceLine> = Vec::new();
    let mut last_t = 0u64;

    while let Some(Event { t, ev, .. }) = q.pop() {
        last_t = t;
        let now = Now {
            mono: Nanos(t),
            wall: wall_at(s, t),
        };
        if let Some(sim) = idp.as_ref() {
            driver.keys = if s.plant == Some(Plant::DropKeysOnFailure) && last_fetch_failed {
                Vec::new()
            } else {
                sim.keys(t)
            };
        }
        match ev {
            Ev::IdpWake | Ev::IdpFetched => {
                let Some(sim) = idp.as_mut() else { continue };
                if ev == Ev::IdpFetched {
                    let kids = sim.complete(t);
                    last_fetch_failed = kids.is_none();
                    if let Some(kids) = kids {
                        driver.jwks_fetched(kids, sim.spec.max_age, t);
                    }
                    driver.keys = if s.plant == Some(Plant::DropKeysOnFailure) && last_fetch_failed
                    {
                        Vec::new()
                    } else {
                        sim.keys(t)
                    };
                    // Requests held for this fetch are checked again.
                    for h in std::mem::take(&mut held) {
                        sim.report.held += 1;
                        let mut req = Req {
                            method: &h.method,
                            host: h.host.as_deref(),
                            path: &h.path,
                            headers: &h.headers,
                            peer: h.peer,
                            cancel: None,
                            tunnel: None,
                        };
                        let status = send(
                            &mut driver,
                            &mut upstreams,
                            &target_up,
                            &mut q,
                            &mut outcomes,
                            opts.trace.then_some(&mut trace),
                            &mut req,
                            now,
                        );
                        check_published_key(&mut driver, sim, h.kind, status, t);
                    }
                } else if t != idp_wake {
                    continue;
                }
                if sim.in_flight_until.is_none()
                    && let Some(done) = sim.poll(t, &mut driver.violations)
                {
                    q.push(done, Ev::IdpFetched);
                }
                if let Some(w) = sim.next_wake()
                    && w > t
                    && w < s.duration
                    && (idp_wake <= t || w < idp_wake)
                {
                    idp_wake = w;
                    q.push(w, Ev::IdpWake);
                }
            }
            Ev::Tick(route) => driver.tick(route as usize, Nanos(t)),
            Ev::Done(slot) | Ev::Lost(slot) => {
                let o = outcomes[slot as usize];
                let tried = driver.flight_target(slot);
                let answered = match o.outcome {
                    Some(outcome) => driver.complete_try(slot, outcome, o.sent, now),
                    None => driver.lose(slot, now),
                };
                if let Some((req, status)) = answered
                    && opts.trace
                    && let Some(line) = trace.get_mut(req as usize)
                {
                    line.status = status;
                }
                // An upgrade answered 101: the tunnel lives on, no longer a try.
                if let (Some(hold), Some((_, 101))) = (o.tunnel, answered) {
                    let end = match s.traffic.drain_at {
                        Some(d) if t < d => t.saturating_add(hold).min(d + s.traffic.drain_timeout),
                        Some(d) => t.min(d + s.traffic.drain_timeout),
                        None => t.saturating_add(hold),
                    };
                    // As in the gateway, the tunnel counts in its target's in-flight
                    // requests (power of two choices weighs it) until it closes.
                    let held =
                        tried.map(|(route, target)| (route, driver.tunnel_opened(route, target)));
                    tunnels.push(held);
                    open_tunnels += 1;
                    let tr = &mut driver.traffic.report;
                    tr.tunnels += 1;
                    tr.max_tunnels_open = tr.max_tunnels_open.max(open_tunnels);
                    q.push(end, Ev::TunnelEnd((tunnels.len() - 1) as u32));
                }
                // The gateway sends a failed try again: to its upstream.
                if let Some(again) = driver.traffic.pending.take() {
                    if opts.trace
                        && let Some(line) = trace.get_mut(again.request as usize)
                    {
                        line.target =
                            Some(driver.balancers[again.route].url(again.target).to_owned());
                    }
                    dispatch(
                        &mut upstreams,
                        &target_up,
                        &mut q,
                        &mut outcomes,
                        (again.slot, again.route, again.target),
                        &again.upstream_path,
                        again.timeout,
                        None,
                        o.tunnel,
                        now,
                    );
                }
                driver.check_in_flight(now.mono);
            }
            Ev::TunnelEnd(i) => {
                open_tunnels = open_tunnels.saturating_sub(1);
                if let Some((route, slot)) = tunnels.get_mut(i as usize).and_then(Option::take) {
                    driver.tunnel_closed(route, slot);
                }
                driver.check_in_flight(now.mono);
            }
            Ev::DrainEnd => {}
            Ev::Bound(route) => {
                let r = route as usize;
                check_health_bound(&mut driver, s, &upstreams, &target_up, r, t);
                if let Some(h) = &config.routes[r].health_check {
                    let next =
                        t.saturating_add(u64::try_from(h.interval.as_nanos()).unwrap_or(u64::MAX));
                    if next < s.duration {
                        q.push(next, Ev::Bound(route));
                    }
                }
            }
            Ev::Health(route) => {
                let r = route as usize;
                if health_wake[r] != Some(t) {
                    continue;
                }
                health_wake[r] = None;
                let (due, path, timeout) = driver.health_due(r, Nanos(t));
                // Invariant `probes_go_to_the_health_path`: the configured path, not another.
                let want = config.routes[r]
                    .health_check
                    .as_ref()
                    .map(|h| h.path.as_str());
                if want != Some(path.as_str()) && !health_faults[r] {
                    health_faults[r] = true;
                    driver.violations.push(crate::violation::Violation {
                        t_ms: t / 1_000_000,
                        invariant: "probes_go_to_the_health_path",
                        detail: format!(
                            "a probe of route #{r} asks for {path:?}; the config says {want:?}"
                        ),
                    });
                }
                let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
                for target in due {
                    let (passed, delay) =
                        upstreams[target_up[r][target]].probe(t, &path, timeout_ns);
                    probes.push((r, target, passed));
                    q.push(
                        t.saturating_add(delay),
                        Ev::Probe((probes.len() - 1) as u32),
                    );
                }
                // Invariant `due_probes_are_handed_out`: a probe the policy says is due now
                // was given to the shell by `due`. Otherwise the run would wake at this instant
                // forever; it goes on a millisecond at a time instead.
                if driver.health_next(r).is_some_and(|n| n <= t) {
                    if !health_faults[r] {
                        health_faults[r] = true;
                        driver.violations.push(crate::violation::Violation {
                            t_ms: t / 1_000_000,
                            invariant: "due_probes_are_handed_out",
                            detail: format!(
                                "route #{r} has a probe due at {} ms that due() did not hand out",
                                t / 1_000_000
                            ),
                        });
                    }
                    let next = t.saturating_add(1_000_000);
                    if next < s.duration {
                        health_wake[r] = Some(next);
                        q.push(next, Ev::Health(route));
                    }
                    continue;
                }
                wake_health(&mut driver, &mut q, &mut health_wake, r, t, s.duration);
            }
            Ev::Probe(i) => {
                let (r, target, passed) = probes[i as usize];
                driver.probe_result(r, target, passed, Nanos(t));
                check_health_bound(&mut driver, s, &upstreams, &target_up, r, t);
                wake_health(&mut driver, &mut q, &mut health_wake, r, t, s.duration);
            }
            Ev::Load(i) => {
                let spec = &s.loads[i as usize];
                let st = &mut loads[i as usize];
                // Draining: the listener is closed, nothing new arrives.
                if t >= spec.until || t >= s.duration || s.traffic.drain_at.is_some_and(|d| t >= d)
                {
                    continue;
                }
                // Schedule the next arrival first, so the stream is independent of outcomes.
                st.k += 1;
                let next = if spec.poisson {
                    let mean = (1_000_000_000_000u128 / u128::from(spec.rate_milli)) as u64;
                    t.saturating_add(st.rng.exponential(mean).max(1))
                } else {
                    spec.from.saturating_add(
                        (u128::from(st.k) * 1_000_000_000_000u128 / u128::from(spec.rate_milli))
                            as u64,
                    )
                };
                st.next = next;
                q.push(next, Ev::Load(i));
                let path = &spec.paths[st.rng.below(spec.paths.len() as u64) as usize];
                let (ip_i, user_i) = if spec.sequential {
                    st.cursor += 1;
                    (
                        (st.cursor - 1) % spec.ips.len() as u64,
                        (st.cursor - 1) % spec.users.len() as u64,
                    )
                } else {
                    (
                        st.rng.below(spec.ips.len() as u64),
                        st.rng.below(spec.users.len() as u64),
                    )
                };
                let roll = st.rng.below(spec.tokens.last().map_or(1, |x| x.1));
                let kind = spec
                    .tokens
                    .iter()
                    .find(|(_, c)| roll < *c)
                    .map_or(TokenKind::Valid, |x| x.0);
                let user = &spec.users[user_i as usize];
                let fresh;
                let headers: &HeaderMap = if let Some(sim) =
                    idp.as_ref().filter(|_| kind != TokenKind::Missing)
                {
                    let m = &idp_minters[sim.spec.signing_kid(t)];
                    let mut h = if kind == TokenKind::UnknownKid {
                        unknown_kids += 1;
                        m.headers_naming(format!("rnd-{unknown_kids}"), user, now.wall.as_secs())
                    } else {
                        m.headers(user, kind, now.wall.as_secs())
                    };
                    add_extras(&mut h, spec, user_i as usize, user);
                    fresh = h;
                    &fresh
                } else if (kind == TokenKind::Missing || minter.is_none()) && !spec.has_extras() {
                    &empty
                } else if kind.per_request() {
                    let mut h = mint(user, kind, now.wall.as_secs());
                    add_extras(&mut h, spec, user_i as usize, user);
                    fresh = h;
                    &fresh
                } else {
                    let slot = &mut st.headers[user_i as usize][kind.index()];
                    if slot.is_none() {
                        let mut h = if kind == TokenKind::Missing {
                            HeaderMap::new()
                        } else {
                            mint(user, kind, now.wall.as_secs())
                        };
                        add_extras(&mut h, spec, user_i as usize, user);
                        *slot = Some(h);
                    }
                    slot.as_ref().unwrap_or(&empty)
                };
                let cancel = (spec.cancel_ppm > 0).then_some((spec.cancel_ppm, &mut st.cancel));
                let peer = spec.ips[ip_i as usize];
                let mut req = Req {
                    method: &spec.method,
                    host: spec.host.as_deref(),
                    path,
                    headers,
                    peer,
                    cancel,
                    tunnel: spec.tunnel,
                };
                if let Some(sim) = idp.as_mut() {
                    let hold = s.plant != Some(Plant::IgnoreUnknownKid)
                        && hold_for_refetch(&driver, sim, &req, now);
                    driver.violations.append(&mut sim.violations);
                    if hold {
                        held.push(HeldReq::of(&req, kind));
                        if sim.in_flight_until.is_none()
                            && let Some(done) = sim.poll(t, &mut driver.violations)
                        {
                            q.push(done, Ev::IdpFetched);
                        }
                        continue;
                    }
                    let status = send(
                        &mut driver,
                        &mut upstreams,
                        &target_up,
                        &mut q,
                        &mut outcomes,
                        opts.trace.then_some(&mut trace),
                        &mut req,
                        now,
                    );
                    check_published_key(&mut driver, sim, kind, status, t);
                    continue;
                }
                send(
                    &mut driver,
                    &mut upstreams,
                    &target_up,
                    &mut q,
                    &mut outcomes,
                    opts.trace.then_some(&mut trace),
                    &mut req,
                    now,
                );
            }
            Ev::Script(i) => {
                let r = &s.requests[i as usize];
                if t >= s.duration {
                    continue;
                }
                let sent = &mut script_sent[i as usize];
                *sent += 1;
                if *sent < r.count {
                    q.push(t.saturating_add(r.every), Ev::Script(i));
                }
                let fresh;
                let headers =
                    if let Some(sim) = idp.as_ref().filter(|_| r.token != TokenKind::Missing) {
                        fresh = idp_minters[sim.spec.signing_kid(t)].headers(
                            &r.user,
                            r.token,
                            now.wall.as_secs(),
                        );
                        &fresh
                    } else if r.token.per_request() {
                        fresh = mint(&r.user, r.token, now.wall.as_secs());
                        &fresh
                    } else {
                        &script_headers[i as usize]
                    };
                let mut req = Req {
                    method: &r.method,
                    host: r.host.as_deref(),
                    path: &r.path,
                    headers,
                    peer: r.ip,
                    cancel: None,
                    tunnel: None,
                };
                send(
                    &mut driver,
                    &mut upstreams,
                    &target_up,
                    &mut q,
                    &mut outcomes,
                    opts.trace.then_some(&mut trace),
                    &mut req,
                    now,
                );
            }
        }
        for (tt, route) in driver.ticks.drain(..) {
            q.push(tt.max(t), Ev::Tick(route as u32));
        }
        if driver.failed() {
            break;
        }
    }

    let end = Nanos(last_t.max(s.duration));
    let stopped_early = driver.failed();
    if !stopped_early {
        driver.finish(end);
    }
    let finals = driver.final_states(end);
    if s.expect.all_closed_at_end && !driver.failed() {
        for (r, states) in finals.iter().enumerate() {
            for (t, st) in states.iter().enumerate() {
                if *st != BreakerState::Closed {
                    driver.violations.push(crate::violation::Violation {
                        t_ms: end.as_millis(),
                        invariant: "liveness_all_closed",
                        detail: format!(
                            "breaker of {} on route {} is {} at the end, after the faults ended",
                            config.routes[r].targets[t].url,
                            config.routes[r].name,
                            st.as_str()
                        ),
                    });
                }
            }
        }
    }
    if !stopped_early {
        driver.check_weights(end);
        for r in 0..config.routes.len() {
            check_health_bound(&mut driver, s, &upstreams, &target_up, r, end.0);
        }
        if let Some(sim) = idp.as_ref() {
            sim.check_end(end.0, &mut driver.violations);
        }
    }
    let mut report = build_report(s, seed, &driver, end, &finals);
    report.jwks = idp.map(|sim| sim.report);
    if traffic_report {
        report.traffic = Some(std::mem::take(&mut driver.traffic.report));
    }
    report.expectations_failed = expectations_failed(&s.expect, &report);
    if !report.invariant_violations.is_empty() {
        report.reproduce = Some(format!(
            "aegis-sim run {} --seed {seed}",
            if opts.scenario_ref.is_empty() {
                &s.name
            } else {
                &opts.scenario_ref
            }
        ));
    }
    if opts.trace {
        report.trace = Some(trace);
    }
    Ok(report)
}

/// A request held while the JWKS refetch its unknown kid asked for runs.
struct HeldReq {
    method: Method,
    host: Option<String>,
    path: String,
    headers: HeaderMap,
    peer: IpAddr,
    kind: TokenKind,
}

impl HeldReq {
    fn of(r: &Req<'_>, kind: TokenKind) -> HeldReq {
        HeldReq {
            method: r.method.clone(),
            host: r.host.map(str::to_owned),
            path: r.path.to_owned(),
            headers: r.headers.clone(),
            peer: r.peer,
            kind,
        }
    }
}

/// Whether the pipeline would refuse `req` for an unknown key of the IdP's provider and the
/// cache starts (or has) a refetch for it: the request then waits for it, as in the gateway.
/// `on_request_with` is pure, so looking first changes nothing.
fn hold_for_refetch(driver: &Driver, sim: &mut SimIdp, req: &Req<'_>, now: Now) -> bool {
    let view = RequestView {
        method: req.method,
        host: req.host,
        path_and_query: req.path,
        headers: req.headers,
        peer: req.peer,
    };
    match driver.policy.on_request_with(&view, &driver.keys, now) {
        aegis_policy::Step::Respond(r) => {
            driver.policy.unknown_key_provider(&r) == Some(sim.provider)
                && sim.on_unknown_kid(now.mono.0)
        }
        _ => false,
    }
}

/// Invariant `published_key_accepted`: a token signed by the IdP's current signing key (a
/// key it publishes) is never refused 401, unless the gateway could not have fetched it yet:
/// an unknown-kid refetch began within `jwks_refetch_interval`, or one is in flight.
fn check_published_key(
    driver: &mut Driver,
    sim: &SimIdp,
    kind: TokenKind,
    status: Option<u16>,
    t: u64,
) {
    if kind != TokenKind::Valid {
        return;
    }
    driver.counts.checks += 1;
    let kid = sim.spec.signing_kid(t);
    let published = sim.spec.published_at(t).contains(&kid);
    if status == Some(401) && published && !sim.refetch_limited(t) {
        driver.violations.push(crate::violation::Violation {
            t_ms: t / 1_000_000,
            invariant: "published_key_accepted",
            detail: format!(
                "a token signed by {kid}, which the IdP publishes, was refused 401 and no refetch was asked for"
            ),
        });
    }
}

struct Req<'a> {
    method: &'a Method,
    host: Option<&'a str>,
    path: &'a str,
    headers: &'a HeaderMap,
    peer: IpAddr,
    /// The chance (per million) that the client goes away before its answer, and the dice.
    cancel: Option<(u32, &'a mut Rng)>,
    /// An upgrade: how long its tunnel lives once the upstream answers 101.
    tunnel: Option<u64>,
}

/// The load's other headers, for user number `i`: `x-api-key` (the user's name, or at the
/// edges: empty, 257 and 256 bytes), a forged `x-user-id`, `content-length`, extra headers,
/// `x-forwarded-for`, and last a pad to the header budget's edge.
fn add_extras(h: &mut HeaderMap, spec: &crate::scenario::LoadSpec, i: usize, user: &str) {
    use aegis_policy::http::HeaderValue;
    if spec.api_key {
        let key = match i % 7 {
            0 => String::new(),
            1 => "k".repeat(257),
            2 => "k".repeat(256),
            _ => user.to_owned(),
        };
        if let Ok(v) = HeaderValue::from_str(&key) {
            h.insert("x-api-key", v);
        }
    }
    if spec.forge_user_id {
        h.insert("x-user-id", HeaderValue::from_static("mallory"));
    }
    if !spec.content_lengths.is_empty() {
        let n = spec.content_lengths[i % spec.content_lengths.len()];
        h.insert("content-length", HeaderValue::from(n));
    }
    for k in 0..spec.extra_headers {
        if let Ok(name) =
            aegis_policy::http::HeaderName::from_bytes(format!("x-extra-{k}").as_bytes())
        {
            h.insert(name, HeaderValue::from_static("1"));
        }
    }
    if spec.forwarded_for {
        let value = match i % 5 {
            0 => "198.51.100.7, 10.9.0.3",
            1 => "not-an-ip, 10.9.0.3",
            2 => "10.9.0.4",
            3 => "203.0.113.1, 198.51.100.8, 10.9.0.3",
            _ => "198.51.100.9",
        };
        h.insert("x-forwarded-for", HeaderValue::from_static(value));
    }
    if let Some(budget) = spec.header_budget {
        let used: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        let target = (budget + i % 3).saturating_sub(1);
        let pad = "x-pad".len() + 4;
        if target > used + pad {
            let value = "p".repeat(target - used - pad);
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert("x-pad", v);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn send(
    driver: &mut Driver,
    upstreams: &mut [Upstream],
    target_up: &[Vec<usize>],
    q: &mut Queue,
    outcomes: &mut Vec<SlotOutcome>,
    trace: Option<&mut Vec<TraceLine>>,
    req: &mut Req<'_>,
    now: Now,
) -> Option<u16> {
    let view = RequestView {
        method: req.method,
        host: req.host,
        path_and_query: req.path,
        headers: req.headers,
        peer: req.peer,
    };
    let handled = driver.request(&view, now);
    let mut line = trace.map(|tr| {
        tr.push(TraceLine {
            t_ms: now.mono.as_millis(),
            client: req.peer.to_string(),
            method: req.method.to_string(),
            path: req.path.to_owned(),
            status: 0,
            target: None,
        });
        tr.last_mut()
    });
    match handled {
        Handled::Respond { status, .. } => {
            if let Some(tr) = line.as_mut().and_then(|tr| tr.as_mut()) {
                tr.status = status;
            }
            Some(status)
        }
        Handled::Forward {
            slot,
            route,
            target,
            timeout,
            upstream_path,
            ..
        } => {
            let path = upstream_path.as_deref().unwrap_or(req.path);
            dispatch(
                upstreams,
                target_up,
                q,
                outcomes,
                (slot, route, target),
                path,
                timeout,
                req.cancel.as_mut().map(|(p, r)| (*p, &mut **r)),
                req.tunnel,
                now,
            );
            if let Some(tr) = line.as_mut().and_then(|tr| tr.as_mut()) {
                tr.target = Some(driver.balancers[route].url(target).to_owned());
            }
            None
        }
    }
}

/// Schedules `route`'s prober for its next due probe (once per instant).
fn wake_health(
    driver: &mut Driver,
    q: &mut Queue,
    wake: &mut [Option<u64>],
    route: usize,
    t: u64,
    duration: u64,
) {
    if let Some(next) = driver.health_next(route) {
        let next = next.max(t);
        if next < duration && wake[route].is_none_or(|w| next < w) {
            wake[route] = Some(next);
            q.push(next, Ev::Health(route as u32));
        }
    }
}

/// Invariant `unhealthy_within_bound`: a target whose probes have failed without a break
/// since `d` (the scenario's faults say so) is out of rotation by
/// `d + unhealthy_after × (interval × 1.1 + timeout)`: each of the failing probes comes at
/// most a jittered interval after the previous result, which comes at most `timeout` after
/// its probe.
fn check_health_bound(
    driver: &mut Driver,
    s: &Scenario,
    upstreams: &[Upstream],
    target_up: &[Vec<usize>],
    route: usize,
    t: u64,
) {
    let Some(h) = s.config.routes[route].health_check.as_ref() else {
        return;
    };
    let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let per_probe = ns(h.interval) / 10 * 11 + ns(h.timeout);
    let bound = u64::from(h.unhealthy_after).saturating_mul(per_probe);
    for (target, up) in target_up[route].iter().enumerate() {
        driver.counts.checks += 1;
        let Some(since) = upstreams[*up].down_since(t) else {
            continue;
        };
        if t > since.saturating_add(bound) && driver.is_healthy(route, target) {
            let url = &s.config.routes[route].targets[target].url;
            driver.violations.push(crate::violation::Violation {
                t_ms: t / 1_000_000,
                invariant: "unhealthy_within_bound",
                detail: format!(
                    "{url} has failed its probes since {} ms and is still in rotation at {} ms (bound {} ms: unhealthy_after {} × (interval × 1.1 + timeout))",
                    since / 1_000_000,
                    t / 1_000_000,
                    bound / 1_000_000,
                    h.unhealthy_after
                ),
            });
        }
    }
}

/// Sends a try to its upstream: how and when it ends goes into its slot and the queue.
#[allow(clippy::too_many_arguments)]
fn dispatch(
    upstreams: &mut [Upstream],
    target_up: &[Vec<usize>],
    q: &mut Queue,
    outcomes: &mut Vec<SlotOutcome>,
    (slot, route, target): (u32, usize, usize),
    path: &str,
    timeout: std::time::Duration,
    cancel: Option<(u32, &mut Rng)>,
    tunnel: Option<u64>,
    now: Now,
) {
    let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    let up = &mut upstreams[target_up[route][target]];
    // The path the upstream sees (after strip_prefix / base path).
    let (mut outcome, mut delay) = up.answer(now.mono.0, path, timeout_ns);
    let sent = match outcome {
        Some(UpstreamOutcome::ConnectError) => up.resets_at(now.mono.0),
        _ => true,
    };
    // An upgrade the upstream accepts: 101, and the connection becomes a tunnel.
    if tunnel.is_some() && outcome == Some(UpstreamOutcome::Status(200)) {
        outcome = Some(UpstreamOutcome::Status(101));
    }
    // A client that goes away: at a uniform instant within twice the upstream's time;
    // before the outcome, the attempt ends cancelled then.
    if let Some((ppm, rng)) = cancel
        && rng.chance_ppm(ppm)
    {
        let at = rng.below(delay.saturating_mul(2).max(1));
        if at < delay {
            outcome = Some(UpstreamOutcome::Cancelled);
            delay = at;
        }
    }
    let slot_i = slot as usize;
    if outcomes.len() <= slot_i {
        outcomes.resize(slot_i + 1, SlotOutcome::default());
    }
    outcomes[slot_i] = SlotOutcome {
        outcome,
        sent,
        tunnel,
    };
    let ev = if outcome.is_some() {
        Ev::Done(slot)
    } else {
        Ev::Lost(slot)
    };
    q.push(now.mono.0.saturating_add(delay), ev);
}

/// The scenario's `[expect]` entries the report does not meet.
fn expectations_failed(e: &crate::scenario::Expect, r: &Report) -> Vec<String> {
    let mut failed = Vec::new();
    let status = |code: &u16| r.status_counts.get(code).copied().unwrap_or(0);
    for (code, want) in &e.status_counts {
        let got = status(code);
        if got != *want {
            failed.push(format!("status {code}: expected {want}, got {got}"));
        }
    }
    for (code, least) in &e.status_at_least {
        let got = status(code);
        if got < *least {
            failed.push(format!(
                "status {code}: expected at least {least}, got {got}"
            ));
        }
    }
    for (code, most) in &e.status_at_most {
        let got = status(code);
        if got > *most {
            failed.push(format!("status {code}: expected at most {most}, got {got}"));
        }
    }
    if let Some(want) = e.requests
        && want != r.requests
    {
        failed.push(format!("requests: expected {want}, got {}", r.requests));
    }
    let timeline: Vec<String> = r
        .transitions
        .iter()
        .map(|x| {
            format!(
                "{} {} {}>{}",
                crate::report::secs(x.t_ms),
                x.target,
                x.from,
                x.to
            )
        })
        .collect();
    if let Some(want) = &e.transitions
        && *want != timeline
    {
        failed.push(format!(
            "transitions: expected [{}], got [{}]",
            want.join(", "),
            timeline.join(", ")
        ));
    }
    if let Some(want) = e.transition_count
        && want != timeline.len() as u64
    {
        failed.push(format!(
            "transition_count: expected {want}, got {}",
            timeline.len()
        ));
    }
    if let Some(want) = &e.limited_keys {
        let got: BTreeMap<String, u64> = r
            .limited_keys
            .iter()
            .map(|k| (k.key.clone(), k.limited))
            .collect();
        if *want != got {
            failed.push(format!("limited_keys: expected {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = e.store_errors
        && want != r.store_errors
    {
        failed.push(format!(
            "store_errors: expected {want}, got {}",
            r.store_errors
        ));
    }
    let traffic = r.traffic.clone().unwrap_or_default();
    if let Some(want) = e.retries
        && want != traffic.retries
    {
        failed.push(format!("retries: expected {want}, got {}", traffic.retries));
    }
    if let Some(want) = &e.health_transitions {
        let got: Vec<String> = traffic
            .health_transitions
            .iter()
            .map(|h| {
                format!(
                    "{} {} {}",
                    crate::report::secs(h.t_ms),
                    h.target,
                    if h.healthy { "HEALTHY" } else { "UNHEALTHY" }
                )
            })
            .collect();
        if *want != got {
            failed.push(format!(
                "health_transitions: expected [{}], got [{}]",
                want.join(", "),
                got.join(", ")
            ));
        }
    }
    if let Some(want) = e.admitted_unchecked
        && want != r.admitted_unchecked
    {
        failed.push(format!(
            "admitted_unchecked: expected {want}, got {}",
            r.admitted_unchecked
        ));
    }
    failed
}

fn build_report(
    s: &Scenario,
    seed: u64,
    driver: &Driver,
    end: Nanos,
    finals: &[Vec<BreakerState>],
) -> Report {
    let config = &s.config;
    let c = &driver.counts;
    let status_counts: BTreeMap<u16, u64> = c
        .status
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(code, n)| (code as u16, *n))
        .collect();
    let outcomes: BTreeMap<&'static str, u64> = OUTCOMES
        .iter()
        .zip(c.outcomes.iter())
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (*k, *n))
        .collect();
    let mut per_target = Vec::new();
    for (r, route) in config.routes.iter().enumerate() {
        for (t, target) in route.targets.iter().enumerate() {
            let (requests, failures) = c.per_target[r][t];
            per_target.push(TargetReport {
                route: route.name.clone(),
                target: target.url.clone(),
                requests,
                failures,
                final_state: finals[r][t].as_str(),
            });
        }
    }
    let transitions = driver.transition_reports();
    let mut limited: Vec<(&aegis_policy::CounterKey, u64)> =
        driver.limited.iter().map(|(k, v)| (k, *v)).collect();
    limited.sort();
    let limited_keys = limited
        .into_iter()
        .map(|(k, v)| LimitedKey {
            key: k.to_string(),
            limited: v,
        })
        .collect();
    Report {
        scenario: s.name.clone(),
        seed,
        virtual_ms: end.as_millis(),
        requests: c.requests,
        responses: c.responses,
        status_counts,
        outcomes,
        unauthorized: c.auth.iter().copied().collect(),
        store_errors: c.store_errors,
        admitted_unchecked: c.unchecked,
        per_target,
        transitions,
        limited_keys,
        invariant_checks: c.checks,
        invariant_violations: driver.violations.clone(),
        expectations_failed: Vec::new(),
        jwks: None,
        traffic: None,
        reproduce: None,
        trace: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_pops_in_time_then_push_order_across_both_heaps() {
        assert_eq!(std::mem::size_of::<Event>(), 24, "events stay small");
        let mut q = Queue::default();
        q.push(5, Ev::Done(1));
        q.push(5, Ev::Load(0));
        q.push(3, Ev::Script(2));
        q.push(5, Ev::Tick(0));
        q.push(1, Ev::Done(9));
        let order: Vec<(u64, Ev)> = std::iter::from_fn(|| q.pop().map(|e| (e.t, e.ev))).collect();
        assert_eq!(
            order,
            vec![
                (1, Ev::Done(9)),
                (3, Ev::Script(2)),
                (5, Ev::Done(1)),
                (5, Ev::Load(0)),
                (5, Ev::Tick(0)),
            ]
        );
    }
}
