//! Request heads: parsed with `httparse` out of the connection's read buffer into the
//! connection's one `Parts`, with the framing decided strictly (RFC 9112 §6.3).

use std::mem::MaybeUninit;

use http::header::HOST;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};

use super::framing::{Framing, MAX_HEADERS, Meta};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// 400: not HTTP/1.x, or malformed.
    Bad(String),
    /// 414
    UriTooLong,
    /// 431
    HeadersTooLarge,
    /// 501: a transfer coding other than chunked.
    UnsupportedCoding,
    /// The HTTP/2 connection preface (`PRI * HTTP/2.0`): hand the connection to HTTP/2.
    H2Preface,
}

impl HeadError {
    pub fn status(&self) -> StatusCode {
        match self {
            HeadError::Bad(_) | HeadError::H2Preface => StatusCode::BAD_REQUEST,
            HeadError::UriTooLong => StatusCode::URI_TOO_LONG,
            HeadError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
        }
    }

    pub fn message(&self) -> String {
        match self {
            HeadError::Bad(why) => format!("malformed request: {why}"),
            HeadError::UriTooLong => "the request target is too long".into(),
            HeadError::HeadersTooLarge => "the request headers are too large".into(),
            HeadError::UnsupportedCoding => "only the chunked transfer coding is supported".into(),
            HeadError::H2Preface => "HTTP/2 preface on an HTTP/1.1 connection".into(),
        }
    }
}

/// What framing and connection handling need of a parsed request head (the head itself is
/// in the `Parts` it was parsed into).
#[derive(Debug, Clone, Copy)]
pub struct RequestHead {
    pub framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a `100 Continue` before its body.
    pub expect_continue: bool,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Parses a request head at the start of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the head and its length in bytes. `max_head` is the read buffer's size: a partial
/// head that fills it is refused, 414 if its request line alone is longer than `max_uri`,
/// else 431. Complete heads go to the policy, which applies the configured limits.
///
/// A complete head is parsed into `parts` (all of it replaced): a connection keeps one
/// `Parts`, so that its header map is allocated once, not per request, and the head is not
/// moved from future to future.
pub fn parse_request(
    buf: &[u8],
    max_uri: usize,
    max_head: usize,
    parts: &mut http::request::Parts,
) -> Result<Option<(usize, RequestHead)>, HeadError> {
    if buf.len() >= 3 && H2_PREFACE.starts_with(&buf[..buf.len().min(H2_PREFACE.len())]) {
        return if buf.len() >= H2_PREFACE.len() {
            Err(HeadError::H2Preface)
        } else {
            Ok(None)
        };
    }
    // Uninitialised slots: zeroing 128 of them cost more than parsing a small head.
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let n = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_head {
                Err(too_large(buf, max_uri))
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::HeadersTooLarge),
        Err(e) => return Err(HeadError::Bad(e.to_string())),
    };
    // Within the buffer, size limits are the policy's to answer (414/431 from on_request).
    let path = req.path.unwrap_or("/");
    let method = Method::from_bytes(req.method.unwrap_or("GET").as_bytes())
        .map_err(|_| HeadError::Bad("invalid method".into()))?;
    let uri = Uri::try_from(path.as_bytes())
        .map_err(|e| HeadError::Bad(format!("invalid request target: {e}")))?;
    let version = if req.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let meta = header_map(req.headers, &mut parts.headers)?;
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is refused.
    if version == Version::HTTP_11 && meta.hosts == 0 {
        return Err(HeadError::Bad("no Host header".into()));
    }
    // RFC 9112 §3.2: more than one Host, or a Host that names another authority than an
    // absolute-form target, is refused (two hosts that two hops could read differently).
    if meta.hosts > 1 {
        return Err(HeadError::Bad("more than one Host header".into()));
    }
    if let (Some(authority), Some(host)) = (uri.authority(), parts.headers.get(HOST))
        && !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
    {
        return Err(HeadError::Bad(
            "the Host header differs from the request target's authority".into(),
        ));
    }
    let framing = request_framing(&meta, version)?;
    let keep_alive = meta.keep_alive(version);
    let expect_continue = version == Version::HTTP_11 && meta.expect_continue;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.extensions.clear();
    Ok(Some((
        n,
        RequestHead {
            framing,
            keep_alive,
            expect_continue,
        },
    )))
}

