//! Whether a request may be sent again after the connection it went out on failed, and what
//! such a failure says about the target.
//!
//! A pooled keep-alive connection can be closed by the upstream just as a request goes out on
//! it (the upstream's idle timer fired). RFC 9110 §9.2.2: a proxy must not automatically
//! resend a request that is not idempotent, since the upstream may have acted on it. The
//! gateway resends on a fresh connection only what the upstream cannot have acted on, or what
//! is safe to repeat; a request body already streamed cannot be sent twice at all.

use http::Method;

/// RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT and DELETE.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A request whose pooled connection turned out closed under it (no response byte came):
/// may it go again on a fresh connection? Only without a body (a streamed body is gone), and
/// only if none of it was written or it is idempotent.
#[must_use]
pub fn resend_on_stale(method: &Method, any_written: bool, has_body: bool) -> bool {
    !has_body && (!any_written || is_idempotent(method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_upstream_cannot_have_acted_on_or_may_repeat() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(resend_on_stale(&m, true, false), "{m}");
            assert!(!resend_on_stale(&m, true, true), "{m} with a body");
        }
        for m in [
            Method::POST,
            Method::PATCH,
            Method::from_bytes(b"PURGE").unwrap(),
        ] {
            assert!(!resend_on_stale(&m, true, false), "{m} once written");
            assert!(resend_on_stale(&m, false, false), "{m} never written");
            assert!(!resend_on_stale(&m, false, true), "{m} with a body");
        }
    }
}
