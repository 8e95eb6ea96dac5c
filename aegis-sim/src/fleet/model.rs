//! The fleet on virtual time: gateways × workers sharing one Redis-like store, each worker
//! doing what aegis-tokio/src/state/redis.rs does with a limited request (negative cache, then
//! one call in flight per key with later requests batched into the next call, calls for other
//! keys pipelined on the same connection, `command_timeout` on every wait), and each gateway's
//! health supervisor (down on the first failed call or PING, reconnect with capped exponential
//! backoff). Decisions are aegis-policy's: `Policy::on_request` / `on_counter`, `step_batch`
//! and `Batch::reply` at the store, `NegativeCache` on the workers.
//!
//! ```text
//!  request ─▶ worker: negative cache ──hit──▶ 429 (no call)
//!                 │ miss
//!                 ├── store Down ──▶ on_store_error (503 or admit unchecked), at once
//!                 ▼
//!            key's queue ── no call in flight ──▶ call(n = queue) ──l1──▶ store: step_batch
//!                 ▲                                   │                       │ l2
//!                 └──── next batch on return ◀────────┴── reply / timeout ◀───┘
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use aegis_policy::http::{HeaderMap, Method};
use aegis_policy::ratelimit::{FixedHasher, NegativeCache, step_batch};
use aegis_policy::{
    CounterReply, CounterState, Limit, Nanos, Now, Pending, Policy, RequestView, Step, StoreError,
    UnixMillis,
};

use super::scenario::{FleetScenario, MS, OutageKind};
use crate::rng::Rng;

/// The adapter's reconnect backoff, PING period and connect-timeout floor (redis.rs).
pub const BACKOFF_MIN: u64 = 50 * MS;
pub const BACKOFF_MAX: u64 = 1000 * MS;
pub const PING_EVERY: u64 = 1000 * MS;
pub const CONNECT_TIMEOUT_MIN: u64 = 500 * MS;
/// The adapter's negative cache size per worker.
const NEGATIVE_CACHE_KEYS: usize = 10_000;
/// Wall clock at virtual time 0 (a Unix instant in 2027, on a window edge for most windows).
pub const WALL_ORIGIN_MS: u64 = 1_800_000_000_000;

/// A planted bug, for the tests that prove the invariants catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The store admits every request of a batch (n instead of min(n, room)).
    BatchAdmitsAll,
    /// A worker's negative cache keeps refusing a key one window past the refusal's end.
    StaleNegativeCache,
    /// A waiting request has no timeout of its own (only its call does).
    NoWaiterTimeout,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The store admitted it (200).
    Admitted,
    /// The store refused it (429).
    Limited,
    /// The worker's negative cache refused it, no call (429).
    CachedRefusal,
    /// The store failed; on_store_error = deny (503).
    DeniedStoreError,
    /// The store failed; on_store_error = allow (200, unchecked).
    AdmittedUnchecked,
}

impl Outcome {
    pub fn status(self) -> u16 {
        match self {
            Outcome::Admitted | Outcome::AdmittedUnchecked => 200,
            Outcome::Limited | Outcome::CachedRefusal => 429,
            Outcome::DeniedStoreError => 503,
        }
    }
}

/// One request as the checker sees it.
#[derive(Debug, Clone)]
pub struct ReqRecord {
    pub gateway: u32,
    pub key: u32,
    pub arrival: u64,
    /// The gateway's wall clock at arrival.
    pub wall_ms: u64,
    /// Every answer given (time, outcome): exactly one if all is well.
    pub answers: Vec<(u64, Outcome)>,
    /// The wall time its batch was decided at by the store, if it reached the store.
    pub decided_wall_ms: Option<u64>,
    /// For a cached refusal: the store's live state of the key at that instant.
    pub store_state_at_refusal: Option<Option<CounterState>>,
    /// Its call reached the store after the key it counts on had expired there (the key
    /// existed before): the store started that counter afresh.
    pub reopened: bool,
    /// For a cached refusal whose key had expired in the store: the state it held.
    pub expired_state_at_refusal: Option<CounterState>,
    /// For a cached refusal: the key had expired in the store at least once since it was
    /// made (and may have been made afresh since).
    pub key_expired_at_refusal: bool,
}

