//! A raw HTTP/2 client for attacking the gateway: frames written by hand (RFC 9113 §4: a
//! 9-byte header and a payload), request headers as HPACK literals without Huffman coding
//! (RFC 7541 §6.2, no table needed), so that it can send what no well-behaved client would:
//! rapid resets, CONTINUATION floods, HPACK bombs, malformed and oversized header blocks,
//! bodies that disagree with their `content-length`, a window that never opens.
//!
//! The gateway's own header blocks are decoded with `loona-hpack` (its encoder uses Huffman
//! coding and the dynamic table). [`Reader`] is the pure half (bytes in, frames out) that a
//! test over an in-memory pipe can use; [`H2Conn`] drives it over a blocking `TcpStream`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
pub mod ty {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
}

/// Error codes (RFC 9113 §7).
pub mod code {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const COMPRESSION_ERROR: u32 = 0x9;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// Settings identifiers (RFC 9113 §6.5.2).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

// ---------------------------------------------------------------------------------------------
// Writing frames.

/// One frame: length, type, flags, stream id, payload.
pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < 1 << 24, "frame payload of {len} bytes");
    let mut f = Vec::with_capacity(9 + len);
    f.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::with_capacity(6 * params.len());
    for (id, v) in params {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(ty::SETTINGS, 0, 0, &p)
}

pub fn settings_ack() -> Vec<u8> {
    frame(ty::SETTINGS, flag::ACK, 0, &[])
}

pub fn ping(data: [u8; 8]) -> Vec<u8> {
    frame(ty::PING, 0, 0, &data)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(ty::RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(ty::WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

pub fn data(stream: u32, bytes: &[u8], end_stream: bool) -> Vec<u8> {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    frame(ty::DATA, flags, stream, bytes)
}

/// A HEADERS frame carrying `block` (END_HEADERS set), ending the stream if `end_stream`.
pub fn headers(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
    frame(ty::HEADERS, flags, stream, block)
}

// ---------------------------------------------------------------------------------------------
// HPACK, by hand (RFC 7541).

/// An integer with an `n`-bit prefix whose high bits are `first` (§5.1).
pub fn hpack_int(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A string literal, not Huffman-coded (§5.2).
fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// A field as a literal without indexing, new name (§6.2.2): the name is sent as given, so
/// it may be upper-case or a pseudo-header anywhere.
pub fn literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x00);
    hpack_str(out, name.as_bytes());
    hpack_str(out, value);
}

/// A field as a literal with incremental indexing, new name (§6.2.1): it enters the
/// server's dynamic table (index 62 when newest).
pub fn literal_indexed(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x40);
    hpack_str(out, name.as_bytes());
    hpack_str(out, value);
}

/// An indexed field (§6.1): one byte for the first 127 entries.
pub fn indexed(out: &mut Vec<u8>, index: usize) {
    hpack_int(out, 0x80, 7, index);
}

/// A header block of literals, in the order given.
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        literal(&mut b, n, v.as_bytes());
    }
    b
}

/// The four pseudo-headers of a request (`http`, authority `x`), then `extra`.
pub fn request_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![
        (":method", method),
        (":scheme", "http"),
        (":authority", "x"),
        (":path", path),
    ];
    fields.extend_from_slice(extra);
    block(&fields)
}

// ---------------------------------------------------------------------------------------------
// Reading frames.

