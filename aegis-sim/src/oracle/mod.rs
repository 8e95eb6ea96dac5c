//! The reference model (oracle): for every simulated event, what the policy *should* decide,
//! computed again from the scenario's config values by rules written out plainly in the
//! submodules, without calling aegis-policy's router, verifier, limiter, balancer or breaker.
//! The driver asks it first and compares: the run fails on the first disagreement.
//!
//! * [`route`]: path normalisation, route precedence, the upstream path;
//! * [`auth`]: JWT checks, on tokens the oracle decodes and re-signs itself;
//! * [`limit`]: fixed windows and GCRA from the route's `max` and `window`;
//! * [`breaker`]: circuits and round robin from `[breaker]`;
//! * health checks: a target's standing from its probe results, `unhealthy_after` failures
//!   or `healthy_after` passes in a row.
//!
//! Routes whose choice of target depends on draws, weights or keys (`balance = "p2c"`,
//! differing weights, `balance = "hash"`) or on health checks are *followed*: the model does
//! not predict the target, it computes the targets that may take the request (circuit admits,
//! health checks pass) and checks that the policy chose one of them ([`Oracle::bind`]); the
//! rest (probe, breaker outcome, upstream path) is judged as on any route.
//!
//! The config is read through aegis-policy's `Config` (the config model is the input), but
//! nothing derived from it by the policy (its `Limit`, its breakers) is.

pub mod auth;
pub mod breaker;
pub mod limit;
pub mod route;

use std::collections::HashMap;
use std::net::IpAddr;

use aegis_policy::config::{LimitAlgorithm, LimitKeyKind, OnStoreError};
use aegis_policy::http::HeaderMap;
use aegis_policy::http::header::CONTENT_LENGTH;
use aegis_policy::{Config, FixedHasher, RequestView, UpstreamOutcome};

use crate::scenario::StoreFault;
use auth::{Auth, Check};
use breaker::{Change, Judged, RoundRobin, Rules, Sent, State};
use limit::{Counter, RouteLimit, Verdict};
use route::Routed;

/// Rate-limit information on a forwarded request's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rate {
    None,
    /// `RateLimit-Limit`, `-Remaining`, `-Reset` (seconds) and `-Policy`.
    Headers {
        limit: u64,
        remaining: u64,
        reset: u64,
        policy: String,
    },
    /// The store failed and `on_store_error = "allow"` let it through unchecked.
    Unchecked,
}

/// What happens to a request: the answer the gateway gives itself, or where it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Respond {
        status: u16,
        /// The policy's reason label (`no_route`, `rate_limited`, ...).
        reason: &'static str,
        /// The 401's `reason` (`expired`, ...).
        auth: Option<&'static str>,
        route: Option<usize>,
        /// `Retry-After`, in seconds, when the answer carries one.
        retry_after: Option<u64>,
    },
    Forward {
        route: usize,
        target: usize,
        probe: bool,
        /// The path and query the upstream receives.
        upstream: String,
        /// `x-user-id`.
        user: Option<String>,
        rate: Rate,
        /// The body limit the shell enforces while the body streams.
        max_body: Option<u64>,
    },
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Respond {
                status,
                reason,
                auth,
                route,
                retry_after,
            } => {
                write!(f, "{status} {reason}")?;
                if let Some(a) = auth {
                    write!(f, " ({a})")?;
                }
                if let Some(r) = route {
                    write!(f, " on route #{r}")?;
                }
                if let Some(s) = retry_after {
                    write!(f, ", Retry-After {s}")?;
                }
                Ok(())
            }
            Answer::Forward {
                route,
                target,
                probe,
                upstream,
                user,
                rate,
                max_body,
            } => {
                write!(f, "forward on route #{route} to target #{target}")?;
                if let Some(m) = max_body {
                    write!(f, " (body limit {m})")?;
                }
                if *probe {
                    write!(f, " (the probe)")?;
                }
                write!(f, " as {upstream}")?;
                if let Some(u) = user {
                    write!(f, ", x-user-id {u}")?;
                }
                match rate {
                    Rate::None => Ok(()),
                    Rate::Unchecked => write!(f, ", rate limit unchecked"),
                    Rate::Headers {
                        limit,
                        remaining,
                        reset,
                        policy,
                    } => write!(
                        f,
                        ", RateLimit {limit}/{remaining} reset {reset}s policy {policy}"
                    ),
                }
            }
        }
    }
}

