//! The gateway's state: what a request reads (the current [`Runtime`], swapped whole on
//! reload), what lives for the whole process ([`Shared`]), and the rate-limit counter stores
//! (in memory, or Redis shared by every gateway instance).

pub mod caps;
pub mod jwks;
pub mod redis;
mod runtime;
mod shared;
pub mod store;

pub use runtime::{RouteRt, Runtime, lock};
pub use shared::{ConfigSource, ProcessEnv, Shared};
