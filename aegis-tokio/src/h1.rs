//! The HTTP/1.1 wire format, for both ends of the proxy: heads parsed with `httparse` out of a
//! reused read buffer (header values are slices of one copy of the head, not one allocation
//! each), body framing (RFC 9112 §6), the chunked decoder, and heads written into a reused
//! write buffer.
//!
//! No I/O happens here except [`ReadBuf::poll_fill`]; the connection loops live in
//! `downstream` (clients) and `pool` (upstreams).

use std::io;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use tokio::io::AsyncRead;
use tokio::net::TcpStream;

/// Header lines parsed per head; a head with more is refused (431).
pub const MAX_HEADERS: usize = 128;
/// Bytes read from a socket at a time once the buffer has room for no more.
const READ_CHUNK: usize = 16 * 1024;
/// The longest chunk-extension or trailer section accepted.
const MAX_CHUNK_META: usize = 16 * 1024;

// ---------------------------------------------------------------------------------------------
// The read buffer.

/// A connection's read buffer: bytes `start..end` are read and not yet consumed. It is zeroed
/// once when grown and reused for every message on the connection.
#[derive(Debug)]
pub struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    pub fn new() -> ReadBuf {
        ReadBuf {
            data: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
        }
    }

    /// Read and not yet consumed.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// The unread bytes as a new owned buffer (for handing a connection to another codec).
    pub fn take_filled(&mut self) -> Vec<u8> {
        let v = self.filled().to_vec();
        self.start = 0;
        self.end = 0;
        v
    }

    /// Makes room for at least one read, growing up to `limit` bytes of content in total.
    /// False when the buffer already holds `limit` unconsumed bytes.
    fn make_room(&mut self, limit: usize) -> bool {
        if self.end < self.data.len() {
            return true;
        }
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            return true;
        }
        if self.data.len() >= limit {
            return false;
        }
        let grown = (self.data.len() * 2).min(limit.max(READ_CHUNK));
        self.data.resize(grown, 0);
        true
    }

    /// Reads once from `io` into the free space, growing the buffer up to `limit` bytes.
    /// `Ok(0)` is end of stream; `Err(OutOfMemory)` means the buffer is full.
    ///
    /// Through `AsyncRead::poll_read`, not `try_read`: tokio's `poll_read` takes a short read
    /// to mean the socket is drained (edge-triggered readiness) and spares the next read's
    /// `EAGAIN` system call; `try_read` does not.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut TcpStream,
        limit: usize,
    ) -> Poll<io::Result<usize>> {
        if !self.make_room(limit) {
            return Poll::Ready(Err(io::ErrorKind::OutOfMemory.into()));
        }
        let mut rb = tokio::io::ReadBuf::new(&mut self.data[self.end..]);
        ready!(Pin::new(io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }
}

impl Default for ReadBuf {
    fn default() -> Self {
        ReadBuf::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Framing.

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (0: no body).
    Length(u64),
    Chunked,
    /// Until the peer closes (responses only).
    Close,
}

/// Why a head could not be used, with the status a client gets for it.
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
    if version == Version::HTTP_11 && !meta.host {
        return Err(HeadError::Bad("no Host header".into()));
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

/// The header map of a parsed head, in `headers` (emptied first; its allocation is kept).
/// Each value is copied out of the read buffer on its own: for the handful of headers a
/// request carries that is cheaper than slicing one shared copy (an allocation to share it,
/// then an atomic count per value). Room is made for one more (`X-User-ID`, set by the
/// policy) so that the map does not regrow.
fn header_map(parsed: &[httparse::Header<'_>], headers: &mut HeaderMap) -> Result<Meta, HeadError> {
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
/// read: one pass, no map lookups afterwards.
#[derive(Debug, Default)]
struct Meta {
    host: bool,
    /// `Transfer-Encoding` was sent: its codings, and whether the last one is `chunked`.
    te: bool,
    te_codings: usize,
    te_last_chunked: bool,
    /// `Content-Length`: the value all of its values agree on; `cl_bad` if they do not, or
    /// one is not a number.
    cl: Option<u64>,
    cl_bad: bool,
    /// `Connection` tokens.
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl Meta {
    fn see(&mut self, name: &HeaderName, value: &[u8]) {
        if name == HOST {
            self.host = true;
        } else if name == CONTENT_LENGTH {
            self.content_length_value(value);
        } else if name == TRANSFER_ENCODING {
            self.transfer_encoding(value);
        } else if name == CONNECTION {
            self.connection(value);
        } else if name == EXPECT {
            self.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }

    fn content_length_value(&mut self, value: &[u8]) {
        for part in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            match parse_length(part) {
                Some(n) if self.cl.is_none_or(|c| c == n) => self.cl = Some(n),
                _ => self.cl_bad = true,
            }
        }
    }

    fn transfer_encoding(&mut self, value: &[u8]) {
        self.te = true;
        for t in tokens(value) {
            self.te_codings += 1;
            self.te_last_chunked = t.eq_ignore_ascii_case(b"chunked");
        }
    }

    fn connection(&mut self, value: &[u8]) {
        for t in tokens(value) {
            self.close |= t.eq_ignore_ascii_case(b"close");
            self.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
        }
    }

    /// Whether the sender wants the connection kept after this message.
    fn keep_alive(&self, version: Version) -> bool {
        if version == Version::HTTP_10 {
            self.keep_alive
        } else {
            !self.close
        }
    }

    /// All `Content-Length` values agree: that value; none: `None`.
    fn content_length(&self) -> Result<Option<u64>, ()> {
        if self.cl_bad { Err(()) } else { Ok(self.cl) }
    }
}

/// The non-empty comma-separated tokens of a header value.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// A decimal length of at most 19 digits.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

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
        return if !meta.te_last_chunked {
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
    let framing = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
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

// ---------------------------------------------------------------------------------------------
// Bodies.

/// What a body decoder made of the buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes at this range of the input; consume up to its end.
    Data(Range<usize>),
    /// The body ended after `usize` bytes of input.
    End(usize),
    /// All input consumed (this many bytes), more is needed.
    More(usize),
}

/// What [`BodyDecoder::next`] got.
#[derive(Debug)]
pub enum Step {
    Data(bytes::Bytes),
    End,
    /// Read more first.
    More,
}

/// Decodes a body of any framing out of successive buffers.
#[derive(Debug, Clone)]
pub enum BodyDecoder {
    Length(u64),
    Chunked(Chunked),
    Close,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> BodyDecoder {
        match framing {
            Framing::Length(n) => BodyDecoder::Length(n),
            Framing::Chunked => BodyDecoder::Chunked(Chunked::default()),
            Framing::Close => BodyDecoder::Close,
        }
    }

    /// Whether the body is over (nothing more to read).
    pub fn is_done(&self) -> bool {
        match self {
            BodyDecoder::Length(n) => *n == 0,
            BodyDecoder::Chunked(c) => c.state == ChunkState::Done,
            BodyDecoder::Close => false,
        }
    }

    /// Bytes still to come when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            BodyDecoder::Length(n) => Some(*n),
            _ => None,
        }
    }

    /// One step out of a connection's buffer: a frame's bytes (copied out and consumed), the
    /// body's end, or `More` when the buffer holds no more of it. Both ends of the proxy read
    /// bodies through this.
    pub fn next(&mut self, rbuf: &mut ReadBuf) -> Result<Step, &'static str> {
        if rbuf.is_empty() && !self.is_done() {
            return Ok(Step::More);
        }
        Ok(match self.decode(rbuf.filled())? {
            Decoded::Data(r) => {
                let data = bytes::Bytes::copy_from_slice(&rbuf.filled()[r.clone()]);
                rbuf.consume(r.end);
                Step::Data(data)
            }
            Decoded::End(n) => {
                rbuf.consume(n);
                Step::End
            }
            Decoded::More(n) => {
                rbuf.consume(n);
                Step::More
            }
        })
    }

    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, &'static str> {
        match self {
            BodyDecoder::Length(0) => Ok(Decoded::End(0)),
            BodyDecoder::Length(n) => {
                if input.is_empty() {
                    return Ok(Decoded::More(0));
                }
                let take = usize::try_from(*n).unwrap_or(usize::MAX).min(input.len());
                *n -= take as u64;
                Ok(Decoded::Data(0..take))
            }
            BodyDecoder::Chunked(c) => c.decode(input),
            BodyDecoder::Close if input.is_empty() => Ok(Decoded::More(0)),
            BodyDecoder::Close => Ok(Decoded::Data(0..input.len())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    #[default]
    Size,
    /// After the size: extensions or whitespace until the line's end.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    Trailer,
    TrailerLine,
    EndLf,
    Done,
}

/// The chunked transfer coding's decoder (RFC 9112 §7.1); trailers are read and dropped.
#[derive(Debug, Clone, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    /// Extension and trailer bytes seen, bounded by [`MAX_CHUNK_META`].
    meta: usize,
}

impl Chunked {
    fn decode(&mut self, input: &[u8]) -> Result<Decoded, &'static str> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => match (b as char).to_digit(16) {
                    Some(d) => {
                        if self.digits == 15 {
                            return Err("chunk size too large");
                        }
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                    }
                    None if self.digits == 0 => return Err("invalid chunk size"),
                    None => match b {
                        b'\r' => self.state = ChunkState::SizeLf,
                        b'\n' => self.end_of_size(),
                        b';' | b' ' | b'\t' => self.state = ChunkState::Ext,
                        _ => return Err("invalid chunk size"),
                    },
                },
                ChunkState::Ext => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.end_of_size(),
                    _ => self.meta_byte()?,
                },
                ChunkState::SizeLf if b == b'\n' => self.end_of_size(),
                ChunkState::Data => {
                    let n = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    return Ok(Decoded::Data(i..i + n));
                }
                ChunkState::DataCr if b == b'\r' => self.state = ChunkState::DataLf,
                ChunkState::DataCr | ChunkState::DataLf if b == b'\n' => {
                    self.state = ChunkState::Size;
                    self.digits = 0;
                }
                ChunkState::Trailer => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' => {
                        self.state = ChunkState::Done;
                        return Ok(Decoded::End(i + 1));
                    }
                    _ => {
                        self.state = ChunkState::TrailerLine;
                        self.meta_byte()?;
                    }
                },
                ChunkState::TrailerLine => {
                    if b == b'\n' {
                        self.state = ChunkState::Trailer;
                    } else {
                        self.meta_byte()?;
                    }
                }
                ChunkState::EndLf if b == b'\n' => {
                    self.state = ChunkState::Done;
                    return Ok(Decoded::End(i + 1));
                }
                ChunkState::Done => return Ok(Decoded::End(i)),
                ChunkState::SizeLf
                | ChunkState::DataCr
                | ChunkState::DataLf
                | ChunkState::EndLf => return Err("invalid chunk framing"),
            }
            i += 1;
        }
        if self.state == ChunkState::Done {
            return Ok(Decoded::End(i));
        }
        Ok(Decoded::More(i))
    }

    fn end_of_size(&mut self) {
        self.state = if self.size == 0 {
            ChunkState::Trailer
        } else {
            ChunkState::Data
        };
    }

    fn meta_byte(&mut self) -> Result<(), &'static str> {
        self.meta += 1;
        if self.meta > MAX_CHUNK_META {
            return Err("chunk extensions or trailers too large");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Writing heads and chunks.

/// Appends `name: value\r\n`.
pub fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `HTTP/1.1 <code> <reason>\r\n`.
pub fn put_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// One chunk of the chunked coding around `data` (which must not be empty).
pub fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
    let mut hex = [0u8; 16];
    let mut i = hex.len();
    let mut n = data.len();
    loop {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The chunked coding's last chunk, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Body bytes gathered before they are written.
pub const FLUSH_AT: usize = 64 * 1024;

/// Moves a message (its head already in the buffer) and then its body's frames to a socket,
/// chunk-encoded if asked: frames that are ready are gathered up to [`FLUSH_AT`] and written
/// together, so a small message leaves in one write. Both ends of the proxy use it.
#[derive(Debug)]
pub struct Pump {
    chunked: bool,
    done: bool,
    wpos: usize,
    flush_now: bool,
    written: u64,
}

/// Why [`Pump::poll`] stopped.
#[derive(Debug)]
pub enum Pumped<E> {
    /// All written, the body's end included.
    Done,
    /// The socket takes no more for now (the task is woken when it does).
    WritePending,
    /// The body has nothing more for now, and all it gave is written.
    BodyPending,
    /// Writing failed (a write of zero bytes is `WriteZero`).
    WriteFailed(io::Error),
    BodyFailed(E),
}

impl Pump {
    /// `framing`: how the body goes on the wire (`None`: it does not).
    pub fn new(framing: Option<Framing>) -> Pump {
        Pump {
            chunked: framing == Some(Framing::Chunked),
            done: framing.is_none(),
            wpos: 0,
            flush_now: false,
            written: 0,
        }
    }

    /// Bytes written so far (progress, for a stall timeout).
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn poll<B, W>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
        mut body: Pin<&mut B>,
        io: &mut W,
    ) -> Pumped<B::Error>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + ?Sized,
        W: tokio::io::AsyncWrite + Unpin,
    {
        loop {
            if self.done || self.flush_now || buf.len() >= FLUSH_AT {
                while self.wpos < buf.len() {
                    match Pin::new(&mut *io).poll_write(cx, &buf[self.wpos..]) {
                        Poll::Ready(Ok(0)) => {
                            return Pumped::WriteFailed(io::ErrorKind::WriteZero.into());
                        }
                        Poll::Ready(Ok(n)) => {
                            self.wpos += n;
                            self.written += n as u64;
                        }
                        Poll::Ready(Err(e)) => return Pumped::WriteFailed(e),
                        Poll::Pending => return Pumped::WritePending,
                    }
                }
                buf.clear();
                self.wpos = 0;
                self.flush_now = false;
                if self.done {
                    return Pumped::Done;
                }
            }
            match body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        if self.chunked {
                            put_chunk(buf, &data);
                        } else {
                            buf.extend_from_slice(&data);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => return Pumped::BodyFailed(e),
                Poll::Ready(None) => {
                    if self.chunked {
                        buf.extend_from_slice(LAST_CHUNK);
                    }
                    self.done = true;
                }
                Poll::Pending if buf.is_empty() => return Pumped::BodyPending,
                Poll::Pending => self.flush_now = true,
            }
        }
    }
}

/// Today's `Date` header value, formatted once a second per thread.
pub fn date() -> HeaderValue {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, HeaderValue)> =
            const { std::cell::RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let v = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .unwrap_or(HeaderValue::from_static(""));
            *c = (secs, v);
        }
        c.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(mut d: BodyDecoder, wire: &[u8], step: usize) -> Result<Vec<u8>, &'static str> {
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for piece in wire.chunks(step) {
            pending.extend_from_slice(piece);
            loop {
                match d.decode(&pending)? {
                    Decoded::Data(r) => {
                        out.extend_from_slice(&pending[r.clone()]);
                        pending.drain(..r.end);
                    }
                    Decoded::End(n) => {
                        pending.drain(..n);
                        assert!(pending.is_empty(), "bytes after the body");
                        return Ok(out);
                    }
                    Decoded::More(n) => {
                        pending.drain(..n);
                        break;
                    }
                }
            }
        }
        Err("incomplete")
    }

    #[test]
    fn chunked_bodies_decode_at_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        for step in 1..wire.len() {
            let got = decode_all(BodyDecoder::new(Framing::Chunked), wire, step);
            assert_eq!(
                got.as_deref(),
                Ok(&b"hello, world0123456789"[..]),
                "step {step}"
            );
        }
        let got = decode_all(BodyDecoder::new(Framing::Chunked), b"0\r\n\r\n", 1);
        assert_eq!(got.as_deref(), Ok(&b""[..]));
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for wire in [
            &b"x\r\nab\r\n"[..],
            b"2\r\nabc\r\n",
            b"fffffffffffffffff\r\n",
            b"\r\n",
        ] {
            assert!(
                decode_all(BodyDecoder::new(Framing::Chunked), wire, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

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
        ] {
            assert!(matches!(parse(bad), Err(HeadError::Bad(_))), "{bad}");
        }
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
                .unwrap_err(),
            HeadError::UnsupportedCoding
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
}
