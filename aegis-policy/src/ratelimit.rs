//! Rate limiting: one pure step per algorithm, and the stores that apply it atomically.
//!
//! The maths is separate from the storage (governor's `measure_and_replace`): [`step`] takes the
//! stored state and `now` and returns the new state and whether the request was admitted;
//! [`decide`] turns that reply into the headers a client sees. [`MemoryStore`] runs `step` under
//! `&mut self`; the Redis store runs [`REDIS_SCRIPT`], which mirrors [`step_batch`] (that is,
//! `step` applied `n` times in a row), and a test (tests/redis_parity.rs) feeds both the same
//! inputs.
//!
//! Two decisions serve a store shared by many gateways without giving up exactness:
//! [`step_batch`] decides `n` requests for one key in one atomic step (a gateway coalesces the
//! concurrent requests of a key into one Redis call and hands each its place in line with
//! [`Batch::reply`]), and [`refusal`] says until when a key is certain to refuse every request,
//! so that a [`NegativeCache`] can answer those locally. Neither ever admits a request the
//! sequential step would refuse.
//!
//! Time here is wall time ([`UnixMillis`]): a Redis shared by several gateways needs one clock.
//!
//! ## Algorithms and their bounds
//!
//! * `fixed_window` (the seed's counter): windows are aligned to the Unix epoch
//!   (`[k·window, (k+1)·window)`); at most `max` requests are admitted per key per window.
//!   Denied requests do not count. A burst of `2·max` can straddle a window edge.
//! * `gcra` (generic cell rate algorithm, a smooth "sliding" limit): each admission costs
//!   `T = window / max` (in whole microseconds, rounded down) of credit, and up to `max` may be
//!   spent at once. In any interval of length `L`, at most `max + ceil(L / T) - 1` requests are
//!   admitted, so at most `2·max - 1` per `window`, and the long-run rate is `max / window`.
//!   Denials carry the exact wait until the next admission.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{LimitAlgorithm, LimitConfig};
use crate::time::{UnixMillis, duration_millis};

/// Whose budget a request spends, within a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientKey {
    Ip(IpAddr),
    User(Arc<str>),
    Header(Arc<str>),
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::Ip(ip) => write!(f, "ip:{ip}"),
            ClientKey::User(u) => write!(f, "user:{u}"),
            ClientKey::Header(h) => write!(f, "header:{h}"),
        }
    }
}

/// One counter: a route (by name, so it survives a reload that reorders routes) and a client.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    pub route: Arc<str>,
    pub client: ClientKey,
}

impl fmt::Display for CounterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}", self.route, self.client)
    }
}

/// A route's limit in the units the step uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    pub algorithm: LimitAlgorithm,
    pub max: u64,
    pub window_ms: u64,
}

impl Limit {
    pub fn from_config(c: &LimitConfig) -> Limit {
        Limit {
            algorithm: c.algorithm,
            max: c.max,
            window_ms: duration_millis(c.window).max(1),
        }
    }

    /// GCRA emission interval in microseconds (at least 1).
    fn interval_us(&self) -> u64 {
        (self.window_ms.saturating_mul(1000) / self.max.max(1)).max(1)
    }

    /// Start of the fixed window holding `now`.
    pub fn window_start(&self, now: UnixMillis) -> u64 {
        now.0 - now.0 % self.window_ms
    }
}

/// The state a store keeps per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterState {
    /// Admissions so far in the window starting at `window_start` (Unix ms).
    Fixed { window_start: u64, count: u64 },
    /// GCRA theoretical arrival time, Unix microseconds.
    Gcra { tat_us: u64 },
}

/// What the counter store is asked to do: apply `limit` for `key` at `now`, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterRequest {
    pub key: CounterKey,
    pub limit: Limit,
    pub now: UnixMillis,
}

/// What a store answers: whether it admitted, and the state after the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterReply {
    pub admitted: bool,
    pub state: CounterState,
}

/// The counter store could not answer (unreachable, timed out, full). `on_store_error` decides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate-limit store: {0}")]
pub struct StoreError(pub String);

/// How long a store keeps a counter past the instant it stops mattering: a whole window, and
/// at least 2 s (a call is late by at most its queueing and `command_timeout`, 250 ms by
/// default, plus a clock skew of milliseconds).
fn late_call_slack(limit: &Limit) -> u64 {
    limit.window_ms.max(2_000)
}

/// What a store that no call reaches late (this process's memory store) keeps of a TTL that
/// [`step`] gave: the instant the state stops mattering, without [`late_call_slack`].
fn local_ttl(limit: &Limit, ttl: u64) -> u64 {
    ttl.saturating_sub(late_call_slack(limit)).max(1)
}

/// How long a fixed window's counter is kept: [`late_call_slack`] after its window ends.
/// The store counts TTLs on its own clock from the moment a call arrives, and a call may arrive
/// late (queued behind its key's call, a slow network, a gateway whose clock runs behind its
/// peers'): a key that expired at its window's end would be found missing by such a call,
/// which would start the window's count again and admit up to `2·max` in it. A window's key
/// names its window, so keeping it longer never carries a count into the next window. (Found
/// by the fleet simulator: `aegis-sim/tests/fleet.rs`.)
fn fixed_ttl(limit: &Limit, start: u64, now: UnixMillis) -> u64 {
    (start + limit.window_ms + late_call_slack(limit))
        .saturating_sub(now.0)
        .max(1)
}

