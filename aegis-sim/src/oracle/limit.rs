//! The oracle's rate limits, from the numbers in the route's `rate_limit` table (never from
//! the policy's own `Limit`):
//!
//! * `fixed_window`: windows of `window` aligned to the Unix epoch; at most `max` admissions
//!   per key per window; a refusal does not count. `RateLimit-Remaining` is what is left of
//!   `max`, `RateLimit-Reset` and `Retry-After` the seconds to the window's end (rounded up;
//!   `Retry-After` at least 1).
//! * `gcra`: every admission costs `window / max` (whole microseconds, at least 1) of a budget
//!   of `max` such costs; the budget refills continuously. A request is admitted when, after
//!   paying its cost, no more than the whole budget is in use. `Retry-After` is the time until
//!   one cost has been refilled.
//!
//! The counter of a key keeps only its latest window (or its theoretical arrival time), as a
//! store does: a wall clock that steps back into an earlier window starts it afresh.

/// What the client is told about an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds, rounded up.
    pub reset: u64,
}

/// Admitted with these headers, or refused with this `Retry-After` (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit(Headers),
    Refuse(u64),
}

/// A route's limit, as written in its config.
#[derive(Debug, Clone, Copy)]
pub struct RouteLimit {
    pub max: u64,
    pub window_ms: u64,
    pub gcra: bool,
}

/// The stored state of one key.
#[derive(Debug, Clone, Copy)]
pub enum Counter {
    Window { start_ms: u64, admitted: u64 },
    Gcra { tat_us: u64 },
}

fn ceil_div(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

/// Seconds to tell a client to wait, from milliseconds: rounded up, at least one.
pub fn retry_secs(ms: u64) -> u64 {
    ceil_div(ms, 1000).max(1)
}

impl RouteLimit {
    /// Counts one request at wall time `now_ms` against `counter`, and says what to answer.
    pub fn count(&self, counter: &mut Option<Counter>, now_ms: u64) -> Verdict {
        if self.gcra {
            self.gcra(counter, now_ms)
        } else {
            self.window(counter, now_ms)
        }
    }

    fn window(&self, counter: &mut Option<Counter>, now_ms: u64) -> Verdict {
        let start = now_ms / self.window_ms * self.window_ms;
        let end = start + self.window_ms;
        let before = match *counter {
            Some(Counter::Window { start_ms, admitted }) if start_ms == start => admitted,
            _ => 0,
        };
        if before >= self.max {
            *counter = Some(Counter::Window {
                start_ms: start,
                admitted: before,
            });
            return Verdict::Refuse(retry_secs(end - now_ms));
        }
        *counter = Some(Counter::Window {
            start_ms: start,
            admitted: before + 1,
        });
        Verdict::Admit(Headers {
            limit: self.max,
            remaining: self.max - (before + 1),
            reset: ceil_div(end - now_ms, 1000),
        })
    }

    fn gcra(&self, counter: &mut Option<Counter>, now_ms: u64) -> Verdict {
        let cost = (self.window_ms * 1000 / self.max).max(1);
        let budget = cost * self.max;
        let now = now_ms * 1000;
        // Budget in use now: what was spent and has not refilled yet.
        let in_use = match *counter {
            Some(Counter::Gcra { tat_us }) if tat_us > now => tat_us - now,
            _ => 0,
        };
        if in_use + cost > budget {
            *counter = Some(Counter::Gcra {
                tat_us: now + in_use,
            });
            let wait_us = in_use + cost - budget;
            return Verdict::Refuse(retry_secs(wait_us / 1000));
        }
        let in_use = in_use + cost;
        *counter = Some(Counter::Gcra {
            tat_us: now + in_use,
        });
        Verdict::Admit(Headers {
            limit: self.max,
            remaining: (budget - in_use) / cost,
            reset: ceil_div(in_use / 1000, 1000),
        })
    }
}
