//! Answers the gateway makes itself: a policy [`Reply`] (401, 404, 429, 503, ...) or a JSON
//! error of the shell's own, as HTTP responses.

use aegis_policy::Reply;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use super::body::ProxyBody;
use crate::record::Exchange;

/// A policy reply as an HTTP response.
/// A policy reply as an HTTP response.
pub(super) fn reply(r: Reply, ex: &mut Exchange) -> Response<ProxyBody> {
    ex.reason = r.reason.label();
    if let Some(id) = r.route {
        ex.route = Some(id.0);
    }
    let mut resp = Response::new(ProxyBody::full(r.body));
    *resp.status_mut() = r.status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (k, v) in r.headers {
        h.append(k, v);
    }
    resp
}

/// A JSON error the shell itself produces: `{"error": code, "message": ...}`.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<ProxyBody> {
    json_response(status, &json!({"error": code, "message": message.into()}))
}

pub fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
