//! The one place the gateway reads the real clocks. The policy takes time as a [`Now`] value;
//! this turns the process's monotonic clock and the wall clock into one.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use aegis_policy::{Nanos, Now, UnixMillis};

/// Monotonic time since the gateway started, plus Unix wall time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    /// Both clocks, read once.
    pub fn now(&self) -> Now {
        self.at(Instant::now())
    }

    /// The monotonic clock as already read (`instant`), and the wall clock derived from it:
    /// each thread reads the wall clock at most once a second and adds the monotonic time
    /// since (a step of the system clock shows within a second). Plain u64 arithmetic: this
    /// runs twice per request.
    pub fn at(&self, instant: Instant) -> Now {
        thread_local! {
            /// (monotonic nanoseconds, Unix milliseconds) when the wall clock was last read.
            static BASE: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
        }
        let mono = nanos(instant.saturating_duration_since(self.origin));
        let wall = BASE.with(|base| match base.get() {
            Some((at, ms)) if mono >= at && mono - at < NANOS_PER_SEC => {
                ms + (mono - at) / NANOS_PER_MILLI
            }
            _ => {
                let ms = wall().0;
                base.set(Some((mono, ms)));
                ms
            }
        });
        Now {
            mono: Nanos(mono),
            wall: UnixMillis(wall),
        }
    }
}

const NANOS_PER_SEC: u64 = 1_000_000_000;
const NANOS_PER_MILLI: u64 = 1_000_000;

/// `d` in nanoseconds, saturating (585 years of uptime).
fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(NANOS_PER_SEC)
        .saturating_add(u64::from(d.subsec_nanos()))
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Unix wall time in milliseconds (zero if the clock is before 1970).
pub fn wall() -> UnixMillis {
    UnixMillis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
    )
}