/// How long a GCRA state (its TAT) is kept: [`late_call_slack`] past the instant it stops mattering
/// (`tat`), for the same late calls as [`fixed_ttl`]; a TAT in the past is harmless (the step
/// takes the later of it and now).
fn gcra_ttl(limit: &Limit, tat_us: u64, now_us: u64) -> u64 {
    (tat_us.saturating_sub(now_us).div_ceil(1000) + late_call_slack(limit)).max(1)
}

/// The pure step. `prev` is the stored state, if any and not expired. Returns the reply and how
/// long a shared store must keep the new state (its TTL, with [`late_call_slack`]; the memory
/// store keeps it without).
pub fn step(limit: &Limit, prev: Option<CounterState>, now: UnixMillis) -> (CounterReply, u64) {
    match limit.algorithm {
        LimitAlgorithm::FixedWindow => {
            let start = limit.window_start(now);
            let count = match prev {
                Some(CounterState::Fixed {
                    window_start,
                    count,
                }) if window_start == start => count,
                _ => 0,
            };
            let admitted = count < limit.max;
            let count = if admitted { count + 1 } else { count };
            let ttl = fixed_ttl(limit, start, now);
            (
                CounterReply {
                    admitted,
                    state: CounterState::Fixed {
                        window_start: start,
                        count,
                    },
                },
                ttl,
            )
        }
        LimitAlgorithm::Gcra => {
            let now_us = now.0.saturating_mul(1000);
            let t = limit.interval_us();
            let burst = t.saturating_mul(limit.max);
            let tat = match prev {
                Some(CounterState::Gcra { tat_us }) => tat_us.max(now_us),
                _ => now_us,
            };
            let new_tat = tat.saturating_add(t);
            if new_tat - now_us <= burst {
                let ttl = gcra_ttl(limit, new_tat, now_us);
                (
                    CounterReply {
                        admitted: true,
                        state: CounterState::Gcra { tat_us: new_tat },
                    },
                    ttl,
                )
            } else {
                let ttl = gcra_ttl(limit, tat, now_us);
                (
                    CounterReply {
                        admitted: false,
                        state: CounterState::Gcra { tat_us: tat },
                    },
                    ttl,
                )
            }
        }
    }
}

/// `n` requests for one key, decided together at one `now`: exactly what `n` calls of [`step`]
/// in a row would decide, in O(1). The first [`Batch::admitted`] of them in line are admitted
/// and the rest refused; the stored state moves as the sequential steps would move it (refused
/// requests do not count).
///
/// This is what lets a gateway coalesce the concurrent requests of one key into one store call
/// (one `INCRBY`-like step instead of `n` round trips) without admitting more: across gateways
/// each batch is atomic in the store, so two batches see each other's admissions as `n`
/// sequential requests would.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Requests decided together.
    pub n: u64,
    /// How many of them, the first in line, are admitted.
    pub admitted: u64,
    /// The state before the first of them (a fixed window's count in *this* window; a GCRA TAT
    /// no earlier than `now`).
    pub before: CounterState,
    /// GCRA emission interval, microseconds (unused for fixed windows).
    interval_us: u64,
}

impl Batch {
    /// The reply the `i`-th request of the batch (0-based, `i < n`) gets: the one the `i`-th of
    /// `n` sequential steps would return.
    pub fn reply(&self, i: u64) -> CounterReply {
        let admitted = i < self.admitted;
        // Admissions up to and including this request.
        let done = if admitted { i + 1 } else { self.admitted };
        CounterReply {
            admitted,
            state: self.after(done),
        }
    }

    /// The state once the whole batch is applied (what the store keeps).
    pub fn state(&self) -> CounterState {
        self.after(self.admitted)
    }

    fn after(&self, admissions: u64) -> CounterState {
        match self.before {
            CounterState::Fixed {
                window_start,
                count,
            } => CounterState::Fixed {
                window_start,
                count: count.saturating_add(admissions),
            },
            CounterState::Gcra { tat_us } => CounterState::Gcra {
                tat_us: tat_us.saturating_add(admissions.saturating_mul(self.interval_us)),
            },
        }
    }
}

