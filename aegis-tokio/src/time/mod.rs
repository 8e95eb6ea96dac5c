//! Time in the shell: the policy's clock ([`Clock`]: monotonic and wall time as the policy's
//! `Now`) and the deadline timers connections use ([`Timer`], [`Stall`]). Monotonic time is
//! tokio's (`tokio::time::Instant`) throughout the shell, so that tests can pause it.

mod clock;
mod timer;

pub use clock::{Clock, wall};
pub use timer::{Stall, Timer};
