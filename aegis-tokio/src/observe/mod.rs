//! What the gateway tells its operators: logging setup, the access log (one line per
//! request) and the Prometheus metrics. Nothing here decides anything about a request.

pub mod access;
pub mod log;
pub mod metrics;
