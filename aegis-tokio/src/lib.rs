//! aegis-tokio: the I/O shell of the Aegis gateway (tokio, its own HTTP/1.1, hyper for HTTP/2,
//! Redis) and the `aegis` binary. It drives the aegis-policy pipeline over real sockets; every
//! routing, auth, rate-limit, balancing and breaker decision is the policy's.
//!
//! ```text
//!   TcpListener ─▶ downstream (HTTP/1.1; h2c ─▶ hyper) ─▶ proxy::handle ─▶ aegis_policy::Policy
//!                                              │    ▲  counters: store::Store (memory | Redis)
//!                                              ▼    │
//!                                   pool (per-worker HTTP/1.1 keep-alive) ─▶ upstream
//!   SIGHUP ─▶ Runtime::build ─▶ ArcSwap      SIGTERM/SIGINT ─▶ stop accepting, drain
//! ```
#![forbid(unsafe_code)]
// The shell is where real time and real randomness live (the policy crate forbids them).
#![allow(clippy::disallowed_methods)]

pub mod access;
pub mod admin;
pub mod clock;
pub mod demo;
pub mod downstream;
pub mod h1;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod redis_store;
pub mod runtime;
pub mod server;
pub mod store;
pub mod timer;
pub mod token;
pub mod upstream;

use runtime::LogFormat;

/// Installs the tracing subscriber on stderr: `RUST_LOG` (default `info`) picks levels.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b
            .json()
            .flatten_event(true)
            .with_target(false)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}