/// Decides `n` requests for one key at `now` from the stored state `prev` (see [`Batch`]).
/// Returns the batch and how long the new state must be kept (its TTL, at least 1 ms): the
/// same as [`step`] gives for its last request.
pub fn step_batch(
    limit: &Limit,
    prev: Option<CounterState>,
    now: UnixMillis,
    n: u64,
) -> (Batch, u64) {
    match limit.algorithm {
        LimitAlgorithm::FixedWindow => {
            let start = limit.window_start(now);
            let count = match prev {
                Some(CounterState::Fixed {
                    window_start,
                    count,
                }) if window_start == start => count,
                _ => 0,
            };
            let admitted = n.min(limit.max.saturating_sub(count));
            let ttl = fixed_ttl(limit, start, now);
            let batch = Batch {
                n,
                admitted,
                before: CounterState::Fixed {
                    window_start: start,
                    count,
                },
                interval_us: 0,
            };
            (batch, ttl)
        }
        LimitAlgorithm::Gcra => {
            let now_us = now.0.saturating_mul(1000);
            let t = limit.interval_us();
            let burst = t.saturating_mul(limit.max);
            let tat = match prev {
                Some(CounterState::Gcra { tat_us }) => tat_us.max(now_us),
                _ => now_us,
            };
            // The k-th request is admitted iff (tat - now) + k·T <= burst.
            let room = burst.saturating_sub(tat - now_us);
            let admitted = n.min(room / t);
            let keep = tat.saturating_add(admitted.saturating_mul(t));
            let ttl = gcra_ttl(limit, keep, now_us);
            let batch = Batch {
                n,
                admitted,
                before: CounterState::Gcra { tat_us: tat },
                interval_us: t,
            };
            (batch, ttl)
        }
    }
}

/// A key that refuses every request from `from` (inclusive) until `until` (exclusive), Unix
/// ms, whatever other gateways sharing the store do meanwhile: see [`refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The state to answer with (the last one the store returned).
    pub state: CounterState,
    pub from: UnixMillis,
    pub until: UnixMillis,
}

impl Refusal {
    /// The store's answer for a request at `now`, if this refusal covers it.
    pub fn answer(&self, now: UnixMillis) -> Option<CounterReply> {
        (self.from <= now && now < self.until).then_some(CounterReply {
            admitted: false,
            state: self.state,
        })
    }
}

/// From the last state a store returned for a key (`state`, seen at `now`): the interval in
/// which the store is certain to refuse that key, if there is one still to come.
///
/// Sound for any number of gateways because a key's state only ever moves toward refusal until
/// its window ends: a fixed window's count only grows (and is refused once it reaches `max`,
/// until the window's end), a GCRA TAT only grows (and a request at `t` is refused while
/// `t < tat + T - burst`). Other gateways' requests can only push both further. So a locally
/// cached refusal never refuses what the store would admit; it only saves the round trip.
pub fn refusal(limit: &Limit, state: &CounterState, now: UnixMillis) -> Option<Refusal> {
    let (from, until) = match *state {
        CounterState::Fixed {
            window_start,
            count,
        } => {
            if count < limit.max {
                return None;
            }
            (window_start, window_start.saturating_add(limit.window_ms))
        }
        CounterState::Gcra { tat_us } => {
            let t = limit.interval_us();
            let burst = t.saturating_mul(limit.max);
            // First millisecond at which tat + T - now_us <= burst.
            (
                0,
                tat_us
                    .saturating_add(t)
                    .saturating_sub(burst)
                    .div_ceil(1000),
            )
        }
    };
    (until > now.0).then_some(Refusal {
        state: *state,
        from: UnixMillis(from),
        until: UnixMillis(until),
    })
}

/// A bounded map of keys known to be over their limit ([`refusal`]), so that their requests
/// are refused without a store round trip until their window ends. Keyed by counter and limit:
/// a reload that changes a route's limit never answers from the old one. When full, expired
/// entries are dropped first; a new refusal that still does not fit is not cached (the store
/// answers it, as it would without a cache).
#[derive(Debug)]
pub struct NegativeCache<S> {
    map: HashMap<CounterKey, (Limit, Refusal), S>,
    max_keys: usize,
}

