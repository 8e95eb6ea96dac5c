//! A deadline timer that costs nothing when the deadline is met.

use std::pin::Pin;
use std::task::Context;
use tokio::time::Instant;

use tokio::time::Sleep;

/// A deadline timer for one connection. It stays armed between exchanges and is moved only when it
/// fires early (deadlines mostly grow) or would fire late: a response in time costs no timer
/// operation.
#[derive(Debug, Default)]
pub struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
    /// When `sleep` fires.
    armed: Option<Instant>,
}

impl Timer {
    /// Whether `deadline` has passed; if not, the task is woken when it does.
    // Polling the sleep each time is needed: checking `is_elapsed` instead for a task that
    // already polled it missed wake-ups (a stalled client was never timed out).
    pub fn timed_out(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if self.armed.is_none_or(|a| a > deadline) {
            sleep.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        while sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return true;
            }
            sleep.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        false
    }
}

/// A deadline that restarts whenever progress is made: for a transfer that fails when no
/// bytes move for `limit` (a client that takes none of a response, an upstream that sends none
/// of its body). The clock is read only when progress was made since the last check.
#[derive(Debug, Default)]
pub struct Stall {
    /// Progress seen at the last check, and the deadline set then.
    since: Option<(u64, Instant)>,
}

impl Stall {
    /// The deadline for `progress` bytes so far: the one already set if none moved since.
    pub fn deadline(&mut self, progress: u64, limit: std::time::Duration) -> Instant {
        match self.since {
            Some((mark, d)) if mark == progress => d,
            _ => {
                let d = Instant::now() + limit;
                self.since = Some((progress, d));
                d
            }
        }
    }
}