/// Whose budget a request spends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Client {
    Ip(IpAddr),
    User(String),
    Header(String),
}

/// The expectation for a forwarded request, kept until its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    route: usize,
    target: usize,
    sent: Sent,
}

impl Ticket {
    /// The model has not chosen the target: the policy's choice is checked by
    /// [`Oracle::bind`].
    pub fn follows(&self) -> bool {
        self.target == FOLLOW
    }
}

/// The target of a followed route's request until [`Oracle::bind`].
pub const FOLLOW: usize = usize::MAX;

/// One target's health-check standing.
#[derive(Debug, Clone, Copy)]
struct Standing {
    healthy: bool,
    /// Results in a row against the standing.
    streak: u32,
}

/// The request being followed: what binding it needs.
#[derive(Debug, Clone)]
struct Following {
    route: usize,
    admissible: Vec<usize>,
    normal: String,
    query: Option<String>,
}

/// The fields of a `/gateway/stats` line the model predicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsLine {
    pub failures: u64,
    pub state: &'static str,
    pub requests: u64,
    pub probe_in_flight: bool,
    pub next_probe_in_ms: Option<u64>,
    pub since_transition_ms: Option<u64>,
}

/// A breaker change the oracle expected, for the driver to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub at: u64,
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Debug)]
pub struct Oracle {
    config: Config,
    rules: Rules,
    auth: Option<Auth>,
    limits: Vec<Option<(RouteLimit, String)>>,
    /// Routes count under their name: two routes of one name share counters.
    name_of: Vec<usize>,
    counters: HashMap<(usize, Client), Counter, FixedHasher>,
    balancers: Vec<RoundRobin>,
    store_faults: Vec<StoreFault>,
    command_timeout: u64,
    /// Routes whose target the model follows rather than predicts.
    follow: Vec<bool>,
    health: Vec<Vec<Standing>>,
    following: Option<Following>,
}

