//! The one place the gateway reads the real clocks. The policy takes time as a [`Now`] value;
//! this turns the process's monotonic clock and the wall clock into one.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    /// since (a step of the system clock shows within a second).
    pub fn at(&self, instant: Instant) -> Now {
        thread_local! {
            static BASE: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
        }
        let wall = BASE.with(|base| match base.get() {
            Some((at, ms))
                if instant >= at
                    && let since = instant.duration_since(at)
                    && since < Duration::from_secs(1) =>
            {
                ms + u64::try_from(since.as_millis()).unwrap_or(0)
            }
            _ => {
                let ms = wall().0;
                base.set(Some((instant, ms)));
                ms
            }
        });
        Now {
            mono: Nanos(
                u64::try_from(instant.saturating_duration_since(self.origin).as_nanos())
                    .unwrap_or(u64::MAX),
            ),
            wall: UnixMillis(wall),
        }
    }
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