/// A frame from the gateway; a HEADERS block (with its CONTINUATIONs) comes decoded.
#[derive(Debug, Clone)]
pub struct Frame {
    pub ty: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
    /// HEADERS: the decoded fields (names lower-case as sent).
    pub fields: Vec<(String, String)>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.ty {
            ty::RST_STREAM => 0,
            ty::GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A GOAWAY's last stream id.
    pub fn last_stream(&self) -> Option<u32> {
        let b = self.payload.get(..4).filter(|_| self.ty == ty::GOAWAY)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
    }

    /// A GOAWAY's debug data, as text.
    pub fn debug_data(&self) -> String {
        String::from_utf8_lossy(self.payload.get(8..).unwrap_or_default()).into_owned()
    }

    pub fn is(&self, t: u8) -> bool {
        self.ty == t
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags & f == f
    }

    /// `:status` of a HEADERS frame.
    pub fn status(&self) -> Option<u16> {
        self.field(":status").and_then(|s| s.parse().ok())
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits the gateway's bytes into frames and decodes header blocks (the HPACK decoder's
/// table lives as long as the connection).
pub struct Reader {
    buf: Vec<u8>,
    decoder: loona_hpack::Decoder<'static>,
    /// A HEADERS frame waiting for its CONTINUATIONs, and its block so far.
    partial: Option<(Frame, Vec<u8>)>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl Default for Reader {
    fn default() -> Self {
        Reader {
            buf: Vec::new(),
            decoder: loona_hpack::Decoder::new(),
            partial: None,
        }
    }
}

impl Reader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if buffered; a header block only once it is complete.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if self.buf.len() < 9 {
                return Ok(None);
            }
            let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
            if self.buf.len() < 9 + len {
                return Ok(None);
            }
            let mut f = Frame {
                ty: self.buf[3],
                flags: self.buf[4],
                stream: u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]])
                    & 0x7fff_ffff,
                payload: self.buf[9..9 + len].to_vec(),
                fields: Vec::new(),
            };
            self.buf.drain(..9 + len);
            match f.ty {
                ty::HEADERS => {
                    let block = header_fragment(&f)?;
                    if f.has(flag::END_HEADERS) {
                        f.fields = self.decode(&block)?;
                        return Ok(Some(f));
                    }
                    self.partial = Some((f, block));
                }
                ty::CONTINUATION => {
                    let (mut head, mut block) = self.partial.take().ok_or_else(|| {
                        io::Error::other("CONTINUATION without HEADERS from the gateway")
                    })?;
                    block.extend_from_slice(&f.payload);
                    if f.has(flag::END_HEADERS) {
                        head.fields = self.decode(&block)?;
                        head.flags |= flag::END_HEADERS;
                        return Ok(Some(head));
                    }
                    self.partial = Some((head, block));
                }
                _ => return Ok(Some(f)),
            }
        }
    }

    fn decode(&mut self, block: &[u8]) -> io::Result<Vec<(String, String)>> {
        let fields = self
            .decoder
            .decode(block)
            .map_err(|e| io::Error::other(format!("HPACK from the gateway: {e:?}")))?;
        Ok(fields
            .into_iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(&n).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect())
    }
}

/// A HEADERS frame's block fragment, without padding and priority.
fn header_fragment(f: &Frame) -> io::Result<Vec<u8>> {
    let mut p = &f.payload[..];
    let mut pad = 0;
    if f.has(0x8) {
        pad = *p
            .first()
            .ok_or_else(|| io::Error::other("empty padded HEADERS"))? as usize;
        p = &p[1..];
    }
    if f.has(0x20) {
        p = p
            .get(5..)
            .ok_or_else(|| io::Error::other("short HEADERS"))?;
    }
    let end = p
        .len()
        .checked_sub(pad)
        .ok_or_else(|| io::Error::other("padding longer than HEADERS"))?;
    Ok(p[..end].to_vec())
}

// ---------------------------------------------------------------------------------------------
// A blocking connection.

/// How a stream ended, as the client saw it.
#[derive(Debug, Clone)]
pub enum Ended {
    /// A whole response: status, fields, body (END_STREAM seen).
    Response(Response),
    /// RST_STREAM on the stream, with its error code.
    Reset(u32),
    /// GOAWAY on the connection: its error code and debug data.
    GoAway(u32, String),
    /// The connection closed (or was reset) without either.
    Closed,
}

