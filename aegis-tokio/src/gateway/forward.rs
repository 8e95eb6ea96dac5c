//! The client's request readied to go upstream: hop-by-hop headers removed, the identity
//! headers set, and the values of `X-Forwarded-For`/`-Host` worked out.

use aegis_policy::{Forward, header};
use http::header::{CONNECTION, HOST};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use crate::headers::{X_CLIENT_CERT_SUBJECT, X_FORWARDED_FOR};
use crate::record::Peer;

/// Values of the headers the gateway sets upstream, taken from the client's request.
pub(super) struct Forwarding {
    /// `X-Forwarded-Host` when the URI has an authority (else the client's `Host`, which the
    /// pool does not forward as such).
    pub(super) host: Option<HeaderValue>,
    /// `X-Forwarded-For` when the client sent one: its values and the peer, comma-joined.
    pub(super) chain: Option<HeaderValue>,
}

/// Readies the client's request to go upstream (the pool writes it from borrowed parts):
/// hop-by-hop headers removed, the identity headers set, `X-Forwarded-For` taken out to be
/// written by the pool (which writes the target's `Host`, not the client's). A path the policy
/// rewrote is checked.
pub(super) fn forwarding(
    headers: &mut HeaderMap,
    uri: &Uri,
    peer: &Peer,
    fwd: &Forward,
    rewritten: Option<&str>,
) -> Result<Forwarding, http::uri::InvalidUri> {
    if let Some(path_and_query) = rewritten {
        PathAndQuery::try_from(path_and_query)?;
    }
    strip_hop_by_hop(headers);
    fwd.apply_request_headers(headers);
    // The verified client certificate's subject (mTLS) is the gateway's to say, never the
    // client's.
    if header(headers, &X_CLIENT_CERT_SUBJECT).is_some() {
        headers.remove(&X_CLIENT_CERT_SUBJECT);
    }
    if let Some(s) = &peer.client_subject {
        headers.insert(X_CLIENT_CERT_SUBJECT, s.clone());
    }
    Ok(Forwarding {
        host: uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        chain: forwarded_for_chain(headers, peer),
    })
}

/// The request's host as routing sees it: the URI's authority (HTTP/2, absolute form) or the
/// `Host` header.
pub(super) fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    match uri.authority() {
        Some(a) => Some(a.as_str()),
        None => header(headers, &HOST).and_then(|h| h.to_str().ok()),
    }
}

/// When the client sent `X-Forwarded-For`: its values with the peer appended (one
/// comma-joined value), the client's removed from `headers`.
fn forwarded_for_chain(headers: &mut HeaderMap, peer: &Peer) -> Option<HeaderValue> {
    header(headers, &X_FORWARDED_FOR)?;
    let mut joined = String::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            joined.push_str(s);
            joined.push_str(", ");
        }
    }
    headers.remove(&X_FORWARDED_FOR);
    joined.push_str(&peer.addr.ip().to_string());
    HeaderValue::from_str(&joined).ok()
}

/// Removes the headers that describe one connection and must not be forwarded (RFC 9110
/// §7.6.1): `Connection` and every header it names, and the fixed hop-by-hop set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let hop = |n: &HeaderName| crate::h1::is_hop_by_hop(n.as_str().as_bytes());
    // Most messages have none: one pass over the names instead of a lookup for each.
    if !headers.keys().any(hop) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    let fixed: Vec<HeaderName> = headers.keys().filter(|n| hop(n)).cloned().collect();
    for n in fixed {
        headers.remove(n);
    }
}
