//! The oracle's circuit breakers and round robin, from the rules as the README states them:
//!
//! * CLOSED counts failures; a success sets the count back to zero; the failure that brings
//!   the count to `failure_threshold` opens the circuit.
//! * OPEN admits nothing for `open_for`, then the circuit is HALF_OPEN.
//! * HALF_OPEN admits one probe. Its success closes the circuit (count zero), its failure
//!   opens it again (count + 1); a probe whose outcome has not come `probe_timeout` after it
//!   was sent counts as a failure at that instant; a cancelled probe frees the slot.
//! * An outcome of a request sent before the circuit's last change of state is ignored.
//! * Round robin: starting at the target after the last one chosen, the first target whose
//!   circuit admits the request takes it; if none does, 503 with the time to the soonest one.
//!
//! Times are nanoseconds of the monotonic clock, as plain `u64`.

/// The state of one circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "CLOSED",
            State::Open => "OPEN",
            State::HalfOpen => "HALF_OPEN",
        }
    }
}

/// A change of state, at the instant it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub at: u64,
    pub from: State,
    pub to: State,
}

/// What the breaker decided about an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    Success,
    Failure,
    /// The client went away first: says nothing about the target.
    Neither,
}

/// The numbers from `[breaker]`.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub threshold: u64,
    pub open_for: u64,
    pub probe_timeout: u64,
}

/// A request sent to a target: which "era" of the circuit it belongs to, and whether it is
/// the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub era: u64,
    pub probe: bool,
}

/// One circuit.
#[derive(Debug, Clone)]
pub struct Circuit {
    pub state: State,
    pub failures: u64,
    /// When an OPEN circuit half-opens.
    pub reopens_at: u64,
    /// The deadline of the probe in flight, if one is.
    pub probe_deadline: Option<u64>,
    /// Counts changes of state; outcomes from an older era are ignored.
    pub era: u64,
    /// Requests sent to the target.
    pub sends: u64,
    /// When the state last changed.
    pub last_change: Option<u64>,
    /// Changes not yet matched against the policy's reports, oldest first.
    pub unreported: std::collections::VecDeque<Change>,
}

impl Default for Circuit {
    fn default() -> Circuit {
        Circuit::new()
    }
}

impl Circuit {
    pub fn new() -> Circuit {
        Circuit {
            state: State::Closed,
            failures: 0,
            reopens_at: 0,
            probe_deadline: None,
            era: 0,
            sends: 0,
            last_change: None,
            unreported: std::collections::VecDeque::new(),
        }
    }

    fn change(&mut self, to: State, at: u64) {
        self.unreported.push_back(Change {
            at,
            from: self.state,
            to,
        });
        self.state = to;
        self.era += 1;
        self.last_change = Some(at);
    }

    fn open(&mut self, at: u64, rules: &Rules) {
        self.change(State::Open, at);
        self.reopens_at = at.saturating_add(rules.open_for);
        self.probe_deadline = None;
    }

    /// What time alone does, up to `now`.
    pub fn settle(&mut self, now: u64, rules: &Rules) {
        loop {
            if self.state == State::Open && now >= self.reopens_at {
                let at = self.reopens_at;
                self.change(State::HalfOpen, at);
            } else if self.state == State::HalfOpen
                && let Some(deadline) = self.probe_deadline
                && now >= deadline
            {
                // The probe's outcome never came.
                self.failures += 1;
                self.open(deadline, rules);
            } else {
                return;
            }
        }
    }

    /// May a request go to this target now? (The circuit is settled to `now` first.)
    pub fn admits(&mut self, now: u64, rules: &Rules) -> bool {
        self.settle(now, rules);
        match self.state {
            State::Closed => true,
            State::HalfOpen => self.probe_deadline.is_none(),
            State::Open => false,
        }
    }

    /// Sends a request (after [`Circuit::admits`] said yes).
    pub fn send(&mut self, now: u64, rules: &Rules) -> Sent {
        let probe = self.state == State::HalfOpen;
        self.sends += 1;
        if probe {
            self.probe_deadline = Some(now.saturating_add(rules.probe_timeout));
        }
        Sent {
            era: self.era,
            probe,
        }
    }

    /// The outcome of a request sent earlier.
    pub fn outcome(&mut self, sent: Sent, judged: Judged, now: u64, rules: &Rules) {
        self.settle(now, rules);
        if sent.era != self.era {
            return;
        }
        match judged {
            Judged::Neither => {
                if sent.probe {
                    self.probe_deadline = None;
                }
            }
            Judged::Success => {
                self.failures = 0;
                if self.state == State::HalfOpen {
                    self.probe_deadline = None;
                    self.change(State::Closed, now);
                }
            }
            Judged::Failure => {
                self.failures += 1;
                match self.state {
                    State::Closed if self.failures >= rules.threshold => self.open(now, rules),
                    State::HalfOpen => self.open(now, rules),
                    _ => {}
                }
            }
        }
    }

    /// Nanoseconds until this circuit could take a request (after settling to `now`):
    /// zero when it can; the rest of `open_for` when OPEN; while a probe is out, the time to
    /// its deadline but at most a second (its outcome may close the circuit sooner).
    pub fn wait(&self, now: u64) -> u64 {
        match (self.state, self.probe_deadline) {
            (State::Closed, _) | (State::HalfOpen, None) => 0,
            (State::Open, _) => self.reopens_at.saturating_sub(now),
            (State::HalfOpen, Some(d)) => d.saturating_sub(now).min(1_000_000_000),
        }
    }
}

/// One route's targets.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    pub circuits: Vec<Circuit>,
    /// The target to try first next time.
    pub next: usize,
}

impl RoundRobin {
    pub fn new(targets: usize) -> RoundRobin {
        RoundRobin {
            circuits: (0..targets).map(|_| Circuit::new()).collect(),
            next: 0,
        }
    }

    pub fn settle(&mut self, now: u64, rules: &Rules) {
        for c in &mut self.circuits {
            c.settle(now, rules);
        }
    }

    /// The target that takes a request at `now`, or the wait (ns) until one could.
    pub fn pick(&mut self, now: u64, rules: &Rules) -> Result<(usize, Sent), u64> {
        self.settle(now, rules);
        let n = self.circuits.len();
        for step in 0..n {
            let t = (self.next + step) % n;
            if self.circuits[t].admits(now, rules) {
                self.next = (t + 1) % n;
                let sent = self.circuits[t].send(now, rules);
                return Ok((t, sent));
            }
        }
        Err(self.circuits.iter().map(|c| c.wait(now)).min().unwrap_or(0))
    }
}
