//! aegis-tokio: the I/O shell of the Aegis gateway (tokio, its own HTTP/1.1, hyper for HTTP/2,
//! Redis) and the `aegis` binary. It drives the aegis-policy pipeline over real sockets; every
//! routing, auth, rate-limit, balancing and breaker decision is the policy's.
//!
//! The modules in the order a request travels; each imports only from those below it:
//!
//! ```text
//!   server      listeners, worker threads, signals, reload
//!   downstream  the HTTP/1.1 connection loop (proxy and admin listeners), request body, h2c,
//!               TLS termination
//!   gateway     decide (policy) → pick (balancer) → forward (upstream) → respond; /gateway/*
//!   state       the current Runtime (config, balancers, store), Shared, counter stores, the
//!               JWKS fetch tasks
//!   upstream    the HTTP/1.1 client, per-worker keep-alive pools, upstream body, targets
//!   tls         rustls (ring): the listener's certificates by SNI, the upstream client config
//!   observe     access log, metrics, logging setup
//!   h1          the HTTP/1.1 codec: read buffer, heads, body decoder and reader, writer
//!   time        the real clocks, deadline timers
//!   record · headers · error   shared leaf types: the per-request record, header names,
//!                              body errors
//!   dev         (feature "dev") the demo, the fake upstream, the token minter
//! ```
#![forbid(unsafe_code)]
// The shell is where real time and real randomness live (the policy crate forbids them).
#![allow(clippy::disallowed_methods)]

#[cfg(feature = "dev")]
pub mod dev;
pub mod downstream;
pub mod error;
pub mod gateway;
pub mod h1;
pub mod headers;
pub mod observe;
pub mod record;
pub mod server;
pub mod state;
pub mod time;
pub mod tls;
pub mod upstream;
