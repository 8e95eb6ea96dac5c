//! Response heads from upstreams: parsed with `httparse`, the headers kept as the raw lines
//! that go to the client (minus this hop's), and the framing of the body that follows.

use std::mem::MaybeUninit;

use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};

use super::framing::{Framing, MAX_HEADERS, Meta, tokens};

/// A response's headers as they go to the client: the upstream's lines (each
/// `name: value\r\n`, validated by httparse) minus the hop-by-hop ones and `Content-Length`,
/// gathered while parsing so that writing them is one copy, without a header map.
#[derive(Debug, Default)]
pub struct RawHeaders {
    bytes: Vec<u8>,
    /// The upstream's `Content-Length` (written back only where this hop does not frame the
    /// body: HEAD, 304).
    pub content_length: Option<u64>,
    pub has_date: bool,
    /// A line may carry a name the gateway sets itself (request id, rate-limit headers): the
    /// writer must filter.
    pub may_collide: bool,
    /// The transfer codings the upstream applied besides `chunked` (`gzip`), comma-separated:
    /// the body is relayed with them still applied, so the client must be told.
    pub codings: Vec<u8>,
}

/// What a response header is to this hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Passed on as it is.
    Other,
    /// Passed on; the client will not get `Date` twice.
    Date,
    /// Passed on unless the gateway sets the same name (`X-Request-ID*`, `RateLimit*`,
    /// `Retry-After`).
    MayCollide,
    Connection,
    TransferEncoding,
    ContentLength,
    /// The rest of the hop-by-hop set (RFC 9110 §7.6.1): never passed on.
    HopByHop,
}

/// Whether a header describes one connection and is never forwarded (RFC 9110 §7.6.1):
/// `Connection`, `Transfer-Encoding` and the rest of the hop-by-hop set. The one list, for
/// raw response lines and header maps alike.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    matches!(
        classify(name),
        Kind::Connection | Kind::TransferEncoding | Kind::HopByHop
    )
}

/// Classifies a response header name by its length first: one comparison for most names.
fn classify(name: &[u8]) -> Kind {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 if is(b"te") => Kind::HopByHop,
        4 if is(b"date") => Kind::Date,
        7 if is(b"trailer") || is(b"upgrade") => Kind::HopByHop,
        10 if is(b"connection") => Kind::Connection,
        10 if is(b"keep-alive") => Kind::HopByHop,
        11 if is(b"retry-after") => Kind::MayCollide,
        14 if is(b"content-length") => Kind::ContentLength,
        // RFC 9113 §3.1 (RFC 7540 §3.2.1): connection-specific, sent with `Upgrade: h2c`.
        14 if is(b"http2-settings") => Kind::HopByHop,
        16 if is(b"proxy-connection") => Kind::HopByHop,
        17 if is(b"transfer-encoding") => Kind::TransferEncoding,
        19 if is(b"proxy-authorization") => Kind::HopByHop,
        _ if starts_with_ci(name, b"x-request-id") || starts_with_ci(name, b"ratelimit") => {
            Kind::MayCollide
        }
        _ => Kind::Other,
    }
}

impl RawHeaders {
    /// Gathers a response's headers from `head` (the bytes httparse parsed them from) and the
    /// framing facts about them into `raw` (replacing what it held; an upstream connection
    /// keeps one); `Connection`-named headers are dropped too.
    fn fill(raw: &mut RawHeaders, head: &[u8], parsed: &[httparse::Header<'_>], meta: &mut Meta) {
        raw.bytes.clear();
        raw.codings.clear();
        raw.has_date = false;
        raw.may_collide = false;
        let mut named = false;
        for h in parsed {
            let name = h.name.as_bytes();
            match classify(name) {
                Kind::Other => {}
                Kind::Date => raw.has_date = true,
                Kind::MayCollide => raw.may_collide = true,
                Kind::Connection => {
                    meta.connection(h.value);
                    named |= tokens(h.value).any(|t| {
                        !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
                    });
                    continue;
                }
                Kind::TransferEncoding => {
                    meta.transfer_encoding(h.value);
                    for t in tokens(h.value).filter(|t| !t.eq_ignore_ascii_case(b"chunked")) {
                        if !raw.codings.is_empty() {
                            raw.codings.extend_from_slice(b", ");
                        }
                        raw.codings.extend_from_slice(t);
                    }
                    continue;
                }
                Kind::ContentLength => {
                    meta.content_length_value(h.value);
                    continue;
                }
                Kind::HopByHop => continue,
            }
            // The line as received, from its name to the end of its value (httparse checked
            // it; its slices point into `head`), with a CRLF.
            match line_in(head, name, h.value) {
                Some(line) => raw.bytes.extend_from_slice(line),
                None => {
                    raw.bytes.extend_from_slice(name);
                    raw.bytes.extend_from_slice(b": ");
                    raw.bytes.extend_from_slice(h.value);
                }
            }
            raw.bytes.extend_from_slice(b"\r\n");
        }
        if named {
            raw.drop_connection_named(parsed);
        }
        raw.content_length = meta.cl;
    }

    /// Drops the headers a `Connection` header names (rare: a second pass).
    fn drop_connection_named(&mut self, parsed: &[httparse::Header<'_>]) {
        let named: Vec<&[u8]> = parsed
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .collect();
        let mut kept = Vec::with_capacity(self.bytes.len());
        for (name, _, line) in self.lines() {
            if !named.iter().any(|n| name.eq_ignore_ascii_case(n)) {
                kept.extend_from_slice(line);
            }
        }
        self.bytes = kept;
    }

    /// All the lines, as one slice.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Each header as (name, value, whole line with its CRLF).
    pub fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8], &[u8])> {
        let mut rest = &self.bytes[..];
        std::iter::from_fn(move || {
            let end = rest.iter().position(|&b| b == b'\n')? + 1;
            let (line, tail) = rest.split_at(end);
            rest = tail;
            let colon = line.iter().position(|&b| b == b':')?;
            Some((&line[..colon], line[colon + 1..end - 2].trim_ascii(), line))
        })
    }

