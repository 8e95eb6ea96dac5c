//! aegis-sim: a deterministic simulator that runs failure scenarios through the same
//! aegis-policy pipeline the gateway runs, on virtual time, reproducible from one seed.
//!
//! * [`scenario`]: the TOML scenario model (gateway config, upstream behaviour over time,
//!   client load, scripted requests, store faults, expectations) and its validation;
//! * [`driver`]: the pipeline driven step by step, each step compared with the reference
//!   model and the invariants checked after it;
//! * [`oracle`]: the reference model: what the policy should decide, re-derived plainly from
//!   the config's values;
//! * [`run`]: the event loop (virtual clock, simulated clients and upstreams);
//! * [`fleet`]: many gateways sharing one Redis-like store (coalescing, pipelining, the
//!   negative cache, outages), with the invariant that no key is admitted past its limit;
//! * [`fuzz`]: random scenarios from seeds, a safety phase with faults then a liveness phase;
//! * [`replay`]: a recorded JSON access log through a candidate config;
//! * [`idp`]: a simulated identity provider serving the gateway's JWKS on virtual time;
//! * [`replay_outage`]: the Redis store's outage windows in a gateway log, for replay;
//! * [`rng`]: the seeded PRNG, written out so a seed means the same bytes everywhere;
//! * [`violation`]: a broken invariant, shared by the driver and the reports.
//!
//! No clock is read and no global randomness is drawn anywhere in this crate.
#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods)]

pub mod driver;
pub mod fleet;
pub mod fuzz;
pub mod idp;
pub mod oracle;
pub mod replay;
pub mod replay_outage;
pub mod report;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod tokens;
pub mod violation;

pub use report::Report;
pub use run::{RunOptions, run};
pub use scenario::{Scenario, ScenarioError};
