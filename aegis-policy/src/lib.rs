//! # aegis-policy: the sans-IO heart of the Aegis API gateway
//!
//! Routing, JWT authentication, rate limiting, round-robin load balancing and circuit breaking
//! as pure, synchronous code. Nothing here reads a clock, draws a random number, spawns a
//! thread or touches a socket: time comes in as [`Now`], counters come through a
//! [`CounterStore`] (or, for async stores, as a [`Step::Count`] the driver fulfils), and every
//! decision comes out as a value. The gateway (aegis-tokio) and the simulator (aegis-sim) drive
//! the same [`Policy`]; neither re-implements a decision.
//!
//! ```
//! use aegis_policy::{Config, Decision, Engine, FixedHasher, MapEnv, MemoryStore, Nanos, Now,
//!                    Policy, RequestView, UnixMillis, UpstreamOutcome};
//!
//! let config = Config::from_toml(r#"
//!     [[routes]]
//!     path = "/product"
//!     targets = ["http://127.0.0.1:3004", "http://127.0.0.1:3005"]
//!     rate_limit = { max = 2, window = "60s" }
//! "#, &MapEnv::default()).unwrap();
//! let mut engine = Engine::new(Policy::new(config).unwrap(), MemoryStore::with_hasher(1000, FixedHasher));
//!
//! let headers = http::HeaderMap::new();
//! let view = RequestView {
//!     method: &http::Method::GET,
//!     host: Some("localhost:8000"),
//!     path_and_query: "/product/7?full=1",
//!     headers: &headers,
//!     peer: "10.0.0.9".parse().unwrap(),
//! };
//! let now = Now::virtual_at(Nanos::ZERO, UnixMillis(1_800_000_000_000));
//! match engine.handle(&view, now) {
//!     Decision::Forward(fwd) => {
//!         assert_eq!(engine.policy.route(fwd.route).targets[fwd.target()].url, "http://127.0.0.1:3004");
//!         // ... send it, then report how it went, exactly once:
//!         engine.on_upstream_result(&fwd, UpstreamOutcome::Status(200), now);
//!     }
//!     Decision::Respond(reply) => panic!("unexpected {}", reply.status),
//! }
//! ```
#![forbid(unsafe_code)]
#![deny(clippy::disallowed_methods)]

pub mod auth;
pub mod balancer;
pub mod breaker;
pub mod config;
pub mod health;
pub mod jwks;
mod mix;
pub mod path;
pub mod pipeline;
pub mod ratelimit;
pub mod retry;
pub mod router;
pub mod time;
pub mod token_cache;

pub use auth::{AuthFailure, Key, KeyFamily, KeySet, Verifier};
pub use balancer::{
    Attempt, Balancer, NoTarget, TargetStats, TargetTransition, TunnelSlot, Unavailable,
    UpstreamOutcome,
};
pub use breaker::{Breaker, BreakerState, Permit, Transition, Verdict};
pub use config::{Config, ConfigEnv, ConfigError, MapEnv};
pub use health::{HealthChecks, HealthTransition};
pub use jwks::{FetchOutcome, FetchReason, Fetched, Jwks, JwksConfig, JwksStatus, Refetch};
pub use pipeline::{
    Decision, Engine, FailedTry, Forward, KeySource, NoKeys, Pending, Policy, ProviderId, Reason,
    Reply, RequestView, Step, Ticket, header,
};
pub use ratelimit::{
    Batch, ClientKey, CounterKey, CounterReply, CounterRequest, CounterState, CounterStore,
    FixedHasher, Limit, MemoryStore, NegativeCache, RateDecision, Refusal, StoreError,
};
pub use router::RouteId;
pub use time::{Nanos, Now, UnixMillis};
pub use token_cache::{CacheStats, TokenCache};

// Re-exported so drivers use the same `http` types as the pipeline.
pub use http;