impl Ended {
    /// The response, or a panic saying how the stream ended instead.
    pub fn response(self) -> Response {
        match self {
            Ended::Response(r) => r,
            other => panic!("expected a response, the stream ended with {other:?}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub fields: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An h2c connection to the gateway over a blocking socket with read and write timeouts.
#[derive(Debug)]
pub struct H2Conn {
    pub s: TcpStream,
    pub reader: Reader,
    /// Frames of other streams read while waiting for one stream's: kept for their turn.
    later: std::collections::VecDeque<Frame>,
}

impl H2Conn {
    /// Connects and writes the preface and a SETTINGS frame with `params`; reads nothing.
    pub fn open(addr: SocketAddr, params: &[(u16, u32)]) -> H2Conn {
        let s = crate::connect_raw(addr, crate::IO_TIMEOUT);
        let mut c = H2Conn {
            s,
            reader: Reader::default(),
            later: Default::default(),
        };
        let mut hello = PREFACE.to_vec();
        hello.extend_from_slice(&settings(params));
        c.send(&hello).expect("write the HTTP/2 preface");
        c
    }

    /// [`H2Conn::open`], then waits for the gateway's SETTINGS and acknowledges them.
    pub fn handshake(addr: SocketAddr, params: &[(u16, u32)]) -> H2Conn {
        let mut c = H2Conn::open(addr, params);
        let f = c.frame().expect("the gateway's first frame");
        assert!(
            f.is(ty::SETTINGS) && !f.has(flag::ACK),
            "the first frame is SETTINGS: {f:?}"
        );
        c.send(&settings_ack()).expect("ack the gateway's settings");
        c
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.s.write_all(bytes)
    }

    /// The next frame; `UnexpectedEof` when the gateway closed the connection.
    pub fn frame(&mut self) -> io::Result<Frame> {
        let mut b = [0u8; 16 * 1024];
        loop {
            if let Some(f) = self.reader.next_frame()? {
                return Ok(f);
            }
            let n = self.s.read(&mut b)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.reader.push(&b[..n]);
        }
    }

    /// The next frame of `stream` or of the connection (stream 0); other streams' frames
    /// are kept for later.
    fn frame_for(&mut self, stream: u32) -> io::Result<Frame> {
        if let Some(i) = self.later.iter().position(|f| f.stream == stream) {
            return Ok(self.later.remove(i).expect("a kept frame"));
        }
        loop {
            let f = self.frame()?;
            if f.stream == stream || f.stream == 0 {
                return Ok(f);
            }
            self.later.push_back(f);
        }
    }

    /// Reads until `stream` ends (a whole response, a reset) or the connection does (GOAWAY,
    /// close). Along the way it acknowledges SETTINGS, answers PINGs and, when `open_window`,
    /// gives back the window its data used, as a well-behaved client does.
    pub fn finish(&mut self, stream: u32, open_window: bool) -> Ended {
        let mut resp: Option<Response> = None;
        loop {
            let f = match self.frame_for(stream) {
                Ok(f) => f,
                Err(_) => return Ended::Closed,
            };
            match f.ty {
                ty::SETTINGS if !f.has(flag::ACK) => {
                    let _ = self.send(&settings_ack());
                }
                ty::PING if !f.has(flag::ACK) => {
                    let mut d = [0u8; 8];
                    d.copy_from_slice(&f.payload[..8]);
                    let _ = self.send(&frame(ty::PING, flag::ACK, 0, &d));
                }
                ty::GOAWAY => return Ended::GoAway(f.error_code().unwrap_or(0), f.debug_data()),
                ty::RST_STREAM if f.stream == stream => {
                    return Ended::Reset(f.error_code().unwrap_or(0));
                }
                ty::HEADERS if f.stream == stream => {
                    match resp.as_mut() {
                        // Interim (1xx) heads are skipped.
                        None if f.status().is_some_and(|s| s >= 200) => {
                            resp = Some(Response {
                                status: f.status().unwrap_or(0),
                                fields: f.fields.clone(),
                                body: Vec::new(),
                            });
                        }
                        None => continue,
                        // Trailers.
                        Some(r) => r.fields.extend(f.fields.iter().cloned()),
                    }
                    if f.has(flag::END_STREAM) {
                        return resp.map_or(Ended::Closed, Ended::Response);
                    }
                }
                ty::DATA if f.stream == stream => {
                    if open_window && !f.payload.is_empty() {
                        let n = f.payload.len() as u32;
                        let mut wu = window_update(0, n);
                        if !f.has(flag::END_STREAM) {
                            wu.extend_from_slice(&window_update(stream, n));
                        }
                        let _ = self.send(&wu);
                    }
                    if let Some(r) = resp.as_mut() {
                        r.body.extend_from_slice(&f.payload);
                    }
                    if f.has(flag::END_STREAM) {
                        return resp.map_or(Ended::Closed, Ended::Response);
                    }
                }
                _ => {}
            }
        }
    }

    /// Sends a request with no body on `stream` and reads its answer.
    pub fn get(&mut self, stream: u32, path: &str) -> Ended {
        self.send(&headers(stream, &request_block("GET", path, &[]), true))
            .expect("write a request");
        self.finish(stream, true)
    }

    /// Reads frames until the gateway closes the connection, within `within`; returns them
    /// (PINGs answered on the way). Panics if the connection is still open then.
    pub fn until_closed(&mut self, within: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the gateway kept the connection open past {within:?}; frames: {seen:?}"
            );
            self.s.set_read_timeout(Some(left)).unwrap();
            match self.frame() {
                Ok(f) => {
                    if f.is(ty::PING) && !f.has(flag::ACK) {
                        let mut d = [0u8; 8];
                        d.copy_from_slice(&f.payload[..8]);
                        let _ = self.send(&frame(ty::PING, flag::ACK, 0, &d));
                    }
                    seen.push(f);
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof || crate::is_reset(&e) => {
                    return seen;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading from the gateway: {e}"),
            }
        }
    }
}

/// The GOAWAY among `frames`, if any.
pub fn goaway(frames: &[Frame]) -> Option<&Frame> {
    frames.iter().find(|f| f.is(ty::GOAWAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_integers_follow_rfc_7541() {
        let mut r = Reader::default();
        r.push(&rst_stream(3, code::CANCEL));
        r.push(&frame(
            ty::GOAWAY,
            0,
            0,
            &[0, 0, 0, 5, 0, 0, 0, 0xb, b'h', b'i'],
        ));
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!(
            (f.ty, f.stream, f.error_code()),
            (ty::RST_STREAM, 3, Some(8))
        );
        let g = r.next_frame().unwrap().unwrap();
        assert_eq!(g.last_stream(), Some(5));
        assert_eq!(g.error_code(), Some(code::ENHANCE_YOUR_CALM));
        assert_eq!(g.debug_data(), "hi");
        assert!(r.next_frame().unwrap().is_none());
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        hpack_int(&mut out, 0, 5, 1337);
        assert_eq!(out, [31, 154, 10]);
    }

    #[test]
    fn hand_written_literals_decode_with_a_real_decoder() {
        let mut b = request_block("GET", "/a", &[("x-y", "z")]);
        literal_indexed(&mut b, "big", b"v");
        indexed(&mut b, 62);
        let mut r = Reader::default();
        // Split over a HEADERS and a CONTINUATION.
        let (one, two) = b.split_at(5);
        r.push(&frame(ty::HEADERS, 0, 1, one));
        r.push(&frame(ty::CONTINUATION, flag::END_HEADERS, 1, two));
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!(f.field(":path"), Some("/a"));
        assert_eq!(f.field("x-y"), Some("z"));
        let bigs: Vec<_> = f.fields.iter().filter(|(k, _)| k == "big").collect();
        assert_eq!(bigs.len(), 2);
    }
}