impl<S: BuildHasher> NegativeCache<S> {
    pub fn with_hasher(max_keys: usize, hasher: S) -> Self {
        NegativeCache {
            map: HashMap::with_hasher(hasher),
            max_keys: max_keys.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The store's certain answer for `key` under `limit` at `now`, if cached.
    pub fn check(
        &mut self,
        key: &CounterKey,
        limit: &Limit,
        now: UnixMillis,
    ) -> Option<CounterReply> {
        if self.map.is_empty() {
            return None;
        }
        let (l, r) = self.map.get(key)?;
        if l == limit {
            if let Some(reply) = r.answer(now) {
                return Some(reply);
            }
            if now < r.from {
                // A clock that went back: keep the entry, ask the store.
                return None;
            }
        }
        self.map.remove(key);
        None
    }

    /// Learns from the state the store returned for `key` at `now`.
    pub fn record(
        &mut self,
        key: &CounterKey,
        limit: &Limit,
        state: &CounterState,
        now: UnixMillis,
    ) {
        let Some(r) = refusal(limit, state, now) else {
            if !self.map.is_empty() {
                self.map.remove(key);
            }
            return;
        };
        if let Some(slot) = self.map.get_mut(key) {
            *slot = (*limit, r);
            return;
        }
        if self.map.len() >= self.max_keys {
            self.map.retain(|_, (_, r)| r.until > now);
            if self.map.len() >= self.max_keys {
                return;
            }
        }
        self.map.insert(key.clone(), (*limit, r));
    }
}

/// The outcome a client sees: the IETF `RateLimit-*` fields and, on denial, `Retry-After`.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Time until the budget is whole again.
    pub reset: Duration,
    /// Time until a request would be admitted (denials only).
    pub retry_after: Option<Duration>,
}

/// Turns a store's reply into the client-facing decision.
pub fn decide(limit: &Limit, reply: &CounterReply, now: UnixMillis) -> RateDecision {
    match reply.state {
        CounterState::Fixed {
            window_start,
            count,
        } => {
            let reset =
                Duration::from_millis((window_start + limit.window_ms).saturating_sub(now.0));
            RateDecision {
                allowed: reply.admitted,
                limit: limit.max,
                remaining: limit.max.saturating_sub(count),
                reset,
                retry_after: (!reply.admitted).then_some(reset),
            }
        }
        CounterState::Gcra { tat_us } => {
            let now_us = now.0.saturating_mul(1000);
            let t = limit.interval_us();
            let burst = t.saturating_mul(limit.max);
            let used = tat_us.saturating_sub(now_us);
            let remaining = burst.saturating_sub(used) / t;
            let retry_after =
                (!reply.admitted).then(|| Duration::from_micros((used + t).saturating_sub(burst)));
            RateDecision {
                allowed: reply.admitted,
                limit: limit.max,
                remaining,
                reset: Duration::from_micros(used),
                retry_after,
            }
        }
    }
}

/// A counter store that answers synchronously (in memory, in the simulator). The async Redis
/// store lives in aegis-tokio and is driven through the pipeline's counter requests instead.
pub trait CounterStore {
    fn apply(&mut self, req: &CounterRequest) -> Result<CounterReply, StoreError>;
}

/// A bounded in-memory store. Expired keys are swept at most once per `SWEEP_EVERY_MS` of wall
/// time. A new key in a full store evicts the oldest key (first counted): memory never grows
/// past `max_keys`, and a client rotating keys costs only the oldest counters their state
/// (those clients start a fresh window), never a store error for everyone.
///
/// The hasher is injected: the gateway passes a randomly seeded one (client-chosen keys must not
/// be able to force collisions), the simulator a fixed one.
#[derive(Debug)]
pub struct MemoryStore<S> {
    map: HashMap<CounterKey, (CounterState, u64), S>,
    /// Keys in the order they were first counted (a key swept or evicted may linger here
    /// until it reaches the front or the next sweep prunes it).
    order: VecDeque<CounterKey>,
    max_keys: usize,
    next_sweep: u64,
    evicted: u64,
}

const SWEEP_EVERY_MS: u64 = 1000;

impl<S: BuildHasher> MemoryStore<S> {
    pub fn with_hasher(max_keys: usize, hasher: S) -> Self {
        MemoryStore {
            map: HashMap::with_hasher(hasher),
            order: VecDeque::new(),
            max_keys: max_keys.max(1),
            next_sweep: 0,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Live keys evicted to make room for new ones, since the store was made.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn sweep(&mut self, now: u64) {
        self.map.retain(|_, (_, expires)| *expires > now);
        let map = &self.map;
        self.order.retain(|k| map.contains_key(k));
        self.next_sweep = now.saturating_add(SWEEP_EVERY_MS);
    }

    /// Removes the oldest key still in the map.
    fn evict_oldest(&mut self) {
        while let Some(k) = self.order.pop_front() {
            if self.map.remove(&k).is_some() {
                self.evicted += 1;
                return;
            }
        }
    }
}

impl<S: BuildHasher> CounterStore for MemoryStore<S> {
    fn apply(&mut self, req: &CounterRequest) -> Result<CounterReply, StoreError> {
        let now = req.now.0;
        if now >= self.next_sweep {
            self.sweep(now);
        }
        // A live key is updated in place: one lookup, no key clone.
        if let Some((state, expires)) = self.map.get_mut(&req.key) {
            let prev = (*expires > now).then_some(*state);
            let (reply, ttl) = step(&req.limit, prev, req.now);
            *state = reply.state;
            *expires = now.saturating_add(local_ttl(&req.limit, ttl));
            return Ok(reply);
        }
        if self.map.len() >= self.max_keys {
            self.evict_oldest();
        }
        let (reply, ttl) = step(&req.limit, None, req.now);
        let expires = now.saturating_add(local_ttl(&req.limit, ttl));
        self.map.insert(req.key.clone(), (reply.state, expires));
        self.order.push_back(req.key.clone());
        Ok(reply)
    }
}

/// A fixed, seedless hasher (FNV-1a) for deterministic runs: the simulator and tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedHasher;

#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

impl BuildHasher for FixedHasher {
    type Hasher = Fnv;
    fn build_hasher(&self) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

// ---------------------------------------------------------------------------------------------
// The Redis mirror of `step_batch`: kept here, beside the code it mirrors, as data. The adapter
// sends it with EVALSHA; it must not decide anything the pure step would decide differently.

/// KEYS[1] = the counter's key ([`CounterRequest::redis_key`]: a fixed window's key names its
/// window, so the script touches exactly the one key it is given, as Redis Cluster requires).
/// ARGV = algorithm (0 fixed, 1 gcra), max, window_ms, now_ms, n (requests decided together).
/// Returns `{admitted, a, b}`: how many of the `n` were admitted (the first in line), and the
/// state *before* them: fixed → `{window_start_ms, count}`, gcra → the TAT no earlier than now,
/// split as `{tat_us_high, tat_us_low}` (so no reply value nears 2^53). [`step_batch`] from that
/// state gives every request's reply.
pub const REDIS_SCRIPT: &str = r#"
local alg = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
if alg == 0 then
  local start = now - (now % window)
  local count = tonumber(redis.call('GET', KEYS[1]) or '0')
  local admitted = 0
  if count < max then
    admitted = math.min(n, max - count)
    redis.call('INCRBY', KEYS[1], admitted)
  end
  local ttl = start + window + math.max(window, 2000) - now
  if ttl < 1 then ttl = 1 end
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {admitted, start, count}
else
  local now_us = now * 1000
  local t = math.floor(window * 1000 / max)
  if t < 1 then t = 1 end
  local burst = t * max
  local tat = now_us
  local stored = redis.call('GET', KEYS[1])
  if stored then
    local s = tonumber(stored)
    if s > tat then tat = s end
  end
  local admitted = 0
  local room = burst - (tat - now_us)
  if room > 0 then admitted = math.min(n, math.floor(room / t)) end
  local keep = tat + admitted * t
  local ttl = math.ceil((keep - now_us) / 1000) + math.max(window, 2000)
  if ttl < 1 then ttl = 1 end
  redis.call('SET', KEYS[1], string.format('%.0f', keep), 'PX', ttl)
  local high = math.floor(tat / 1000000)
  return {admitted, high, tat - high * 1000000}
end
"#;

impl CounterRequest {
    /// The Redis key of this request's counter: `<prefix>{<route>|<client>}`, and for a fixed
    /// window `:<window start>` after it. The braces are a Redis Cluster hash tag: every key of
    /// one counter (each window of it) lives in one slot.
    pub fn redis_key(&self, prefix: &str) -> String {
        use std::fmt::Write;
        let mut key = String::with_capacity(prefix.len() + self.key.route.len() + 48);
        let _ = write!(key, "{prefix}{{{}}}", self.key);
        if self.limit.algorithm == LimitAlgorithm::FixedWindow {
            let _ = write!(key, ":{}", self.limit.window_start(self.now));
        }
        key
    }

    /// The script's key and arguments for `n` requests like this one decided together.
    pub fn redis_call(&self, prefix: &str, n: u64) -> (String, [u64; 5]) {
        let alg = match self.limit.algorithm {
            LimitAlgorithm::FixedWindow => 0,
            LimitAlgorithm::Gcra => 1,
        };
        let args = [alg, self.limit.max, self.limit.window_ms, self.now.0, n];
        (self.redis_key(prefix), args)
    }

    /// Reads the script's reply to [`CounterRequest::redis_call`] back into the pure model: the
    /// batch [`step_batch`] decides from the state the script saw. A script that admitted a
    /// different number than the step would is an error (the mirror is broken), never trusted.
    pub fn redis_reply(&self, values: &[i64], n: u64) -> Result<Batch, StoreError> {
        let bad = || StoreError(format!("unexpected script reply {values:?}"));
        let [admitted, a, b] = values else {
            return Err(bad());
        };
        let admitted = u64::try_from(*admitted).map_err(|_| bad())?;
        let a = u64::try_from(*a).map_err(|_| bad())?;
        let b = u64::try_from(*b).map_err(|_| bad())?;
        let prev = match self.limit.algorithm {
            LimitAlgorithm::FixedWindow => {
                if a != self.limit.window_start(self.now) {
                    return Err(bad());
                }
                CounterState::Fixed {
                    window_start: a,
                    count: b,
                }
            }
            LimitAlgorithm::Gcra => CounterState::Gcra {
                tat_us: a
                    .checked_mul(1_000_000)
                    .and_then(|v| v.checked_add(b))
                    .ok_or_else(bad)?,
            },
        };
        let (batch, _) = step_batch(&self.limit, Some(prev), self.now, n);
        if batch.admitted != admitted {
            return Err(StoreError(format!(
                "the script admitted {admitted} of {n} where the step admits {}: {values:?}",
                batch.admitted
            )));
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(limit: Limit, key: &str, now: u64) -> CounterRequest {
        CounterRequest {
            key: CounterKey {
                route: "/r".into(),
                client: ClientKey::User(key.into()),
            },
            limit,
            now: UnixMillis(now),
        }
    }

    const FIXED: Limit = Limit {
        algorithm: LimitAlgorithm::FixedWindow,
        max: 10,
        window_ms: 60_000,
    };
    const GCRA: Limit = Limit {
        algorithm: LimitAlgorithm::Gcra,
        max: 10,
        window_ms: 60_000,
    };

    #[test]
    fn seed_fifteen_requests() {
        let mut s = MemoryStore::with_hasher(100, FixedHasher);
        let t0 = 1_800_000_000_000 + 1000;
        let mut out = Vec::new();
        for i in 0..15 {
            let r = req(FIXED, "a", t0 + i);
            let reply = s.apply(&r).unwrap();
            out.push(decide(&FIXED, &reply, r.now));
        }
        assert!(out[..10].iter().all(|d| d.allowed));
        assert!(out[10..].iter().all(|d| !d.allowed));
        assert_eq!(out[0].remaining, 9);
        assert_eq!(out[9].remaining, 0);
        assert_eq!(out[10].retry_after, Some(out[10].reset));
        assert_eq!(out[10].reset, Duration::from_millis(60_000 - 1010));
        // The next window starts fresh.
        let reply = s.apply(&req(FIXED, "a", t0 + 60_000)).unwrap();
        assert!(reply.admitted);
        // Another key has its own budget.
        assert!(s.apply(&req(FIXED, "b", t0 + 20)).unwrap().admitted);
    }

    #[test]
    fn gcra_spacing_and_retry_after() {
        let mut s = MemoryStore::with_hasher(100, FixedHasher);
        let t0 = 1_000_000;
        for i in 0..10 {
            let r = s.apply(&req(GCRA, "a", t0)).unwrap();
            assert!(r.admitted, "burst of max admitted ({i})");
        }
        let r = req(GCRA, "a", t0);
        let denied = s.apply(&r).unwrap();
        let d = decide(&GCRA, &denied, r.now);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(Duration::from_secs(6)));
        assert_eq!(d.remaining, 0);
        assert!(!s.apply(&req(GCRA, "a", t0 + 5_999)).unwrap().admitted);
        assert!(s.apply(&req(GCRA, "a", t0 + 6_000)).unwrap().admitted);
    }

    #[test]
    fn memory_is_bounded_and_swept() {
        let mut s = MemoryStore::with_hasher(50, FixedHasher);
        let short = Limit {
            algorithm: LimitAlgorithm::FixedWindow,
            max: 1,
            window_ms: 100,
        };
        for i in 0..50 {
            assert!(s.apply(&req(short, &format!("k{i}"), 10_000)).is_ok());
        }
        assert_eq!(s.len(), 50);
        // Full of live keys: a new key evicts the oldest (k0), never an error; the rest keep
        // their counts (k1 is over its limit still).
        assert!(s.apply(&req(short, "new", 10_001)).unwrap().admitted);
        assert_eq!((s.len(), s.evicted()), (50, 1));
        assert!(!s.apply(&req(short, "k1", 10_001)).unwrap().admitted);
        // A client rotating keys evicts only the oldest ones, one per new key.
        for i in 0..20 {
            assert!(s.apply(&req(short, &format!("r{i}"), 10_002)).is_ok());
        }
        assert_eq!((s.len(), s.evicted()), (50, 21));
        assert!(
            !s.apply(&req(short, "k30", 10_003)).unwrap().admitted,
            "k30 kept its count"
        );
        // Once they expire, the periodic sweep reclaims them all.
        assert!(s.apply(&req(short, "new2", 11_000)).is_ok());
        assert_eq!(s.len(), 1);
        // Dead keys do not linger past the periodic sweep either.
        let mut s = MemoryStore::with_hasher(10_000, FixedHasher);
        for i in 0..1000 {
            s.apply(&req(short, &format!("k{i}"), 20_000 + i)).unwrap();
        }
        s.apply(&req(short, "x", 25_000)).unwrap();
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn redis_reply_round_trip() {
        let r = req(GCRA, "a", 1_800_000_000_123);
        let tat: u64 = 1_800_000_006_123_456;
        let high = (tat / 1_000_000) as i64;
        let low = (tat % 1_000_000) as i64;
        let batch = r.redis_reply(&[1, high, low], 1).unwrap();
        assert_eq!(batch.before, CounterState::Gcra { tat_us: tat });
        assert_eq!(
            batch.reply(0).state,
            CounterState::Gcra {
                tat_us: tat + 6_000_000
            }
        );
        // 8 more fit in the burst (room 53.99 s at T = 6 s): a script that says otherwise is
        // not believed.
        assert_eq!(r.redis_reply(&[8, high, low], 20).unwrap().admitted, 8);
        assert!(r.redis_reply(&[9, high, low], 20).is_err());
        assert!(r.redis_reply(&[2, 0, 0], 1).is_err());
        assert!(r.redis_reply(&[1, 0], 1).is_err());
        let (key, args) = r.redis_call("aegis:", 3);
        assert_eq!(key, "aegis:{/r|user:a}");
        assert_eq!(args, [1, 10, 60_000, 1_800_000_000_123, 3]);
        // A fixed window's key names its window, inside the counter's hash tag's slot.
        let f = req(FIXED, "a", 1_800_000_000_123);
        assert_eq!(f.redis_key("p:"), "p:{/r|user:a}:1800000000000");
        let batch = f.redis_reply(&[3, 1_800_000_000_000, 7], 5).unwrap();
        assert_eq!(
            batch.state(),
            CounterState::Fixed {
                window_start: 1_800_000_000_000,
                count: 10
            }
        );
        assert!(
            f.redis_reply(&[3, 1_799_999_940_000, 7], 5).is_err(),
            "another window"
        );
    }

    #[test]
    fn negative_cache_follows_limits_and_stays_bounded() {
        let mut c = NegativeCache::with_hasher(2, FixedHasher);
        let t0 = 1_800_000_000_000;
        let full = CounterState::Fixed {
            window_start: t0,
            count: 10,
        };
        let key = |k: &str| req(FIXED, k, t0).key;
        c.record(&key("a"), &FIXED, &full, UnixMillis(t0 + 5));
        assert_eq!(
            c.check(&key("a"), &FIXED, UnixMillis(t0 + 6))
                .map(|r| r.admitted),
            Some(false)
        );
        // The window's end, a changed limit, an earlier window: the store is asked.
        assert!(
            c.check(&key("a"), &FIXED, UnixMillis(t0 + 60_000))
                .is_none()
        );
        assert!(c.is_empty(), "expired entries go");
        c.record(&key("a"), &FIXED, &full, UnixMillis(t0 + 5));
        let raised = Limit { max: 11, ..FIXED };
        assert!(c.check(&key("a"), &raised, UnixMillis(t0 + 6)).is_none());
        c.record(&key("a"), &FIXED, &full, UnixMillis(t0 + 5));
        assert!(c.check(&key("a"), &FIXED, UnixMillis(t0 - 1)).is_none());
        assert_eq!(c.len(), 1, "a clock that went back keeps the entry");
        // Not full: nothing cached; full: no more than max_keys entries.
        let room = CounterState::Fixed {
            window_start: t0,
            count: 9,
        };
        c.record(&key("b"), &FIXED, &room, UnixMillis(t0 + 5));
        assert_eq!(c.len(), 1);
        for k in ["b", "c", "d"] {
            c.record(&key(k), &FIXED, &full, UnixMillis(t0 + 5));
        }
        assert_eq!(c.len(), 2);
        // A key whose store reply has room again is forgotten.
        c.record(&key("a"), &FIXED, &room, UnixMillis(t0 + 7));
        assert!(c.check(&key("a"), &FIXED, UnixMillis(t0 + 8)).is_none());
        // GCRA: refused until the first instant a request fits (tat + T - burst).
        let tat = (t0 + 60_000) * 1000; // a full burst of 10 x 6 s from t0
        let r = refusal(&GCRA, &CounterState::Gcra { tat_us: tat }, UnixMillis(t0)).unwrap();
        assert_eq!(r.until, UnixMillis(t0 + 6_000));
        assert!(
            refusal(
                &GCRA,
                &CounterState::Gcra {
                    tat_us: tat - 6_000_000
                },
                UnixMillis(t0)
            )
            .is_none()
        );
    }

    fn arb_limit(alg: LimitAlgorithm) -> impl Strategy<Value = Limit> {
        (1u64..8, 1u64..5_000).prop_map(move |(max, window_ms)| Limit {
            algorithm: alg,
            max,
            window_ms,
        })
    }

    proptest! {
        /// fixed_window never admits more than `max` per key per aligned window.
        #[test]
        fn fixed_window_bound(limit in arb_limit(LimitAlgorithm::FixedWindow),
                              gaps in prop::collection::vec((0u64..400, 0usize..3), 1..200)) {
            let mut s = MemoryStore::with_hasher(1000, FixedHasher);
            let mut now = 1_000_000u64;
            let mut per_window = std::collections::BTreeMap::new();
            for (gap, k) in gaps {
                now += gap;
                let r = req(limit, &k.to_string(), now);
                if s.apply(&r).unwrap().admitted {
                    *per_window.entry((k, limit.window_start(r.now))).or_insert(0u64) += 1;
                }
            }
            for (w, n) in per_window {
                prop_assert!(n <= limit.max, "window {:?} admitted {}", w, n);
            }
        }

        /// gcra: in any interval of length L, at most max + ceil(L/T) - 1 admissions.
        #[test]
        fn gcra_bound(limit in arb_limit(LimitAlgorithm::Gcra),
                      gaps in prop::collection::vec(0u64..300, 1..200),
                      l_ms in 1u64..10_000) {
            let mut s = MemoryStore::with_hasher(10, FixedHasher);
            let mut now = 1_000_000u64;
            let mut admitted = Vec::new();
            for gap in gaps {
                now += gap;
                if s.apply(&req(limit, "k", now)).unwrap().admitted {
                    admitted.push(now);
                }
            }
            let t_us = limit.interval_us();
            let bound = limit.max + (l_ms * 1000).div_ceil(t_us) - 1;
            for (i, &a) in admitted.iter().enumerate() {
                let n = admitted[i..].iter().take_while(|&&b| b < a + l_ms).count() as u64;
                prop_assert!(n <= bound, "{} admissions in [{}, {}+{}) > {}", n, a, a, l_ms, bound);
            }
        }

        /// A batch of `n` decides exactly what `n` sequential steps at the same `now` decide:
        /// every reply in line, the number admitted (a prefix), the final state and its TTL.
        #[test]
        fn batch_is_n_sequential_steps(alg in prop_oneof![Just(LimitAlgorithm::FixedWindow), Just(LimitAlgorithm::Gcra)],
                                       max in 1u64..12, window_ms in 1u64..5_000,
                                       prev_kind in 0u8..3, count in 0u64..16,
                                       tat_off_us in 0u64..30_000_000,
                                       now_off in 0u64..10_000, n in 1u64..40) {
            let limit = Limit { algorithm: alg, max, window_ms };
            let now = UnixMillis(10_000_000 + now_off);
            let this = limit.window_start(now);
            let prev = match (prev_kind, alg) {
                (0, _) => None,
                (1, LimitAlgorithm::FixedWindow) => Some(CounterState::Fixed { window_start: this, count }),
                (_, LimitAlgorithm::FixedWindow) => Some(CounterState::Fixed { window_start: this.saturating_sub(window_ms), count }),
                // A TAT from 10 s in the past to 20 s ahead.
                (_, LimitAlgorithm::Gcra) => Some(CounterState::Gcra { tat_us: now.0 * 1000 - 10_000_000 + tat_off_us }),
            };
            let (batch, ttl) = step_batch(&limit, prev, now, n);
            let mut state = prev;
            let mut last_ttl = 0;
            let mut admitted = 0;
            for i in 0..n {
                let (r, t) = step(&limit, state, now);
                prop_assert_eq!(batch.reply(i), r, "request {} of {}", i, n);
                prop_assert_eq!(r.admitted, i < batch.admitted, "admitted ones come first");
                state = Some(r.state);
                last_ttl = t;
                admitted += u64::from(r.admitted);
            }
            prop_assert_eq!(batch.admitted, admitted);
            prop_assert_eq!(Some(batch.state()), state);
            prop_assert_eq!(ttl, last_ttl);
        }

        /// Gateways with skewed clocks share one store (one Redis key per fixed window, as the
        /// script keeps them), send batches, and each keeps its own negative cache: a cached
        /// refusal is always what the store would answer, and no fixed window ever admits more
        /// than `max`.
        #[test]
        fn negative_cache_refuses_only_what_the_store_refuses(
            alg in prop_oneof![Just(LimitAlgorithm::FixedWindow), Just(LimitAlgorithm::Gcra)],
            max in 1u64..6, window_ms in 1u64..3_000,
            skew in prop::array::uniform3(0u64..200),
            ops in prop::collection::vec((0usize..3, 0usize..2, 0u64..300, 1u64..6), 1..300)) {
            let limit = Limit { algorithm: alg, max, window_ms };
            let bucket = |now: UnixMillis| match alg {
                LimitAlgorithm::FixedWindow => limit.window_start(now),
                LimitAlgorithm::Gcra => 0,
            };
            let mut store: std::collections::BTreeMap<(usize, u64), CounterState> = Default::default();
            let mut caches: Vec<_> = (0..3).map(|_| NegativeCache::with_hasher(100, FixedHasher)).collect();
            let mut per_window = std::collections::BTreeMap::new();
            let mut clock = 10_000_000u64;
            let mut answered = 0;
            for (g, k, gap, n) in ops {
                clock += gap;
                let now = UnixMillis(clock + skew[g]);
                let key = req(limit, &k.to_string(), now.0).key;
                let slot = (k, bucket(now));
                if let Some(reply) = caches[g].check(&key, &limit, now) {
                    prop_assert!(!reply.admitted);
                    let (b, _) = step_batch(&limit, store.get(&slot).copied(), now, 1);
                    prop_assert_eq!(b.admitted, 0, "cached refusal where the store admits at {}", now.0);
                    prop_assert_eq!(decide(&limit, &reply, now).allowed, false);
                    answered += 1;
                    continue;
                }
                let (b, _) = step_batch(&limit, store.get(&slot).copied(), now, n);
                store.insert(slot, b.state());
                caches[g].record(&key, &limit, &b.state(), now);
                *per_window.entry(slot).or_insert(0u64) += b.admitted;
            }
            if alg == LimitAlgorithm::FixedWindow {
                for (w, admitted) in per_window {
                    prop_assert!(admitted <= max, "window {:?} admitted {}", w, admitted);
                }
            }
            let _ = answered;
        }

        /// Remaining never exceeds the limit, a denial always says when to retry, and a request
        /// made after that wait is admitted.
        #[test]
        fn decisions_are_consistent(alg in prop_oneof![Just(LimitAlgorithm::FixedWindow), Just(LimitAlgorithm::Gcra)],
                                    max in 1u64..6, window_ms in 1u64..3000,
                                    gaps in prop::collection::vec(0u64..200, 1..100)) {
            let limit = Limit { algorithm: alg, max, window_ms };
            let mut s = MemoryStore::with_hasher(10, FixedHasher);
            let mut now = 5_000_000u64;
            for gap in gaps {
                now += gap;
                let r = req(limit, "k", now);
                let reply = s.apply(&r).unwrap();
                let d = decide(&limit, &reply, r.now);
                prop_assert!(d.remaining <= d.limit);
                if !d.allowed {
                    let wait = d.retry_after.expect("denials carry Retry-After");
                    let later = req(limit, "k", now + u64::try_from(wait.as_millis()).unwrap() + 1);
                    let mut probe = MemoryStore::with_hasher(10, FixedHasher);
                    probe.map = s.map.clone();
                    prop_assert!(probe.apply(&later).unwrap().admitted);
                }
            }
        }
    }
}
