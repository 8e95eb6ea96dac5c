//! The gateway's own endpoints: `/gateway/stats` (the seed's JSON array), `/gateway/health`
//! and `/gateway/metrics` (Prometheus text). Served on the proxy listener ahead of every
//! route, or on `server.admin_listen` when it is set.

use aegis_policy::config::OnStoreError;
use aegis_policy::{JwksStatus, TargetStats};
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
            let mut text = serde_json::to_string(&stats(shared, rt)).unwrap_or_default();
            // With TLS, one more entry per certificate after the targets' (whose keys these
            // do not share): what is served and when it expires.
            if let Some(tls) = &shared.tls {
                let now = crate::time::wall().as_secs();
                let certs: Vec<serde_json::Value> = tls
                    .store
                    .load()
                    .certs
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        json!({
                            "certificate": c.cert_path,
                            "subject": c.validity.subject,
                            "names": c.names,
                            "default": i == 0,
                            "notAfter": httpdate::fmt_http_date(
                                std::time::UNIX_EPOCH
                                    + std::time::Duration::from_secs(c.validity.not_after)
                            ),
                            "expiresInSecs": c.validity.not_after as i64 - now as i64,
                        })
                    })
                    .collect();
                if !certs.is_empty() {
                    let joined = serde_json::to_string(&certs).unwrap_or_default();
                    text.pop();
                    if text.len() > 1 {
                        text.push(',');
                    }
                    text.push_str(&joined[1..]);
                }
            }
            let mut r = Response::new(ProxyBody::full(text));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        "/gateway/health" => {
            let store = &rt.store;
            let healthy = store.is_healthy();
            let deny = rt.policy.config().rate_limit.on_store_error == OnStoreError::Deny;
            let (mut status, mut word) = match (healthy, deny) {
                (true, _) => (StatusCode::OK, "ok"),
                (false, false) => (StatusCode::OK, "degraded"),
                (false, true) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            };
            let now = shared.clock.now().mono;
            let mut auth = Vec::new();
            for h in rt.jwks.iter().flatten() {
                let st = h.status(now);
                // No usable keys: its routes answer 503, so the instance is not ready.
                if !st.ready {
                    (status, word) = (StatusCode::SERVICE_UNAVAILABLE, "unavailable");
                } else if (st.stale || st.consecutive_failures > 0) && word == "ok" {
                    word = "degraded";
                }
                auth.push(json!({
                    "provider": h.section,
                    "jwksUrl": h.config.url,
                    "ready": st.ready,
                    "keys": st.keys,
                    "stale": st.stale,
                    "consecutiveFailures": st.consecutive_failures,
                    "lastError": st.last_error,
                    "ageMs": st.age.map(|a| a.as_millis() as u64),
                }));
            }
            let mut body = json!({
                "status": word,
                "routes": rt.policy.config().routes.len(),
                "store": {"kind": store.kind(), "healthy": healthy},
            });
            if !auth.is_empty() {
                body["jwks"] = serde_json::Value::Array(auth);
            }
            json_response(status, &body)
        }
        _ => {
            let mut text =
                shared
                    .metrics
                    .render(&stats(shared, rt), rt.store.kind(), rt.store.is_healthy());
            let now = shared.clock.now().mono;
            let jwks: Vec<(&str, &str, JwksStatus)> = rt
                .jwks
                .iter()
                .flatten()
                .map(|h| (h.section.as_str(), h.config.url.as_str(), h.status(now)))
                .collect();
            crate::observe::metrics::render_jwks(&mut text, &jwks);
            let caches: Vec<(String, aegis_policy::CacheStats)> = rt
                .policy
                .config()
                .providers()
                .into_iter()
                .zip(rt.token_caches.stats())
                .map(|((name, _), st)| {
                    let section = if name.is_empty() {
                        "auth".to_owned()
                    } else {
                        format!("auth_providers.{name}")
                    };
                    (section, st)
                })
                .collect();
            crate::observe::metrics::render_token_caches(&mut text, &caches);
            if let Some(tls) = &shared.tls {
                let store = tls.store.load();
                let certs: Vec<(&str, &str, u64)> = store
                    .certs
                    .iter()
                    .map(|c| {
                        (
                            c.cert_path.as_str(),
                            c.validity.subject.as_str(),
                            c.validity.not_after,
                        )
                    })
                    .collect();
                crate::observe::metrics::render_certs(&mut text, &certs);
            }
            if let crate::state::store::Store::Redis(r) = &*rt.store {
                let c = r.counts();
                crate::observe::metrics::render_store_counts(
                    &mut text,
                    c.calls,
                    c.coalesced,
                    c.cached_refusals,
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