/// A head that hit the size limit: 414 if the request line alone is past it, else 431.
fn too_large(buf: &[u8], max_uri: usize) -> HeadError {
    let line = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    if line > max_uri {
        HeadError::UriTooLong
    } else {
        HeadError::HeadersTooLarge
    }
}

/// The header map of a parsed head, in `headers` (emptied first; its allocation is kept, or
/// taken from the thread's spares when the connection parked it while idle).
/// Each value is copied out of the read buffer on its own: for the handful of headers a
/// request carries that is cheaper than slicing one shared copy (an allocation to share it,
/// then an atomic count per value). Room is made for one more (`X-User-ID`, set by the
/// policy) so that the map does not regrow.
fn header_map(parsed: &[httparse::Header<'_>], headers: &mut HeaderMap) -> Result<Meta, HeadError> {
    super::buf::unpark_headers(headers);
    headers.clear();
    headers.reserve(parsed.len() + 1);
    let mut meta = Meta::default();
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::Bad(format!("invalid header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| HeadError::Bad(format!("invalid value for header {}", h.name)))?;
        meta.see(&name, h.value);
        headers.append(name, value);
    }
    Ok(meta)
}

/// What framing and connection handling need from a head, gathered while its headers are
/// RFC 9112 §6.3 for requests, strictly: a request with both `Transfer-Encoding` and
/// `Content-Length`, or with differing lengths, is refused (the classic smuggling shapes).
fn request_framing(meta: &Meta, version: Version) -> Result<Framing, HeadError> {
    if meta.te {
        if meta.cl.is_some() || meta.cl_bad {
            return Err(HeadError::Bad(
                "both Transfer-Encoding and Content-Length".into(),
            ));
        }
        if version == Version::HTTP_10 {
            return Err(HeadError::Bad(
                "Transfer-Encoding in an HTTP/1.0 request".into(),
            ));
        }
        // Not chunked last: the length cannot be known (400); chunked after another coding:
        // a coding this gateway does not decode (501).
        return if meta.te_chunked_not_last {
            Err(HeadError::Bad(
                "chunked is not the last transfer coding, or is applied twice".into(),
            ))
        } else if !meta.te_last_chunked {
            Err(HeadError::Bad(
                "Transfer-Encoding does not end in chunked".into(),
            ))
        } else if meta.te_codings == 1 {
            Ok(Framing::Chunked)
        } else {
            Err(HeadError::UnsupportedCoding)
        };
    }
    match meta.content_length() {
        Ok(n) => Ok(Framing::Length(n.unwrap_or(0))),
        Err(()) => Err(HeadError::Bad("invalid Content-Length".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> http::request::Parts {
        http::Request::new(()).into_parts().0
    }

    #[test]
    fn a_connections_parts_are_replaced_by_each_head() {
        let mut p = parts();
        let first = b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nX-Old: 1\r\nContent-Length: 3\r\n\r\n";
        let (n, _) = parse_request(first, 8192, 65536, &mut p).unwrap().unwrap();
        assert_eq!(n, first.len());
        assert_eq!(
            (p.method.as_str(), p.uri.to_string()),
            ("POST", "/a?b=c".into())
        );
        assert_eq!(p.headers.len(), 3);
        // A partial head leaves them alone; the next complete one replaces all of them.
        assert!(
            parse_request(b"GET /next HTTP/1.0\r\n", 8192, 65536, &mut p)
                .unwrap()
                .is_none()
        );
        assert_eq!(p.uri, "/a?b=c");
        parse_request(
            b"GET /next HTTP/1.0\r\nAccept: */*\r\n\r\n",
            8192,
            65536,
            &mut p,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (p.method.as_str(), p.uri.to_string()),
            ("GET", "/next".into())
        );
        assert_eq!(p.version, Version::HTTP_10);
        assert_eq!(p.headers.len(), 1);
        assert_eq!(p.headers["accept"], "*/*");
    }

    #[test]
    fn request_framing_refuses_smuggling_shapes() {
        let parse = |s: &str| {
            parse_request(s.as_bytes(), 8192, 65536, &mut parts()).map(|o| o.map(|h| h.1))
        };
        let ok = parse("POST /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(ok.framing, Framing::Length(3));
        assert!(ok.keep_alive);
        let chunked = parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(chunked.framing, Framing::Chunked);
        for bad in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\n",
            "GARBAGE\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            "GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n",
        ] {
            assert!(matches!(parse(bad), Err(HeadError::Bad(_))), "{bad}");
        }
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
                .unwrap_err(),
            HeadError::UnsupportedCoding
        );
        let absolute = parse("GET http://A:80/x HTTP/1.1\r\nHost: a:80\r\n\r\n");
        assert!(
            absolute.unwrap().is_some(),
            "the same authority, another case"
        );
        let ten = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!ten.keep_alive);
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().map(|_| ()),
            None
        );
        assert_eq!(
            parse("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap_err(),
            HeadError::H2Preface
        );
    }

    #[test]
    fn oversized_heads_get_414_or_431() {
        let long_uri = format!("GET /{} HTTP/1.1\r\n", "a".repeat(100));
        assert_eq!(
            parse_request(long_uri.as_bytes(), 50, 80, &mut parts()).unwrap_err(),
            HeadError::UriTooLong
        );
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n", "b".repeat(100));
        assert_eq!(
            parse_request(big.as_bytes(), 50, 80, &mut parts()).unwrap_err(),
            HeadError::HeadersTooLarge
        );
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        /// A head written back from what the parser made of it.
        fn unparse(p: &http::request::Parts) -> Vec<u8> {
            let mut out = format!(
                "{} {} {}\r\n",
                p.method,
                p.uri,
                if p.version == Version::HTTP_10 {
                    "HTTP/1.0"
                } else {
                    "HTTP/1.1"
                }
            )
            .into_bytes();
            for (k, v) in &p.headers {
                out.extend_from_slice(k.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            out
        }

        fn header() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("Host: x".to_owned()),
                Just("Host: y".to_owned()),
                "Content-Length: [0-9]{1,3}",
                Just("Content-Length: 1, 2".to_owned()),
                Just("Transfer-Encoding: chunked".to_owned()),
                Just("Transfer-Encoding: gzip, chunked".to_owned()),
                Just("Transfer-Encoding: chunked, chunked".to_owned()),
                Just("Connection: close".to_owned()),
                Just("Connection: keep-alive".to_owned()),
                Just("Expect: 100-continue".to_owned()),
                "X-[A-Za-z]{1,8}: [ -~]{0,12}",
                "[A-Za-z_-]{1,6}:[ \t]?[a-z]{0,4}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Any bytes: an answer, never a panic; a complete head never claims more bytes
            /// than it was given.
            #[test]
            fn any_bytes_get_an_answer(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
                let mut p = http::Request::new(()).into_parts().0;
                if let Ok(Some((n, _))) = parse_request(&bytes, 8192, 65536, &mut p) {
                    prop_assert!(n <= bytes.len());
                }
            }

            /// Heads built from the headers that decide framing: every one accepted reads
            /// back, written again, as the same framing, connection handling and headers.
            #[test]
            fn accepted_heads_round_trip(
                method in prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("HEAD")],
                path in "/[a-z0-9/._-]{0,12}",
                ten in any::<bool>(),
                headers in prop::collection::vec(header(), 0..6),
            ) {
                let version = if ten { "HTTP/1.0" } else { "HTTP/1.1" };
                let mut head = format!("{method} {path} {version}\r\n");
                for h in &headers {
                    head.push_str(h);
                    head.push_str("\r\n");
                }
                head.push_str("\r\n");
                let mut p = http::Request::new(()).into_parts().0;
                let Ok(Some((n, first))) = parse_request(head.as_bytes(), 8192, 65536, &mut p) else {
                    return Ok(());
                };
                prop_assert_eq!(n, head.len());
                let again = unparse(&p);
                let mut q = http::Request::new(()).into_parts().0;
                let (m, second) = parse_request(&again, 8192, 65536, &mut q)
                    .expect("an accepted head, written again, is accepted")
                    .expect("complete");
                prop_assert_eq!(m, again.len());
                prop_assert_eq!(first.framing, second.framing);
                prop_assert_eq!(first.keep_alive, second.keep_alive);
                prop_assert_eq!(first.expect_continue, second.expect_continue);
                prop_assert_eq!(&p.headers, &q.headers);
                prop_assert_eq!(&p.method, &q.method);
                prop_assert_eq!(&p.uri, &q.uri);
            }
        }
    }
}
