//! The circuit breaker of one (route, target): a state machine driven by admissions, outcomes
//! and time, all passed in.
//!
//! ```text
//!                 success: failures = 0
//!                 failure: failures += 1
//!                    ┌──────┐
//!                    │      ▼
//!              ┌────────────────┐   failures reach failure_threshold    ┌──────────────┐
//!   start ───▶ │     CLOSED     │ ────────────────────────────────────▶ │     OPEN     │
//!              └────────────────┘                                       └──────────────┘
//!                      ▲                                                 ▲     │
//!                      │ probe succeeds                                  │     │ open_for has
//!                      │ (failures = 0)            probe fails, or its   │     │ passed
//!                      │                           outcome has not come  │     ▼
//!              ┌───────┴─────────────────────────┐ within probe_timeout  │
//!              │ HALF_OPEN: admits one probe,    │ ──────────────────────┘
//!              │ then nothing until its outcome  │
//!              └─────────────────────────────────┘
//!                 probe cancelled (client gone): the slot is freed, still HALF_OPEN
//! ```
//!
//! Calling contract: every [`Permit`] that [`Breaker::try_acquire`] hands out is given back once
//! to [`Breaker::on_result`] (the permit is consumed, so at most once). Outcomes of permits
//! issued before the last transition are stale and ignored: a slow failure from before the
//! circuit opened does not extend it, and a late probe outcome after its slot was released does
//! not count twice. Time-driven transitions happen lazily at their exact instants (`until`,
//! `deadline`), so the state is a function of the events and not of when someone looked.

use std::time::Duration;

use crate::config::BreakerConfig;
use crate::time::Nanos;

/// The public face of the state, as the seed's stats show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "CLOSED",
            BreakerState::Open => "OPEN",
            BreakerState::HalfOpen => "HALF_OPEN",
        }
    }
}

impl serde::Serialize for BreakerState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Closed,
    Open {
        until: Nanos,
    },
    /// `probe` is the deadline of the probe in flight, if one is.
    HalfOpen {
        probe: Option<Nanos>,
    },
}

/// How an upstream attempt ended, from the breaker's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
    /// The attempt says nothing about the target (the client went away first).
    Neutral,
}

/// Leave to send one request to the target; hand it back to [`Breaker::on_result`].
#[must_use = "a permit must be given back with on_result"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    epoch: u64,
    probe: bool,
}

impl Permit {
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// A state change, at the logical instant it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub at: Nanos,
    pub from: BreakerState,
    pub to: BreakerState,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Breaker {
    inner: Inner,
    failures: u32,
    epoch: u64,
    requests: u64,
    last_transition: Nanos,
    threshold: u32,
    open_for: Duration,
    probe_timeout: Duration,
}

impl Breaker {
    pub fn new(cfg: &BreakerConfig) -> Breaker {
        Breaker {
            inner: Inner::Closed,
            failures: 0,
            epoch: 0,
            requests: 0,
            last_transition: Nanos::ZERO,
            threshold: cfg.failure_threshold,
            open_for: cfg.open_for,
            probe_timeout: cfg.probe_timeout,
        }
    }

    /// Takes the state of `old` (a breaker of the same target before a config reload) under this
    /// breaker's new thresholds. A probe in flight in `old` is released: its outcome goes to
    /// `old`, so this breaker may send its own.
    pub fn inherit(&mut self, old: &Breaker) {
        self.inner = match old.inner {
            Inner::HalfOpen { .. } => Inner::HalfOpen { probe: None },
            other => other,
        };
        self.failures = old.failures;
        self.requests = old.requests;
        self.last_transition = old.last_transition;
        self.epoch = old.epoch + 1;
    }