/// A store health transition a gateway logged (what `redis.rs` warns / infos).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HealthLog {
    pub t_ms: u64,
    pub gateway: u32,
    /// `down` or `up`.
    pub event: &'static str,
    pub why: String,
}

/// What the store and the workers did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Calls sent to the store.
    pub calls: u64,
    /// Requests decided by another request's call (sum of n - 1 over calls).
    pub coalesced: u64,
    /// Calls sent while the same worker had a call for another key in flight.
    pub pipelined: u64,
    /// Largest batch.
    pub max_batch: u64,
    /// Calls applied at the store whose reply came after `command_timeout`.
    pub applied_after_timeout: u64,
    /// Calls that timed out, and calls that failed with an error.
    pub timeouts: u64,
    pub call_errors: u64,
    /// Requests answered by on_store_error without a call (store known down).
    pub failed_fast: u64,
    /// Calls that reached the store after their counter's key had expired there (a late call
    /// for a window whose key is gone starts it afresh).
    pub reopened: u64,
    pub pings: u64,
    pub connects: u64,
}

#[derive(Debug)]
enum Ev {
    Arrive(usize),
    StoreArrive(usize),
    CallReturn(usize),
    CallTimeout(usize),
    WaiterTimeout(usize),
    /// Supervisor step of a gateway, valid while its generation is unchanged.
    Ping(u32, u64),
    PingDone(u32, u64, bool),
    Connect(u32, u64),
    ConnectDone(u32, u64, bool),
}

struct Call {
    gateway: u32,
    worker: u32,
    /// The queue it drains (the Redis key: a fixed window's names its window).
    redis_key: String,
    waiters: Vec<usize>,
    now: UnixMillis,
    epoch: u64,
    l2: u64,
    /// The store's answer, once it ran (Err: an I/O error).
    result: Option<Result<aegis_policy::Batch, ()>>,
    applied: bool,
    done: bool,
}

struct Lane {
    /// Requests waiting for their key's next call; a key is present while its pump runs.
    queues: BTreeMap<String, Vec<usize>>,
    negative: NegativeCache<FixedHasher>,
    /// [`Bug::StaleNegativeCache`]: every refusal ever cached, kept one window too long.
    stale: BTreeMap<String, (UnixMillis, CounterState)>,
    in_flight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Up,
    Down,
}

struct Gateway {
    policy: Policy,
    skew_ms: u64,
    health: Health,
    epoch: u64,
    down_since: u64,
    /// The epoch the supervisor's connection was made in.
    conn_epoch: u64,
    /// Bumped to cancel the supervisor's scheduled step.
    generation: u64,
    /// True while the supervisor waits between PINGs (a worker's failure wakes it).
    idle: bool,
    backoff: u64,
    lanes: Vec<Lane>,
}

struct Req {
    worker: u32,
    pending: Option<Pending>,
    now: Now,
}

/// Everything a run produced, for the checker and the report.
#[derive(Debug)]
pub struct Outputs {
    pub requests: Vec<ReqRecord>,
    pub counts: Counts,
    pub health: Vec<HealthLog>,
    pub end: u64,
}

pub(crate) struct Model<'a> {
    sc: &'a FleetScenario,
    bug: Option<Bug>,
    now: u64,
    seq: u64,
    events: BTreeMap<(u64, u64), Ev>,
    /// Redis key → (state, expiry on the store's clock, Unix ms).
    store: BTreeMap<String, (CounterState, u64)>,
    /// Calls that found their key expired although it had existed, and those keys.
    reopened: u64,
    reopened_keys: std::collections::BTreeSet<String>,
    gateways: Vec<Gateway>,
    reqs: Vec<Req>,
    records: Vec<ReqRecord>,
    calls: Vec<Call>,
    lat: Rng,
    counts: Counts,
    health: Vec<HealthLog>,
    limit: Limit,
    headers: HeaderMap,
}