fn ns(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Oracle {
    pub fn new(config: &Config, store_faults: &[StoreFault]) -> Oracle {
        let b = &config.breaker;
        let name_of = config
            .routes
            .iter()
            .map(|r| {
                config
                    .routes
                    .iter()
                    .position(|o| o.name == r.name)
                    .unwrap_or(0)
            })
            .collect();
        let limits = config
            .routes
            .iter()
            .map(|r| {
                r.rate_limit.as_ref().map(|l| {
                    let window_ms = (l.window.as_millis() as u64).max(1);
                    let policy = format!("{};w={}", l.max, l.window.as_secs().max(1));
                    (
                        RouteLimit {
                            max: l.max,
                            window_ms,
                            gcra: l.algorithm == LimitAlgorithm::Gcra,
                        },
                        policy,
                    )
                })
            })
            .collect();
        Oracle {
            rules: Rules {
                threshold: u64::from(b.failure_threshold),
                open_for: ns(b.open_for),
                probe_timeout: ns(b.probe_timeout),
            },
            auth: config.auth.as_ref().map(Auth::new),
            limits,
            name_of,
            counters: HashMap::with_hasher(FixedHasher),
            balancers: config
                .routes
                .iter()
                .map(|r| RoundRobin::new(r.targets.len()))
                .collect(),
            store_faults: store_faults.to_vec(),
            command_timeout: ns(config.rate_limit.command_timeout),
            follow: config
                .routes
                .iter()
                .map(|r| {
                    let w = r.targets.first().map_or(1, |t| t.weight);
                    // `hash_on` without the hash only in a test's config (a policy that
                    // ignores the key must be caught), never from a file.
                    r.balance != aegis_policy::config::Balance::RoundRobin
                        || r.hash_on.is_some()
                        || r.targets.iter().any(|t| t.weight != w)
                        || r.health_check.is_some()
                })
                .collect(),
            health: config
                .routes
                .iter()
                .map(|r| {
                    vec![
                        Standing {
                            healthy: true,
                            streak: 0
                        };
                        r.targets.len()
                    ]
                })
                .collect(),
            following: None,
            config: config.clone(),
        }
    }

    /// Whether every target of `route` could take the request being followed.
    pub fn all_admissible(&self, route: usize) -> bool {
        self.following.as_ref().is_some_and(|f| {
            f.route == route && f.admissible.len() == self.config.routes[route].targets.len()
        })
    }

    /// The targets that could take the request being followed on `route`.
    pub fn admissible_now(&self, route: usize) -> Option<&[usize]> {
        self.following
            .as_ref()
            .filter(|f| f.route == route)
            .map(|f| f.admissible.as_slice())
    }

    /// Whether the model follows `route`'s choice of target.
    pub fn follows(&self, route: usize) -> bool {
        self.follow.get(route).copied().unwrap_or(false)
    }

    /// Makes every route followed (the simulator retries: a retry's target is the policy's).
    pub fn follow_all(&mut self) {
        self.follow.iter_mut().for_each(|f| *f = true);
    }

    /// A health probe's result: the target's standing after it.
    pub fn probe(&mut self, route: usize, target: usize, passed: bool) -> bool {
        let hc = self.config.routes[route].health_check.as_ref();
        let (down_after, up_after) = hc.map_or((1, 1), |h| (h.unhealthy_after, h.healthy_after));
        let s = &mut self.health[route][target];
        if passed == s.healthy {
            s.streak = 0;
        } else {
            s.streak += 1;
            if s.streak >= if s.healthy { down_after } else { up_after } {
                s.healthy = passed;
                s.streak = 0;
            }
        }
        s.healthy
    }

    /// What the model says of a target's health checks.
    pub fn healthy(&self, route: usize, target: usize) -> bool {
        self.health[route][target].healthy
    }

    /// The targets of `route` that may take a request at `mono`, leaving out `tried`.
    fn admissible(&mut self, route: usize, mono: u64, tried: &[usize]) -> Vec<usize> {
        let rules = self.rules;
        let rr = &mut self.balancers[route];
        rr.settle(mono, &rules);
        (0..rr.circuits.len())
            .filter(|t| !tried.contains(t))
            .filter(|&t| self.health[route][t].healthy && rr.circuits[t].admits(mono, &rules))
            .collect()
    }

    /// The 503 for a followed route without an admissible target: the health-check
    /// interval when some circuit would admit, else the soonest circuit's wait.
    fn no_target(&mut self, route: usize, mono: u64, tried: &[usize]) -> u64 {
        let rules = self.rules;
        let rr = &mut self.balancers[route];
        let left: Vec<usize> = (0..rr.circuits.len())
            .filter(|t| !tried.contains(t))
            .collect();
        let waits: Vec<u64> = left
            .iter()
            .map(|&t| {
                rr.circuits[t].settle(mono, &rules);
                rr.circuits[t].wait(mono)
            })
            .collect();
        match &self.config.routes[route].health_check {
            Some(h) if waits.contains(&0) => ns(h.interval),
            _ => waits.into_iter().min().unwrap_or(0),
        }
    }

    /// The policy sent the followed request (`ticket`, `want`) to `target` at `mono`: an
    /// admissible target? Fills in the expectation (target, probe, upstream path) and sends
    /// on the model's circuit. `Err` names the rule broken.
    pub fn bind(
        &mut self,
        ticket: &mut Ticket,
        want: &mut Answer,
        target: usize,
        mono: u64,
    ) -> Result<(), (&'static str, String)> {
        let Some(f) = self.following.take() else {
            return Err(("oracle_agrees", "no request is being followed".to_owned()));
        };
        self.check_choice(f.route, &f.admissible, target)?;
        let sent = self.balancers[f.route].circuits[target].send(mono, &self.rules);
        ticket.target = target;
        ticket.sent = sent;
        if let Answer::Forward {
            target: t,
            probe,
            upstream,
            ..
        } = want
        {
            *t = target;
            *probe = sent.probe;
            *upstream = route::upstream_path(
                &self.config.routes[f.route],
                target,
                &f.normal,
                f.query.as_deref(),
            );
        }
        Ok(())
    }

    fn check_choice(
        &self,
        route: usize,
        admissible: &[usize],
        target: usize,
    ) -> Result<(), (&'static str, String)> {
        if admissible.contains(&target) {
            return Ok(());
        }
        let c = self.balancers[route].circuits.get(target);
        let p2c = self.config.routes[route].balance == aegis_policy::config::Balance::P2c;
        let open = c.is_some_and(|c| c.state == State::Open);
        let invariant = if p2c && open {
            "p2c_never_to_open_circuit"
        } else if !self.health[route].get(target).is_none_or(|h| h.healthy) {
            "no_forward_to_unhealthy"
        } else {
            "oracle_agrees"
        };
        Err((
            invariant,
            format!(
                "route #{route} sent to target #{target}; the reference model allows only {admissible:?}"
            ),
        ))
    }

    /// A retry of a request on `route` after `tried` failed: the targets that may take it
    /// (empty: the model expects no retry to find one).
    pub fn retry_targets(&mut self, route: usize, tried: &[usize], mono: u64) -> Vec<usize> {
        self.admissible(route, mono, tried)
    }

    /// The policy retried on `target` at `mono` (after `tried`): an admissible one? Sends on
    /// the model's circuit.
    pub fn retry(
        &mut self,
        route: usize,
        tried: &[usize],
        target: usize,
        mono: u64,
    ) -> Result<Ticket, (&'static str, String)> {
        let admissible = self.admissible(route, mono, tried);
        self.check_choice(route, &admissible, target)?;
        let sent = self.balancers[route].circuits[target].send(mono, &self.rules);
        Ok(Ticket {
            route,
            target,
            sent,
        })
    }

    /// What should happen to `req` at monotonic `mono` ns and wall `wall_ms`. The oracle's
    /// state moves as if it happened; `None` when it cannot judge (a token it cannot check).
    pub fn request(
        &mut self,
        req: &RequestView<'_>,
        mono: u64,
        wall_ms: u64,
    ) -> Option<(Answer, Option<Ticket>)> {
        let server = &self.config.server;
        let refuse = |status, reason, route, retry_after| Answer::Respond {
            status,
            reason,
            auth: None,
            route,
            retry_after,
        };
        if req.path_and_query.len() > server.max_uri_bytes {
            return Some((refuse(414, "uri_too_long", None, None), None));
        }
        let header_bytes: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if header_bytes > server.max_header_bytes {
            return Some((refuse(431, "headers_too_large", None, None), None));
        }
        let (raw, query) = match req.path_and_query.find('?') {
            Some(i) => (&req.path_and_query[..i], Some(&req.path_and_query[i + 1..])),
            None => (req.path_and_query, None),
        };
        let normal = match route::normal_path(raw) {
            Some(p) if raw.starts_with('/') && !route::refused(raw) => p,
            _ => return Some((refuse(400, "bad_request", None, None), None)),
        };
        let id = match route::find(&self.config.routes, req.method, req.host, &normal) {
            Routed::Route(i) => i,
            Routed::NotFound => return Some((refuse(404, "no_route", None, None), None)),
            Routed::MethodNotAllowed => {
                return Some((refuse(405, "method_not_allowed", None, None), None));
            }
        };
        let route = &self.config.routes[id];
        // A path a lenient backend reads as a more protected route is refused.
        let lenient = route::lenient(&normal);
        if lenient != normal
            && let Routed::Route(other) =
                route::find(&self.config.routes, req.method, req.host, &lenient)
        {
            let o = &self.config.routes[other];
            let stricter =
                (o.auth && !route.auth) || (o.rate_limit.is_some() && route.rate_limit.is_none());
            if other != id && stricter {
                return Some((refuse(400, "bad_request", None, None), None));
            }
        }
        let user = if route.auth {
            let auth = self.auth.as_mut()?;
            match auth.check(req.headers, wall_ms, mono) {
                Check::User(u) => Some(u),
                Check::Refused(why) => {
                    let answer = Answer::Respond {
                        status: 401,
                        reason: "unauthorized",
                        auth: Some(why),
                        route: Some(id),
                        retry_after: None,
                    };
                    return Some((answer, None));
                }
                Check::Unknown => return None,
                Check::KeysUnavailable => {
                    let answer = Answer::Respond {
                        status: 503,
                        reason: "unauthorized",
                        auth: Some("keys_unavailable"),
                        route: Some(id),
                        retry_after: Some(5),
                    };
                    return Some((answer, None));
                }
            }
        } else {
            None
        };
        if let (Some(len), Some(max)) = (content_length(req.headers), route.max_body_bytes)
            && len > max
        {
            return Some((refuse(413, "body_too_large", Some(id), None), None));
        }
        let rate = match (&self.limits[id], &route.rate_limit) {
            (Some((limit, policy)), Some(cfg)) => {
                let ip = client_ip(&self.config, req.peer, req.headers);
                let client = match &cfg.key {
                    LimitKeyKind::Ip => Client::Ip(ip),
                    LimitKeyKind::User => Client::User(user.clone().unwrap_or_default()),
                    LimitKeyKind::Header(name) => {
                        match req.headers.get(name).and_then(|v| v.to_str().ok()) {
                            Some(v) if !v.is_empty() && v.len() <= 256 => {
                                Client::Header(v.to_owned())
                            }
                            _ => Client::Ip(ip),
                        }
                    }
                };
                // The store: down (nothing counted), too slow (counted, but the gateway gave up
                // waiting), or fine.
                let fault = self
                    .store_faults
                    .iter()
                    .filter(|f| f.from <= mono && mono < f.until)
                    .find_map(|f| match f.slow {
                        None => Some(false),
                        Some(lat) if lat >= self.command_timeout => Some(true),
                        Some(_) => None,
                    });
                let key = (self.name_of[id], client);
                let verdict = if fault == Some(false) {
                    None
                } else {
                    let mut counter = self.counters.get(&key).copied();
                    let v = limit.count(&mut counter, wall_ms);
                    if let Some(c) = counter {
                        self.counters.insert(key, c);
                    }
                    Some(v)
                };
                match (fault, verdict) {
                    (Some(_), _) => match self.config.rate_limit.on_store_error {
                        OnStoreError::Allow => Rate::Unchecked,
                        OnStoreError::Deny => {
                            let a = refuse(503, "store_unavailable", Some(id), Some(1));
                            return Some((a, None));
                        }
                    },
                    (None, Some(Verdict::Refuse(secs))) => {
                        let a = refuse(429, "rate_limited", Some(id), Some(secs));
                        return Some((a, None));
                    }
                    (None, Some(Verdict::Admit(h))) => Rate::Headers {
                        limit: h.limit,
                        remaining: h.remaining,
                        reset: h.reset,
                        policy: policy.clone(),
                    },
                    (None, None) => Rate::None,
                }
            }
            _ => Rate::None,
        };
        if self.follow[id] {
            let max_body = route.max_body_bytes;
            let admissible = self.admissible(id, mono, &[]);
            if admissible.is_empty() {
                let secs = limit::retry_secs(self.no_target(id, mono, &[]) / 1_000_000);
                return Some((refuse(503, "no_healthy_target", Some(id), Some(secs)), None));
            }
            self.following = Some(Following {
                route: id,
                admissible,
                normal: normal.clone(),
                query: query.map(str::to_owned),
            });
            let answer = Answer::Forward {
                route: id,
                target: FOLLOW,
                probe: false,
                upstream: String::new(),
                user,
                rate,
                max_body,
            };
            let ticket = Ticket {
                route: id,
                target: FOLLOW,
                sent: Sent {
                    era: 0,
                    probe: false,
                },
            };
            return Some((answer, Some(ticket)));
        }
        match self.balancers[id].pick(mono, &self.rules) {
            Ok((target, sent)) => {
                let upstream = route::upstream_path(route, target, &normal, query);
                let answer = Answer::Forward {
                    route: id,
                    target,
                    probe: sent.probe,
                    upstream,
                    user,
                    rate,
                    max_body: route.max_body_bytes,
                };
                let ticket = Ticket {
                    route: id,
                    target,
                    sent,
                };
                Some((answer, Some(ticket)))
            }
            Err(wait_ns) => {
                let secs = limit::retry_secs(wait_ns / 1_000_000);
                Some((refuse(503, "no_healthy_target", Some(id), Some(secs)), None))
            }
        }
    }

    /// The outcome of a forwarded request at `mono`: what its client should get.
    pub fn outcome(&mut self, ticket: Ticket, outcome: UpstreamOutcome, mono: u64) -> u16 {
        let statuses = &self.config.breaker.failure_statuses;
        let (judged, status) = match outcome {
            UpstreamOutcome::Status(s) if statuses.contains(s) => (Judged::Failure, s),
            UpstreamOutcome::Status(s) => (Judged::Success, s),
            UpstreamOutcome::ConnectError => (Judged::Failure, 502),
            UpstreamOutcome::Timeout => (Judged::Failure, 504),
            UpstreamOutcome::Cancelled => (Judged::Neither, 499),
        };
        let rr = &mut self.balancers[ticket.route];
        rr.settle(mono, &self.rules);
        rr.circuits[ticket.target].outcome(ticket.sent, judged, mono, &self.rules);
        status
    }

    /// `[idp]`: the IdP's document with `kids` (sent with `max_age`) reached the gateway at
    /// `mono`.
    pub fn jwks_fetched(
        &mut self,
        kids: Vec<String>,
        max_age: Option<std::time::Duration>,
        mono: u64,
    ) {
        if let Some(a) = self.auth.as_mut() {
            a.fetched(kids, max_age, mono);
        }
    }

    /// Time passes on a route's circuits.
    pub fn settle(&mut self, route: usize, mono: u64) {
        if let Some(rr) = self.balancers.get_mut(route) {
            rr.settle(mono, &self.rules);
        }
    }

    /// The next change of a circuit the policy has not reported yet.
    pub fn next_change(&mut self, route: usize, target: usize) -> Option<Expected> {
        let c = self.balancers[route].circuits[target]
            .unreported
            .pop_front()?;
        Some(describe(c))
    }

    /// A circuit's state name and failure count now (after `settle`).
    pub fn circuit(&self, route: usize, target: usize) -> (&'static str, u64) {
        let c = &self.balancers[route].circuits[target];
        (c.state.name(), c.failures)
    }

    /// The `/gateway/stats` line of a circuit at `mono` (after `settle`): failures, state,
    /// requests sent, whether a probe is out, ms until an OPEN circuit half-opens, ms since
    /// the last change (absent if it never changed).
    pub fn stats(&self, route: usize, target: usize, mono: u64) -> StatsLine {
        let c = &self.balancers[route].circuits[target];
        StatsLine {
            failures: c.failures,
            state: c.state.name(),
            requests: c.sends,
            probe_in_flight: c.state == State::HalfOpen && c.probe_deadline.is_some(),
            next_probe_in_ms: (c.state == State::Open)
                .then(|| c.reopens_at.saturating_sub(mono) / 1_000_000),
            since_transition_ms: c.last_change.map(|at| mono.saturating_sub(at) / 1_000_000),
        }
    }

    /// Every circuit's state is CLOSED.
    pub fn all_closed(&self) -> bool {
        self.balancers
            .iter()
            .all(|b| b.circuits.iter().all(|c| c.state == State::Closed))
    }
}

fn describe(c: Change) -> Expected {
    Expected {
        at: c.at,
        from: c.from.name(),
        to: c.to.name(),
    }
}

/// The client a limit counts: the socket peer; but when the peer is a trusted proxy, the
/// `X-Forwarded-For` entries are read from the right (the last header first), skipping
/// trusted proxies: the first untrusted address is the client. An entry that is not an
/// address ends the walk at the last trusted one; if all are trusted, the leftmost is it.
fn client_ip(config: &Config, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let trusted = |ip: &IpAddr| {
        config
            .server
            .trusted_proxies
            .iter()
            .any(|net| net.contains(ip))
    };
    if !trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let lines: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    for line in lines.into_iter().rev() {
        let Ok(text) = line.to_str() else {
            return client;
        };
        for entry in text.split(',').rev() {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) if trusted(&ip) => client = ip,
                Ok(ip) => return ip,
                Err(_) => return client,
            }
        }
    }
    client
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
