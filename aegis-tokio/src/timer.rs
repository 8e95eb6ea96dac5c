//! A deadline timer that costs nothing when the deadline is met.

use std::pin::Pin;
use std::task::Context;
use std::time::Instant;

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
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        if self.armed.is_none_or(|a| a > deadline) {
            sleep.as_mut().reset(deadline.into());
            self.armed = Some(deadline);
        }
        while sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return true;
            }
            sleep.as_mut().reset(deadline.into());
            self.armed = Some(deadline);
        }
        false
    }
}