    /// The same headers in a map (for a client hyper serves over HTTP/2).
    pub fn to_map(&self, map: &mut HeaderMap) {
        for (name, value, _) in self.lines() {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                map.append(n, v);
            }
        }
        if let Some(n) = self.content_length {
            map.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

/// The bytes of `head` from `name` to the end of `value`, when both are slices of it.
fn line_in<'a>(head: &'a [u8], name: &[u8], value: &[u8]) -> Option<&'a [u8]> {
    let base = head.as_ptr() as usize;
    let start = (name.as_ptr() as usize).checked_sub(base)?;
    let end = (value.as_ptr() as usize)
        .checked_sub(base)?
        .checked_add(value.len())?;
    if value.is_empty() || start >= end {
        return None;
    }
    head.get(start..end)
}

fn starts_with_ci(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// A parsed response head (its headers are in the [`RawHeaders`] it was parsed with).
#[derive(Debug, Clone, Copy)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub framing: Framing,
    /// The connection may carry another request after this response's body.
    pub keep_alive: bool,
}

/// Parses a response head at the start of `buf` (`Ok(None)`: need more bytes), its headers
/// into `raw`. `head_request`: the request was HEAD, so no body follows whatever the headers
/// say.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    max_head: usize,
    raw: &mut RawHeaders,
) -> Result<Option<(usize, ResponseHead)>, String> {
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let n = match config.parse_response_with_uninit_headers(&mut resp, buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(format!("response head larger than {max_head} bytes"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed response: {e}")),
    };
    let status = StatusCode::from_u16(resp.code.unwrap_or(0))
        .map_err(|_| "malformed response: invalid status code".to_owned())?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut meta = Meta::default();
    RawHeaders::fill(raw, &buf[..n], resp.headers, &mut meta);
    let mut keep_alive = meta.keep_alive(version);
    if meta.te {
        // RFC 9112 §6.1: an HTTP/1.0 message has no transfer codings; chunked is applied
        // once, last.
        if version == Version::HTTP_10 {
            return Err("malformed response: Transfer-Encoding in an HTTP/1.0 response".into());
        }
        if meta.te_chunked_not_last {
            return Err("malformed response: chunked is not the last transfer coding".into());
        }
        // Both Transfer-Encoding and Content-Length (§6.3): the coding frames the body, the
        // length is not relayed, and a connection that said both is not used again.
        if meta.cl.is_some() || meta.cl_bad {
            keep_alive = false;
            raw.content_length = None;
        }
    }
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT;
    if bodiless {
        // A 1xx or 204 has no content and never a length (RFC 9110 §8.6).
        raw.content_length = None;
    }
    let framing = if head_request || bodiless || status == StatusCode::NOT_MODIFIED {
        Framing::Length(0)
    } else if meta.te {
        if meta.te_last_chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match meta.content_length() {
            Ok(Some(n)) => Framing::Length(n),
            Ok(None) => Framing::Close,
            Err(()) => return Err("malformed response: invalid Content-Length".into()),
        }
    };
    if framing == Framing::Close {
        keep_alive = false;
    }
    Ok(Some((
        n,
        ResponseHead {
            status,
            version,
            framing,
            keep_alive,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::encode::put_chunk;

    #[test]
    fn response_framing() {
        let parse = |s: &str, head: bool| {
            parse_response(s.as_bytes(), head, 65536, &mut RawHeaders::default())
                .unwrap()
                .unwrap()
                .1
        };
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false).framing,
            Framing::Length(5)
        );
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).framing,
            Framing::Length(0)
        );
        assert_eq!(
            parse("HTTP/1.1 204 No Content\r\n\r\n", false).framing,
            Framing::Length(0)
        );
        let close = parse("HTTP/1.0 200 OK\r\n\r\n", false);
        assert_eq!(close.framing, Framing::Close);
        assert!(!close.keep_alive);
        assert_eq!(
            parse(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            )
            .framing,
            Framing::Chunked
        );
        let mut out = Vec::new();
        put_chunk(&mut out, &[b'x'; 26]);
        assert_eq!(&out[..4], b"1a\r\n");
    }

    #[test]
    fn response_headers_pass_as_received_minus_this_hops() {
        let mut raw = RawHeaders::default();
        let head = "HTTP/1.1 200 OK\r\nContent-Type:text/plain\r\nX-Empty:\r\n\
                    Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\n\
                    TE: trailers\r\nContent-Length: 2\r\nVary:   Accept  \r\n\
                    Date: Sun, 29 Nov 2026 08:00:00 GMT\r\nRetry-After: 3\r\n\r\nok";
        let (n, h) = parse_response(head.as_bytes(), false, 65536, &mut raw)
            .unwrap()
            .unwrap();
        assert_eq!(&head[n..], "ok");
        assert_eq!(h.framing, Framing::Length(2));
        assert!(h.keep_alive);
        assert_eq!(raw.content_length, Some(2));
        assert!(raw.has_date);
        assert!(raw.may_collide);
        assert_eq!(
            String::from_utf8_lossy(raw.as_bytes()),
            "Content-Type:text/plain\r\nX-Empty: \r\nVary:   Accept\r\n\
             Date: Sun, 29 Nov 2026 08:00:00 GMT\r\nRetry-After: 3\r\n"
        );
        let lines: Vec<_> = raw
            .lines()
            .map(|(n, v, _)| (n.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(lines[0], (b"Content-Type".to_vec(), b"text/plain".to_vec()));
        assert_eq!(lines[2], (b"Vary".to_vec(), b"Accept".to_vec()));
        // The same RawHeaders refilled by the connection's next response: nothing carried over.
        let plain = "HTTP/1.1 200 OK\r\nx-request-idx: a\r\nratelimit-policy: b\r\n\r\n";
        parse_response(plain.as_bytes(), false, 65536, &mut raw)
            .unwrap()
            .unwrap();
        assert!(raw.may_collide && !raw.has_date);
        assert_eq!(raw.content_length, None);
        assert_eq!(
            raw.as_bytes(),
            b"x-request-idx: a\r\nratelimit-policy: b\r\n"
        );
        let plain = "HTTP/1.1 200 OK\r\nX-Other: a\r\n\r\n";
        let (_, h) = parse_response(plain.as_bytes(), false, 65536, &mut raw)
            .unwrap()
            .unwrap();
        assert!(!raw.may_collide && !raw.has_date);
        assert_eq!(h.framing, Framing::Close);
    }

    /// RFC 9112's rules for responses: a faulty framing is not reused, an impossible one is
    /// refused, a 204 has no length, codings besides chunked stay visible.
    #[test]
    fn faulty_response_framing() {
        let mut raw = RawHeaders::default();
        let mut parse = |s: &str| {
            parse_response(s.as_bytes(), false, 65536, &mut raw).map(|o| o.map(|(_, h)| h))
        };
        let both =
            parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(both.framing, Framing::Chunked);
        assert!(!both.keep_alive, "a response with both is not pooled");
        assert_eq!(raw.content_length, None);
        let err = |s: &str| parse_response(s.as_bytes(), false, 65536, &mut RawHeaders::default());
        assert!(err("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(err("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").is_err());
        assert!(err("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        let mut raw = RawHeaders::default();
        let no_content = parse_response(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            false,
            65536,
            &mut raw,
        );
        assert_eq!(no_content.unwrap().unwrap().1.framing, Framing::Length(0));
        assert_eq!(raw.content_length, None, "a 204 never carries a length");
        let gz = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
            65536,
            &mut raw,
        );
        let gz = gz.unwrap().unwrap().1;
        assert_eq!((gz.framing, gz.keep_alive), (Framing::Chunked, true));
        assert_eq!(raw.codings, b"gzip");
        let close = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            false,
            65536,
            &mut raw,
        );
        assert_eq!(close.unwrap().unwrap().1.framing, Framing::Close);
        assert_eq!(raw.codings, b"gzip");
        parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n",
            false,
            65536,
            &mut raw,
        )
        .unwrap();
        assert!(raw.codings.is_empty(), "refilled for the next response");
    }
}
