//! aegis-sim: a deterministic simulator that runs failure scenarios through the same
//! aegis-policy pipeline the gateway runs, on virtual time, reproducible from one seed.
//!
//! * [`scenario`]: the TOML scenario model (gateway config, upstream behaviour over time,
//!   client load, scripted requests, store faults, expectations) and its validation;
//! * [`driver`]: the pipeline driven step by step, with the invariants checked after every
//!   step against a shadow model;
//! * [`run`]: the event loop (virtual clock, simulated clients and upstreams);
//! * [`fuzz`]: random scenarios from seeds, a safety phase with faults then a liveness phase;
//! * [`replay`]: a recorded JSON access log through a candidate config;
//! * [`rng`]: the seeded PRNG, written out so a seed means the same bytes everywhere.
//!
//! No clock is read and no global randomness is drawn anywhere in this crate.
#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods)]

pub mod driver;
pub mod fuzz;
pub mod idp;
pub mod replay;
pub mod report;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod tokens;

pub use report::Report;
pub use run::{RunOptions, run};
pub use scenario::{Scenario, ScenarioError};