impl<'a> Model<'a> {
    pub(crate) fn new(
        sc: &'a FleetScenario,
        seed: u64,
        bug: Option<Bug>,
    ) -> Result<Model<'a>, String> {
        let mut skew = Rng::derive(seed, "fleet-skew");
        let mut gateways = Vec::new();
        for _ in 0..sc.gateways {
            let policy = Policy::new(sc.config.clone()).map_err(|e| e.to_string())?;
            gateways.push(Gateway {
                policy,
                skew_ms: skew.range(0, sc.clock_skew / MS),
                health: Health::Up,
                epoch: 0,
                down_since: 0,
                conn_epoch: 0,
                generation: 0,
                idle: true,
                backoff: BACKOFF_MIN,
                lanes: (0..sc.workers)
                    .map(|_| Lane {
                        queues: BTreeMap::new(),
                        negative: NegativeCache::with_hasher(NEGATIVE_CACHE_KEYS, FixedHasher),
                        stale: BTreeMap::new(),
                        in_flight: 0,
                    })
                    .collect(),
            });
        }
        let mut m = Model {
            sc,
            bug,
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            store: BTreeMap::new(),
            reopened: 0,
            reopened_keys: std::collections::BTreeSet::new(),
            gateways,
            reqs: Vec::new(),
            records: Vec::new(),
            calls: Vec::new(),
            lat: Rng::derive(seed, "fleet-store-latency"),
            counts: Counts::default(),
            health: Vec::new(),
            limit: sc.limit,
            headers: HeaderMap::new(),
        };
        // Arrivals: a Poisson stream over the fleet, each to a random gateway and worker (a
        // load balancer in front, a kernel spreading connections behind it).
        let mut arrivals = Rng::derive(seed, "fleet-arrivals");
        let mean = 1_000_000_000 / sc.rate.max(1);
        let mut t = arrivals.exponential(mean);
        // Bounded: at most rate × duration × 4 requests, whatever the draws.
        let cap = sc
            .rate
            .saturating_mul(sc.duration / MS / 1000 + 1)
            .saturating_mul(4);
        while t < sc.duration && (m.records.len() as u64) < cap {
            let gateway = arrivals.below(u64::from(sc.gateways)) as u32;
            let worker = arrivals.below(u64::from(sc.workers)) as u32;
            let key = if sc.keys == 1 || arrivals.below(100) < u64::from(sc.hot_key_percent) {
                0
            } else {
                1 + arrivals.below(u64::from(sc.keys - 1)) as u32
            };
            let wall_ms = WALL_ORIGIN_MS + t / MS + m.gateways[gateway as usize].skew_ms;
            let id = m.records.len();
            m.records.push(ReqRecord {
                gateway,
                key,
                arrival: t,
                wall_ms,
                answers: Vec::new(),
                decided_wall_ms: None,
                store_state_at_refusal: None,
                reopened: false,
                expired_state_at_refusal: None,
                key_expired_at_refusal: false,
            });
            m.reqs.push(Req {
                worker,
                pending: None,
                now: Now {
                    mono: Nanos(t),
                    wall: UnixMillis(wall_ms),
                },
            });
            m.at(t, Ev::Arrive(id));
            t = t.saturating_add(arrivals.exponential(mean).max(1));
        }
        for g in 0..sc.gateways {
            m.at(PING_EVERY, Ev::Ping(g, 0));
        }
        Ok(m)
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.events.insert((t, self.seq), ev);
    }

    /// Runs every event (bounded: each is handled once and schedules finitely many; the
    /// supervisors stop once the load is over and nothing waits).
    pub(crate) fn run(mut self) -> Outputs {
        let horizon = self
            .sc
            .duration
            .saturating_add(self.sc.outages.iter().map(|o| o.until).max().unwrap_or(0))
            .saturating_add(10 * BACKOFF_MAX);
        while let Some(((t, _), ev)) = self.events.pop_first() {
            self.now = t;
            match ev {
                Ev::Arrive(r) => self.arrive(r),
                Ev::StoreArrive(c) => self.store_arrive(c),
                Ev::CallReturn(c) => self.call_return(c),
                Ev::CallTimeout(c) => self.call_timeout(c),
                Ev::WaiterTimeout(r) => {
                    if self.records[r].answers.is_empty() {
                        self.answer(r, Err(StoreError("no reply within command_timeout".into())));
                    }
                }
                Ev::Ping(g, generation) | Ev::Connect(g, generation) if t > horizon => {
                    let _ = (g, generation);
                }
                Ev::Ping(g, generation) => self.ping(g, generation),
                Ev::PingDone(g, generation, ok) => self.ping_done(g, generation, ok),
                Ev::Connect(g, generation) => self.connect(g, generation),
                Ev::ConnectDone(g, generation, ok) => self.connect_done(g, generation, ok),
            }
        }
        // The run ends with the last answer (the supervisors' idle PINGs after it do not count).
        let end = self
            .records
            .iter()
            .flat_map(|r| r.answers.iter().map(|a| a.0))
            .max()
            .unwrap_or(0);
        self.counts.reopened = self.reopened;
        Outputs {
            requests: self.records,
            counts: self.counts,
            health: self.health,
            end,
        }
    }

    fn leg(&mut self) -> u64 {
        self.lat.range(self.sc.latency_min, self.sc.latency_max)
    }

    /// How a round trip sent at `t` ends: `Some((reaches_store_at, returns_at))` when the
    /// store takes it, `None` for a blackhole; an I/O error is `Some` with `applied` false.
    fn trip(&mut self, t: u64) -> (Option<u64>, u64, bool) {
        let l1 = self.leg();
        let l2 = self.leg();
        let at_store = t.saturating_add(l1);
        match self.sc.outage_at(at_store).map(|o| (o.kind, o.latency)) {
            Some((OutageKind::Down, _)) => (None, at_store.saturating_add(l2), false),
            Some((OutageKind::Blackhole, _)) => (None, u64::MAX, false),
            Some((OutageKind::Slow, extra)) => {
                let run = at_store.saturating_add(extra);
                (Some(run), run.saturating_add(l2), true)
            }
            None => (Some(at_store), at_store.saturating_add(l2), true),
        }
    }

    // -- requests ------------------------------------------------------------------------

    fn arrive(&mut self, r: usize) {
        let g = self.records[r].gateway as usize;
        let key = self.records[r].key;
        let ip = IpAddr::V4(Ipv4Addr::new(
            10,
            0,
            (key / 250) as u8,
            (key % 250 + 1) as u8,
        ));
        let now = self.reqs[r].now;
        let method = Method::GET;
        let view = RequestView {
            method: &method,
            host: None,
            path_and_query: &self.sc.path,
            headers: &self.headers,
            peer: ip,
        };
        let pending = match self.gateways[g].policy.on_request(&view, now) {
            Step::Count(p) => p,
            // The driven route is limited: anything else is a broken scenario, answered as
            // the store failing so that it shows.
            _ => {
                self.records[r]
                    .answers
                    .push((self.now, Outcome::DeniedStoreError));
                return;
            }
        };
        let creq = pending.request().clone();
        self.reqs[r].pending = Some(pending);
        let worker = self.reqs[r].worker as usize;
        let redis_key = creq.redis_key(&self.sc.key_prefix);
        let lane = &mut self.gateways[g].lanes[worker];
        let mut cached = lane.negative.check(&creq.key, &creq.limit, creq.now);
        if cached.is_none() && self.bug == Some(Bug::StaleNegativeCache) {
            // The bug: a refusal that outlives its end by one window.
            if let Some((until, state)) = lane.stale.get(&creq.key.to_string())
                && creq.now.0 < until.0 + self.limit.window_ms
            {
                cached = Some(CounterReply {
                    admitted: false,
                    state: *state,
                });
            }
        }
        if let Some(reply) = cached {
            let live = self.live_state(&redis_key);
            self.records[r].store_state_at_refusal = Some(live);
            if live.is_none() {
                self.records[r].expired_state_at_refusal =
                    self.store.get(&redis_key).map(|(s, _)| *s);
            }
            self.records[r].key_expired_at_refusal =
                self.records[r].expired_state_at_refusal.is_some()
                    || self.reopened_keys.contains(&redis_key);
            self.answer(r, Ok(reply));
            return;
        }
        if self.gateways[g].health != Health::Up {
            self.counts.failed_fast += 1;
            self.answer(r, Err(StoreError("redis unavailable".into())));
            return;
        }
        if self.bug != Some(Bug::NoWaiterTimeout) {
            self.at(
                self.now.saturating_add(self.sc.command_timeout),
                Ev::WaiterTimeout(r),
            );
        }
        let lane = &mut self.gateways[g].lanes[worker];
        match lane.queues.get_mut(&redis_key) {
            Some(waiting) => waiting.push(r),
            None => {
                lane.queues.insert(redis_key.clone(), vec![r]);
                self.pump(g as u32, worker as u32, &redis_key);
            }
        }
    }

    /// The store's state for `redis_key` as it stands now (expired keys are gone).
    fn live_state(&self, redis_key: &str) -> Option<CounterState> {
        let store_now = WALL_ORIGIN_MS + self.now / MS;
        self.store
            .get(redis_key)
            .filter(|(_, exp)| *exp > store_now)
            .map(|(s, _)| *s)
    }

    /// Answers request `r` through the gateway's `on_counter`.
    fn answer(&mut self, r: usize, reply: Result<CounterReply, StoreError>) {
        let g = self.records[r].gateway as usize;
        let failed = reply.is_err();
        let outcome = match self.reqs[r].pending.take() {
            None => {
                // Answered before: record the duplicate so the checker sees it.
                Outcome::DeniedStoreError
            }
            Some(p) => {
                let cached = self.records[r].store_state_at_refusal.is_some();
                match self.gateways[g]
                    .policy
                    .on_counter(p, reply, self.reqs[r].now)
                {
                    Ok(_) if failed => Outcome::AdmittedUnchecked,
                    Ok(_) => Outcome::Admitted,
                    Err(rep) if rep.status.as_u16() == 429 && cached => Outcome::CachedRefusal,
                    Err(rep) if rep.status.as_u16() == 429 => Outcome::Limited,
                    Err(_) => Outcome::DeniedStoreError,
                }
            }
        };
        self.records[r].answers.push((self.now, outcome));
    }

    /// The key's pump: the next batch of its queue goes out as one call, or the queue ends.
    fn pump(&mut self, g: u32, w: u32, redis_key: &str) {
        // Bounded: every round either sends a call (and returns) or answers the whole batch.
        for _ in 0..=self.records.len() {
            let records = &self.records;
            let lane = &mut self.gateways[g as usize].lanes[w as usize];
            let Some(waiting) = lane.queues.get_mut(redis_key) else {
                return;
            };
            waiting.retain(|&r| records[r].answers.is_empty());
            if waiting.is_empty() {
                lane.queues.remove(redis_key);
                return;
            }
            let batch = std::mem::take(waiting);
            let now = batch
                .iter()
                .map(|&r| self.reqs[r].now.wall)
                .max()
                .unwrap_or(UnixMillis(0));
            let n = batch.len() as u64;
            self.counts.coalesced += n - 1;
            if self.gateways[g as usize].health != Health::Up {
                for r in batch {
                    self.answer(r, Err(StoreError("redis unavailable".into())));
                }
                continue;
            }
            self.counts.calls += 1;
            self.counts.max_batch = self.counts.max_batch.max(n);
            let lane = &mut self.gateways[g as usize].lanes[w as usize];
            if lane.in_flight > 0 {
                self.counts.pipelined += 1;
            }
            lane.in_flight += 1;
            let (store_at, returns, _) = self.trip(self.now);
            let c = self.calls.len();
            self.calls.push(Call {
                gateway: g,
                worker: w,
                redis_key: redis_key.to_owned(),
                waiters: batch,
                now,
                epoch: self.gateways[g as usize].epoch,
                l2: returns.saturating_sub(store_at.unwrap_or(returns)),
                result: None,
                applied: false,
                done: false,
            });
            match store_at {
                Some(s) => self.at(s, Ev::StoreArrive(c)),
                None if returns != u64::MAX => {
                    self.calls[c].result = Some(Err(()));
                    self.at(returns, Ev::CallReturn(c));
                }
                None => {}
            }
            self.at(
                self.now.saturating_add(self.sc.command_timeout),
                Ev::CallTimeout(c),
            );
            return;
        }
    }

    /// The call reaches the store: `step_batch`, atomically, on the store's state.
    fn store_arrive(&mut self, c: usize) {
        let store_now = WALL_ORIGIN_MS + self.now / MS;
        let call = &self.calls[c];
        let n = call.waiters.len() as u64;
        let prev = self.live_state(&call.redis_key);
        let reopened = prev.is_none() && self.store.contains_key(&call.redis_key);
        // This call, or one before it, found the key expired before its window's end.
        let counts_reopened = reopened || self.reopened_keys.contains(&call.redis_key);
        let (batch, ttl) = step_batch(&self.limit, prev, call.now, n);
        let kept = match (self.bug, batch.before) {
            (
                Some(Bug::BatchAdmitsAll),
                CounterState::Fixed {
                    window_start,
                    count,
                },
            ) => CounterState::Fixed {
                window_start,
                count: count + n,
            },
            _ => batch.state(),
        };
        let key = call.redis_key.clone();
        let returns = self.now.saturating_add(call.l2);
        self.store
            .insert(key, (kept, store_now.saturating_add(ttl)));
        let call = &mut self.calls[c];
        call.result = Some(Ok(batch));
        call.applied = true;
        let decided = call.now.0;
        for &r in &call.waiters {
            self.records[r].decided_wall_ms = Some(decided);
            self.records[r].reopened = counts_reopened;
        }
        self.reopened += u64::from(reopened);
        if reopened {
            self.reopened_keys.insert(self.calls[c].redis_key.clone());
        }
        self.at(returns, Ev::CallReturn(c));
    }

    fn finish_call(&mut self, c: usize) {
        let call = &mut self.calls[c];
        call.done = true;
        let (g, w) = (call.gateway, call.worker);
        let key = call.redis_key.clone();
        self.gateways[g as usize].lanes[w as usize].in_flight -= 1;
        self.pump(g, w, &key);
    }

    fn call_return(&mut self, c: usize) {
        if self.calls[c].done {
            return; // timed out first: the reply is dropped with the future
        }
        let result = self.calls[c].result.take();
        let waiters = std::mem::take(&mut self.calls[c].waiters);
        let (g, w) = (self.calls[c].gateway, self.calls[c].worker);
        match result {
            Some(Ok(batch)) => {
                let call = &self.calls[c];
                let creq_key = self.reqs[waiters[0]]
                    .pending
                    .as_ref()
                    .map(|p| p.request().key.clone());
                let state = batch.state();
                let lane = &mut self.gateways[g as usize].lanes[w as usize];
                if let Some(k) = &creq_key {
                    lane.negative.record(k, &self.limit, &state, call.now);
                    if self.bug == Some(Bug::StaleNegativeCache)
                        && let Some(rf) =
                            aegis_policy::ratelimit::refusal(&self.limit, &state, call.now)
                    {
                        lane.stale.insert(k.to_string(), (rf.until, state));
                    }
                }
                for (i, r) in waiters.into_iter().enumerate() {
                    if self.records[r].answers.is_empty() {
                        let mut reply = batch.reply(i as u64);
                        if self.bug == Some(Bug::BatchAdmitsAll) {
                            reply.admitted = true;
                        }
                        self.answer(r, Ok(reply));
                    }
                }
            }
            _ => {
                self.counts.call_errors += 1;
                let epoch = self.calls[c].epoch;
                self.lost(g, epoch, "connection refused");
                for r in waiters {
                    if self.records[r].answers.is_empty() {
                        self.answer(r, Err(StoreError("redis: connection refused".into())));
                    }
                }
            }
        }
        self.finish_call(c);
    }

    fn call_timeout(&mut self, c: usize) {
        if self.calls[c].done {
            return; // answered first
        }
        self.counts.timeouts += 1;
        if self.calls[c].applied {
            self.counts.applied_after_timeout += 1;
        }
        let g = self.calls[c].gateway;
        let epoch = self.calls[c].epoch;
        let waiters = std::mem::take(&mut self.calls[c].waiters);
        self.lost(g, epoch, "no reply within command_timeout");
        for r in waiters {
            if self.records[r].answers.is_empty() {
                self.answer(r, Err(StoreError("redis: no reply".into())));
            }
        }
        self.finish_call(c);
    }

    // -- health --------------------------------------------------------------------------

    /// A connection of `epoch` failed: a new outage unless one was noticed since.
    fn lost(&mut self, g: u32, epoch: u64, why: &str) {
        if self.gateways[g as usize].epoch != epoch {
            return;
        }
        self.mark_down(g, why);
        let gw = &mut self.gateways[g as usize];
        if gw.idle {
            // The supervisor was waiting between PINGs: woken, it reconnects now.
            gw.idle = false;
            gw.generation += 1;
            let generation = gw.generation;
            self.at(self.now, Ev::Connect(g, generation));
        }
    }

    fn mark_down(&mut self, g: u32, why: &str) {
        let gw = &mut self.gateways[g as usize];
        if gw.health != Health::Down {
            gw.health = Health::Down;
            gw.epoch += 1;
            gw.down_since = self.now;
            self.health.push(HealthLog {
                t_ms: self.now / MS,
                gateway: g,
                event: "down",
                why: why.to_owned(),
            });
        }
    }

    fn mark_up(&mut self, g: u32) {
        let gw = &mut self.gateways[g as usize];
        if gw.health == Health::Down {
            self.health.push(HealthLog {
                t_ms: self.now / MS,
                gateway: g,
                event: "up",
                why: format!("outage_ms {}", (self.now - gw.down_since) / MS),
            });
        }
        gw.health = Health::Up;
    }

    fn ping(&mut self, g: u32, generation: u64) {
        if self.gateways[g as usize].generation != generation {
            return;
        }
        self.gateways[g as usize].idle = false;
        self.counts.pings += 1;
        let (_, returns, ok) = self.trip(self.now);
        let deadline = self.now.saturating_add(self.sc.command_timeout);
        let (t, ok) = if returns <= deadline {
            (returns, ok)
        } else {
            (deadline, false)
        };
        self.at(t, Ev::PingDone(g, generation, ok));
    }

    fn ping_done(&mut self, g: u32, generation: u64, ok: bool) {
        if self.gateways[g as usize].generation != generation {
            return;
        }
        let gw = &self.gateways[g as usize];
        let conn_epoch = gw.conn_epoch;
        if !ok {
            self.gateways[g as usize].idle = true;
            self.lost(g, conn_epoch, "PING failed");
            if self.gateways[g as usize].idle {
                // An outage noticed already: the connection is dropped, reconnect.
                self.reconnect_now(g);
            }
        } else if gw.epoch == conn_epoch {
            let gw = &mut self.gateways[g as usize];
            gw.idle = true;
            let generation = gw.generation;
            self.at(self.now.saturating_add(PING_EVERY), Ev::Ping(g, generation));
        } else {
            self.reconnect_now(g);
        }
    }

    fn reconnect_now(&mut self, g: u32) {
        let gw = &mut self.gateways[g as usize];
        gw.idle = false;
        gw.generation += 1;
        let generation = gw.generation;
        self.at(self.now, Ev::Connect(g, generation));
    }

    fn connect(&mut self, g: u32, generation: u64) {
        if self.gateways[g as usize].generation != generation {
            return;
        }
        self.counts.connects += 1;
        self.gateways[g as usize].conn_epoch = self.gateways[g as usize].epoch;
        let (_, returns, ok) = self.trip(self.now);
        let deadline = self
            .now
            .saturating_add(self.sc.command_timeout.max(CONNECT_TIMEOUT_MIN));
        let (t, ok) = if returns <= deadline {
            (returns, ok)
        } else {
            (deadline, false)
        };
        self.at(t, Ev::ConnectDone(g, generation, ok));
    }

    fn connect_done(&mut self, g: u32, generation: u64, ok: bool) {
        if self.gateways[g as usize].generation != generation {
            return;
        }
        if ok {
            self.mark_up(g);
            let gw = &mut self.gateways[g as usize];
            gw.backoff = BACKOFF_MIN;
            gw.idle = true;
            let generation = gw.generation;
            self.at(self.now.saturating_add(PING_EVERY), Ev::Ping(g, generation));
        } else {
            self.mark_down(g, "connect failed");
            let gw = &mut self.gateways[g as usize];
            let wait = gw.backoff;
            gw.backoff = (gw.backoff * 2).min(BACKOFF_MAX);
            let generation = gw.generation;
            self.at(self.now.saturating_add(wait), Ev::Connect(g, generation));
        }
    }
}
