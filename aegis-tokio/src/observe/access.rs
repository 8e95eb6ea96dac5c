//! The access log: one line per request, in the seed's text shape or as JSON (the input of
//! `aegis-sim replay`). No work is done when the `aegis::access` target is off.

use aegis_policy::Policy;
use http::request::Parts;
use tracing::Level;

use super::log::LogFormat;
use crate::record::Exchange;

/// Writes the access line of a request answered with `status`, on the config (`policy`) it
/// was served on.
pub fn log(format: LogFormat, policy: &Policy, parts: &Parts, ex: &Exchange, status: u16) {
    if !tracing::enabled!(target: "aegis::access", Level::INFO) {
        return;
    }
    let elapsed = ex.started.elapsed();
    let id = ex.request_id.as_str();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let route = ex.route.map(|r| policy.route(aegis_policy::RouteId(r)));
    let target = route.zip(ex.target).map(|(r, t)| r.targets[t].url.as_str());
    match format {
        LogFormat::Text => {
            let ms = elapsed.as_millis();
            match target {
                Some(t) if ex.error.is_some() => tracing::info!(
                    target: "aegis::access",
                    "[{}] {t}{pq} → {status} ({ms}ms) [{id}] {}: {}",
                    parts.method,
                    ex.reason,
                    ex.error.as_deref().unwrap_or_default()
                ),
                // Retries show; a request sent once keeps the seed's line.
                Some(t) if ex.attempts > 1 => tracing::info!(
                    target: "aegis::access",
                    "[{}] {t}{pq} → {status} ({ms}ms) [{id}] attempts={}",
                    parts.method,
                    ex.attempts
                ),
                Some(t) => tracing::info!(
                    target: "aegis::access",
                    "[{}] {t}{pq} → {status} ({ms}ms) [{id}]",
                    parts.method
                ),
                None => tracing::info!(
                    target: "aegis::access",
                    "[{}] {pq} → {status} ({ms}ms) [{id}] {}",
                    parts.method,
                    ex.reason
                ),
            }
        }
        LogFormat::Json => {
            let auth = if !ex.has_authorization {
                "absent"
            } else if ex.reason == "unauthorized" {
                "rejected"
            } else if route.is_some_and(|r| r.auth) && ex.user.is_some() {
                "verified"
            } else {
                "unchecked"
            };
            let host = ex.host.as_ref().and_then(|h| h.to_str().ok());
            let client_ip = ex.client_ip.map(|ip| ip.to_string());
            tracing::info!(
                target: "aegis::access",
                ts_ms = crate::time::wall().0,
                request_id = id,
                method = parts.method.as_str(),
                path = pq,
                host,
                route = route.map(|r| r.name.as_str()),
                target,
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                client_ip = client_ip.as_deref(),
                user = ex.user.as_ref().and_then(|u| u.to_str().ok()),
                auth,
                reason = ex.reason,
                error = ex.error.as_deref(),
                attempts = ex.attempts,
                "request"
            );
        }
    }
}
