//! A deadline timer that costs nothing when the deadline is met.

use std::pin::Pin;
use std::task::{Context, Waker};
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
    /// The task `sleep` wakes. Polling a registered sleep costs atomics; while it is armed for
    /// the same task, checking whether it fired does not.
    waker: Option<Waker>,
}

impl Timer {
    /// Whether `deadline` has passed; if not, the task is woken when it does.
    pub fn timed_out(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        let mut moved = false;
        if self.armed.is_none_or(|a| a > deadline) {
            sleep.as_mut().reset(deadline.into());
            self.armed = Some(deadline);
            moved = true;
        }
        let registered = self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if registered && !moved && !sleep.is_elapsed() {
            return false;
        }
        while sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return true;
            }
            sleep.as_mut().reset(deadline.into());
            self.armed = Some(deadline);
        }
        if !registered {
            self.waker = Some(cx.waker().clone());
        }
        false
    }
}
