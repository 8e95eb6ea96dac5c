//! Time in the shell: the one place the real clocks are read ([`Clock`]) and the deadline
//! timers connections use ([`Timer`], [`Stall`]).

mod clock;
mod timer;

pub use clock::{Clock, wall};
pub use timer::{Stall, Timer};