    fn public(inner: Inner) -> BreakerState {
        match inner {
            Inner::Closed => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn go(&mut self, to: Inner, at: Nanos, out: &mut Vec<Transition>) {
        let from = Self::public(self.inner);
        self.inner = to;
        self.epoch += 1;
        self.last_transition = at;
        out.push(Transition {
            at,
            from,
            to: Self::public(to),
        });
    }

    fn open(&mut self, at: Nanos, out: &mut Vec<Transition>) {
        self.go(
            Inner::Open {
                until: at.saturating_add(self.open_for),
            },
            at,
            out,
        );
    }

    /// Applies the transitions that time alone causes, up to `now`.
    pub fn advance(&mut self, now: Nanos, out: &mut Vec<Transition>) {
        loop {
            match self.inner {
                Inner::Open { until } if now >= until => {
                    self.go(Inner::HalfOpen { probe: None }, until, out);
                }
                Inner::HalfOpen {
                    probe: Some(deadline),
                } if now >= deadline => {
                    // The probe's outcome never came: count it as a failure.
                    self.failures = self.failures.saturating_add(1);
                    self.open(deadline, out);
                }
                _ => return,
            }
        }
    }

    /// Asks to send one request now. CLOSED admits; HALF_OPEN admits one probe at a time;
    /// OPEN admits nothing.
    pub fn try_acquire(&mut self, now: Nanos, out: &mut Vec<Transition>) -> Option<Permit> {
        self.advance(now, out);
        let probe = match self.inner {
            Inner::Closed => false,
            Inner::HalfOpen { probe: None } => {
                self.inner = Inner::HalfOpen {
                    probe: Some(now.saturating_add(self.probe_timeout)),
                };
                true
            }
            Inner::HalfOpen { probe: Some(_) } | Inner::Open { .. } => return None,
        };
        self.requests += 1;
        Some(Permit {
            epoch: self.epoch,
            probe,
        })
    }

    /// Reports how the attempt behind `permit` ended.
    pub fn on_result(
        &mut self,
        permit: Permit,
        verdict: Verdict,
        now: Nanos,
        out: &mut Vec<Transition>,
    ) {
        self.advance(now, out);
        if permit.epoch != self.epoch {
            return;
        }
        match (self.inner, verdict) {
            (_, Verdict::Neutral) => {
                if permit.probe {
                    self.inner = Inner::HalfOpen { probe: None };
                }
            }
            (Inner::Closed, Verdict::Success) => self.failures = 0,
            (Inner::Closed, Verdict::Failure) => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.threshold {
                    self.open(now, out);
                }
            }
            (Inner::HalfOpen { .. }, Verdict::Success) => {
                self.failures = 0;
                self.go(Inner::Closed, now, out);
            }
            (Inner::HalfOpen { .. }, Verdict::Failure) => {
                self.failures = self.failures.saturating_add(1);
                self.open(now, out);
            }
            // No permit is issued while OPEN, so a current-epoch permit cannot meet it.
            (Inner::Open { .. }, _) => {}
        }
    }

    /// The state at `now`, without changing anything.
    pub fn state_at(&self, now: Nanos) -> BreakerState {
        let mut b = self.clone();
        b.advance(now, &mut Vec::new());
        Self::public(b.inner)
    }

    /// How long until this breaker could admit a request: zero if it can now; until the end
    /// of `open_for` when OPEN; one second while a probe is out (its outcome may close it).
    pub fn ready_in(&self, now: Nanos) -> Duration {
        let mut b = self.clone();
        b.advance(now, &mut Vec::new());
        match b.inner {
            Inner::Closed | Inner::HalfOpen { probe: None } => Duration::ZERO,
            Inner::Open { until } => until.since(now),
            Inner::HalfOpen {
                probe: Some(deadline),
            } => deadline.since(now).min(Duration::from_secs(1)),
        }
    }

    /// Whether [`Breaker::try_acquire`] would admit a request, as of the last transition
    /// applied (call [`Breaker::advance`] first).
    pub fn admits(&self) -> bool {
        matches!(self.inner, Inner::Closed | Inner::HalfOpen { probe: None })
    }

    /// HALF_OPEN with no probe out: the next request it admits is the probe that can close it.
    pub fn wants_probe(&self) -> bool {
        matches!(self.inner, Inner::HalfOpen { probe: None })
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn requests(&self) -> u64 {
        self.requests
    }

    pub fn last_transition(&self) -> Nanos {
        self.last_transition
    }

    /// True while a half-open probe is out.
    pub fn probe_in_flight(&self) -> bool {
        matches!(self.inner, Inner::HalfOpen { probe: Some(_) })
    }

    /// When the circuit will half-open, if it is open.
    pub fn open_until(&self) -> Option<Nanos> {
        match self.inner {
            Inner::Open { until } => Some(until),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StatusSet;
    use proptest::prelude::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(35),
            failure_statuses: StatusSet::server_errors(),
        }
    }

    fn s(n: u64) -> Nanos {
        Nanos::from_millis(n * 1000)
    }

    #[test]
    fn seed_lifecycle() {
        let mut b = Breaker::new(&cfg());
        let mut tr = Vec::new();
        for i in 0..3 {
            let p = b.try_acquire(s(i), &mut tr).unwrap();
            b.on_result(p, Verdict::Failure, s(i), &mut tr);
        }
        assert_eq!(b.state_at(s(2)), BreakerState::Open);
        assert_eq!(b.failures(), 3);
        assert!(
            b.try_acquire(s(61), &mut tr).is_none(),
            "open until 2 + 60 s"
        );
        assert_eq!(b.ready_in(s(2)), Duration::from_secs(60));
        let probe = b.try_acquire(s(62), &mut tr).unwrap();
        assert!(probe.is_probe());
        assert!(
            b.try_acquire(s(62), &mut tr).is_none(),
            "one probe at a time"
        );
        b.on_result(probe, Verdict::Success, s(63), &mut tr);
        assert_eq!(b.state_at(s(63)), BreakerState::Closed);
        assert_eq!(b.failures(), 0);
        let names: Vec<_> = tr.iter().map(|t| (t.at, t.from, t.to)).collect();
        assert_eq!(
            names,
            vec![
                (s(2), BreakerState::Closed, BreakerState::Open),
                (s(62), BreakerState::Open, BreakerState::HalfOpen),
                (s(63), BreakerState::HalfOpen, BreakerState::Closed),
            ]
        );
    }

    #[test]
    fn success_resets_and_stale_results_are_ignored() {
        let mut b = Breaker::new(&cfg());
        let mut tr = Vec::new();
        let slow = b.try_acquire(s(0), &mut tr).unwrap();
        for _ in 0..2 {
            let p = b.try_acquire(s(0), &mut tr).unwrap();
            b.on_result(p, Verdict::Failure, s(0), &mut tr);
        }
        let ok = b.try_acquire(s(0), &mut tr).unwrap();
        b.on_result(ok, Verdict::Success, s(0), &mut tr);
        assert_eq!(b.failures(), 0);
        for _ in 0..3 {
            let p = b.try_acquire(s(1), &mut tr).unwrap();
            b.on_result(p, Verdict::Failure, s(1), &mut tr);
        }
        assert_eq!(b.open_until(), Some(s(61)));
        // A failure from before the circuit opened does not extend it.
        b.on_result(slow, Verdict::Failure, s(30), &mut tr);
        assert_eq!(b.open_until(), Some(s(61)));
    }

    #[test]
    fn lost_probe_is_released_as_failure() {
        let mut b = Breaker::new(&cfg());
        let mut tr = Vec::new();
        for _ in 0..3 {
            let p = b.try_acquire(s(0), &mut tr).unwrap();
            b.on_result(p, Verdict::Failure, s(0), &mut tr);
        }
        let lost = b.try_acquire(s(60), &mut tr).unwrap();
        assert!(b.try_acquire(s(94), &mut tr).is_none());
        // At 60 + 35 s the probe counts as failed: open again until 155 s.
        assert_eq!(b.state_at(s(95)), BreakerState::Open);
        assert!(b.try_acquire(s(96), &mut tr).is_none());
        assert_eq!(b.failures(), 4);
        assert_eq!(b.open_until(), Some(s(155)));
        // Its late outcome is stale.
        b.on_result(lost, Verdict::Success, s(100), &mut tr);
        assert_eq!(b.state_at(s(100)), BreakerState::Open);
        let p = b.try_acquire(s(155), &mut tr).unwrap();
        assert!(p.is_probe());
        // A cancelled probe frees the slot without judging the target.
        b.on_result(p, Verdict::Neutral, s(156), &mut tr);
        assert_eq!(b.state_at(s(156)), BreakerState::HalfOpen);
        assert!(b.try_acquire(s(156), &mut tr).unwrap().is_probe());
    }

    /// The reference model: the rules of the issue written as plainly as possible, over
    /// milliseconds, with permits as numbered tickets.
    #[derive(Debug, Clone)]
    struct Model {
        state: BreakerState,
        failures: u32,
        open_until: u64,
        probe: Option<(u64, u64)>, // (ticket, deadline)
        era: u64,                  // bumps on every transition; tickets from older eras are stale
    }

    const THRESHOLD: u32 = 2;
    const OPEN_FOR: u64 = 10_000;
    const PROBE_TIMEOUT: u64 = 5_000;

    impl Model {
        fn settle(&mut self, now: u64) {
            loop {
                if self.state == BreakerState::Open && now >= self.open_until {
                    self.state = BreakerState::HalfOpen;
                    self.era += 1;
                } else if let Some((_, deadline)) = self.probe.filter(|(_, d)| now >= *d) {
                    self.probe = None;
                    self.failures += 1;
                    self.state = BreakerState::Open;
                    self.open_until = deadline + OPEN_FOR;
                    self.era += 1;
                } else {
                    return;
                }
            }
        }
        fn acquire(&mut self, now: u64, ticket: u64) -> Option<bool> {
            self.settle(now);
            match self.state {
                BreakerState::Closed => Some(false),
                BreakerState::HalfOpen if self.probe.is_none() => {
                    self.probe = Some((ticket, now + PROBE_TIMEOUT));
                    Some(true)
                }
                _ => None,
            }
        }
        fn complete(&mut self, now: u64, era: u64, probe: bool, v: Verdict) {
            self.settle(now);
            if era != self.era {
                return;
            }
            let fail = |m: &mut Model| {
                m.failures += 1;
                m.state = BreakerState::Open;
                m.open_until = now + OPEN_FOR;
                m.probe = None;
                m.era += 1;
            };
            match (self.state, v, probe) {
                (_, Verdict::Neutral, true) => self.probe = None,
                (_, Verdict::Neutral, false) => {}
                (BreakerState::Closed, Verdict::Success, _) => self.failures = 0,
                (BreakerState::Closed, Verdict::Failure, _) => {
                    self.failures += 1;
                    if self.failures >= THRESHOLD {
                        self.failures -= 1;
                        fail(self);
                    }
                }
                (BreakerState::HalfOpen, Verdict::Success, _) => {
                    self.failures = 0;
                    self.state = BreakerState::Closed;
                    self.probe = None;
                    self.era += 1;
                }
                (BreakerState::HalfOpen, Verdict::Failure, _) => fail(self),
                (BreakerState::Open, _, _) => {}
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Tick { millis: u64 },
        Acquire,
        Complete { pick: usize, verdict: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..12_000).prop_map(|millis| Op::Tick { millis }),
            Just(Op::Acquire),
            Just(Op::Acquire),
            (0usize..8, 0u8..3).prop_map(|(pick, verdict)| Op::Complete { pick, verdict }),
        ]
    }

    proptest! {
        /// The breaker agrees with the model after every step over random event and time
        /// sequences; and, checked directly: never more than one live probe, never an admission
        /// while OPEN or less than open_for after opening, and a successful probe closes it.
        #[test]
        fn breaker_follows_the_model(ops in prop::collection::vec(op(), 1..200)) {
            let c = BreakerConfig { failure_threshold: THRESHOLD, open_for: Duration::from_millis(OPEN_FOR),
                                    probe_timeout: Duration::from_millis(PROBE_TIMEOUT),
                                    failure_statuses: StatusSet::server_errors() };
            let mut b = Breaker::new(&c);
            let mut m = Model { state: BreakerState::Closed, failures: 0, open_until: 0, probe: None, era: 0 };
            let mut tr = Vec::new();
            let mut now = 0u64;
            let mut out: Vec<(Permit, u64, u64)> = Vec::new(); // (permit, model era, issued at)
            let mut opened_at: Option<u64> = None;
            for (ticket, op) in ops.into_iter().enumerate() {
                let t = Nanos::from_millis(now);
                match op {
                    Op::Tick { millis } => now += millis,
                    Op::Acquire => {
                        let before = b.state_at(t);
                        let got = b.try_acquire(t, &mut tr);
                        let want = m.acquire(now, ticket as u64);
                        prop_assert_eq!(got.map(|p| p.is_probe()), want);
                        if let Some(p) = got {
                            prop_assert_ne!(before, BreakerState::Open);
                            if p.is_probe() {
                                let live = out.iter().filter(|(q, _, at)| q.is_probe() && now < at + PROBE_TIMEOUT).count();
                                prop_assert_eq!(live, 0, "a second live probe");
                            }
                            out.push((p, m.era, now));
                        }
                    }
                    Op::Complete { pick, verdict } => {
                        if out.is_empty() { continue; }
                        let (p, era, _) = out.remove(pick % out.len());
                        let v = [Verdict::Success, Verdict::Failure, Verdict::Neutral][verdict as usize];
                        let before = b.state_at(t);
                        b.on_result(p, v, t, &mut tr);
                        m.complete(now, era, p.is_probe(), v);
                        if p.is_probe() && before == BreakerState::HalfOpen && v == Verdict::Success
                            && m.state == BreakerState::Closed {
                            prop_assert_eq!(b.state_at(t), BreakerState::Closed);
                        }
                    }
                }
                let t = Nanos::from_millis(now);
                m.settle(now);
                prop_assert_eq!(b.state_at(t), m.state);
                let mut settled = b.clone();
                settled.advance(t, &mut Vec::new());
                prop_assert_eq!(settled.failures(), m.failures);
                for x in tr.drain(..) {
                    if x.to == BreakerState::Open { opened_at = Some(x.at.as_millis()); }
                    if x.from == BreakerState::Open {
                        prop_assert!(x.at.as_millis() >= opened_at.unwrap() + OPEN_FOR);
                    }
                }
            }
        }
    }
}
