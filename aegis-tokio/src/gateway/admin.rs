//! The gateway's own endpoints: `/gateway/stats` (the seed's JSON array), `/gateway/health`
//! and `/gateway/metrics` (Prometheus text). Served on the proxy listener ahead of every
//! route, or on `server.admin_listen` when it is set.

use aegis_policy::TargetStats;
use aegis_policy::config::OnStoreError;
use http::header::{ALLOW, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode};
use serde_json::json;

use super::body::ProxyBody;
use super::reply::{error, json_response};
use crate::state::{Runtime, Shared, lock};

pub const PREFIX: &str = "/gateway/";

/// Every target's line, in config order.
pub fn stats(shared: &Shared, rt: &Runtime) -> Vec<TargetStats> {
    let now = shared.clock.now();
    rt.policy
        .config()
        .routes
        .iter()
        .zip(&rt.balancers)
        .flat_map(|(r, b)| lock(b).snapshot(r, now.mono))
        .collect()
}

pub fn handle(shared: &Shared, rt: &Runtime, parts: &Parts) -> Response<ProxyBody> {
    let path = parts.uri.path();
    let known = matches!(
        path,
        "/gateway/stats" | "/gateway/health" | "/gateway/metrics"
    );
    if !known {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "{path} is not a gateway endpoint (try /gateway/stats, /gateway/health, /gateway/metrics)"
            ),
        );
    }
    if parts.method != Method::GET && parts.method != Method::HEAD {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed on {path}", parts.method),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/gateway/stats" => {
            // Serialised from the struct, so the seed's keys come first, in its order.
            let text = serde_json::to_string(&stats(shared, rt)).unwrap_or_default();
            let mut r = Response::new(ProxyBody::full(text));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        "/gateway/health" => {
            let store = &rt.store;
            let healthy = store.is_healthy();
            let deny = rt.policy.config().rate_limit.on_store_error == OnStoreError::Deny;
            let (status, word) = match (healthy, deny) {
                (true, _) => (StatusCode::OK, "ok"),
                (false, false) => (StatusCode::OK, "degraded"),
                (false, true) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            };
            json_response(
                status,
                &json!({
                    "status": word,
                    "routes": rt.policy.config().routes.len(),
                    "store": {"kind": store.kind(), "healthy": healthy},
                }),
            )
        }
        _ => {
            let mut text =
                shared
                    .metrics
                    .render(&stats(shared, rt), rt.store.kind(), rt.store.is_healthy());
            if let crate::state::store::Store::Redis(r) = &*rt.store {
                let c = r.counts();
                use std::fmt::Write;
                let _ = write!(
                    text,
                    "# HELP aegis_store_calls_total Redis calls made (each decides one key's batch of requests).\n\
                     # TYPE aegis_store_calls_total counter\n\
                     aegis_store_calls_total {}\n\
                     # HELP aegis_store_coalesced_total Limited requests decided in another request's Redis call.\n\
                     # TYPE aegis_store_coalesced_total counter\n\
                     aegis_store_coalesced_total {}\n\
                     # HELP aegis_store_cached_refusals_total Limited requests refused from the local negative cache, without a Redis call.\n\
                     # TYPE aegis_store_cached_refusals_total counter\n\
                     aegis_store_cached_refusals_total {}\n",
                    c.calls, c.coalesced, c.cached_refusals
                );
            }
            let mut r = Response::new(ProxyBody::full(text));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
    }
}
