//! Writing a response to the client: the head (the upstream's raw header lines, the
//! gateway's own headers, this hop's framing) and then the body, in as few writes as it
//! allows; and closing a connection without losing its last response to a reset.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use http::header::{CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::BODY_READ;
use super::conn::{Conn, lock};
use crate::gateway::ProxyBody;
use crate::h1::{self, Framing, Pumped};
use crate::record::RequestId;
use crate::time::{Stall, Timer};

/// How long a closing connection keeps reading (and dropping) what the client still sends,
/// so that the response is not destroyed by a reset.
const LINGER: Duration = Duration::from_secs(2);

/// How a response is to be written.
pub(super) struct Out<'a> {
    pub(super) request_id: Option<&'a RequestId>,
    /// The request's version and method.
    pub(super) version: Version,
    pub(super) head_request: bool,
    /// The connection may stay open after it.
    pub(super) keep: bool,
    /// A client that takes no bytes for this long is disconnected (`server.idle_timeout`).
    pub(super) stall: Duration,
    /// A `101` to an upgrade: the protocol switched to (the head says so, then a tunnel).
    pub(super) upgrade: Option<&'a HeaderValue>,
}

/// Writes a response: the head, then the body, in as few writes as it allows. `Ok(false)`:
/// the body is delimited by the close, so the connection must close.
pub(super) async fn write_response<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &Conn<S>,
    wbuf: &mut Vec<u8>,
    resp: Response<ProxyBody>,
    out: Out<'_>,
    timer: &mut Timer,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let (framing, keep) = put_head(wbuf, &parts, &body, &out);
    if let (ProxyBody::Upstream(up), Some(Framing::Length(_))) = (&mut body, framing) {
        up.read_buffered_into(wbuf);
    }
    let written = pump(conn, wbuf, &mut body, framing, timer, out.stall).await;
    // The buffer goes back to the worker's spares between responses.
    h1::give_write_buf(std::mem::take(wbuf));
    written?;
    Ok(keep)
}

/// Writes the `101 Switching Protocols` head of an upgrade and hands back the upstream's
/// connection (its socket and what it sent past the head) for the tunnel.
pub(super) async fn write_upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &Conn<S>,
    wbuf: &mut Vec<u8>,
    resp: Response<ProxyBody>,
    out: Out<'_>,
    timer: &mut Timer,
) -> io::Result<Option<(crate::upstream::Stream, Vec<u8>)>> {
    let (parts, body) = resp.into_parts();
    let _ = put_head(wbuf, &parts, &body, &out);
    pump(
        conn,
        wbuf,
        &mut ProxyBody::Full(None),
        None,
        timer,
        out.stall,
    )
    .await?;
    Ok(match body {
        ProxyBody::Upstream(up) => up.into_upgraded(),
        ProxyBody::Full(_) => None,
    })
}

/// A response head into `wbuf`: the status line, the upstream's raw header lines and the
/// gateway's own, this hop's framing and connection headers. Returns the body's framing on
/// the wire (`None`: no body) and whether the connection may stay open after it.
fn put_head(
    wbuf: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &ProxyBody,
    out: &Out<'_>,
) -> (Option<Framing>, bool) {
    let (version, head_request) = (out.version, out.head_request);
    let status = parts.status;
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        None
    } else {
        Some(match body.size_hint().exact() {
            Some(n) => Framing::Length(n),
            None if version == Version::HTTP_11 => Framing::Chunked,
            None => Framing::Close,
        })
    };
    let keep = out.keep && framing != Some(Framing::Close);

    if wbuf.capacity() == 0 {
        *wbuf = h1::take_write_buf();
    }
    wbuf.clear();
    h1::put_status_line(wbuf, status);
    let raw = match body {
        ProxyBody::Upstream(up) => up.headers(),
        ProxyBody::Full(_) => None,
    };
    if let Some(raw) = raw {
        put_upstream_headers(wbuf, raw, &parts.headers, framing.is_some());
    }
    let has_date = raw.is_some_and(|r| r.has_date);
    for (name, value) in &parts.headers {
        // The framing headers are this hop's (a HEAD or 304 answer keeps the length it names).
        if framing.is_some() && (name == CONTENT_LENGTH || name == TRANSFER_ENCODING) {
            continue;
        }
        h1::put_header(wbuf, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(id) = out.request_id {
        h1::put_header(wbuf, b"x-request-id", id.as_bytes());
    }
    if !has_date && !parts.headers.contains_key(DATE) {
        h1::put_header(wbuf, b"date", h1::date().as_bytes());
    }
    // The length of the body sent, or (the gateway's own answer to HEAD) of the body a GET
    // would have had (RFC 9110 §9.3.2; an upstream's answer carries its own).
    let length = match (&framing, body) {
        (Some(Framing::Length(n)), _) => Some(*n),
        (None, ProxyBody::Full(Some(b))) if head_request => Some(b.len() as u64),
        _ => None,
    };
    if let Some(n) = length {
        wbuf.extend_from_slice(b"content-length: ");
        h1::put_u64(wbuf, n);
        wbuf.extend_from_slice(b"\r\n");
    } else if framing == Some(Framing::Chunked) {
        // Codings the upstream applied besides chunked stay on the body: the client is told.
        match raw.map(|r| &r.codings[..]) {
            Some(codings) if !codings.is_empty() => {
                wbuf.extend_from_slice(b"transfer-encoding: ");
                wbuf.extend_from_slice(codings);
                wbuf.extend_from_slice(b", chunked\r\n");
            }
            _ => wbuf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
    }
    if let Some(proto) = out.upgrade {
        wbuf.extend_from_slice(b"connection: upgrade\r\n");
        h1::put_header(wbuf, b"upgrade", proto.as_bytes());
    } else if !keep {
        wbuf.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        wbuf.extend_from_slice(b"connection: keep-alive\r\n");
    }
    wbuf.extend_from_slice(b"\r\n");
    (framing, keep)
}

/// Writes what `wbuf` holds, then `body` in `framing`; a client that takes no bytes for
/// `stall` fails it.
async fn pump<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &Conn<S>,
    wbuf: &mut Vec<u8>,
    body: &mut ProxyBody,
    framing: Option<Framing>,
    timer: &mut Timer,
    stall: Duration,
) -> io::Result<()> {
    let mut pump = h1::Pump::new(framing);
    let mut stalled = Stall::default();
    poll_fn(|cx| {
        let mut io = lock(conn);
        match pump.poll(cx, wbuf, Pin::new(&mut *body), &mut io.stream) {
            Pumped::Done => Poll::Ready(Ok(())),
            Pumped::WritePending => {
                if timer.timed_out(stalled.deadline(pump.written(), stall), cx) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client took no response bytes within server.idle_timeout",
                    )));
                }
                Poll::Pending
            }
            // The upstream's pace, not the client's.
            Pumped::BodyPending => Poll::Pending,
            Pumped::WriteFailed(e) => Poll::Ready(Err(e)),
            Pumped::BodyFailed(e) => Poll::Ready(Err(io::Error::other(e))),
        }
    })
    .await
}

/// Writes the upstream's response headers (already without hop-by-hop ones and
/// `Content-Length`), minus those the gateway sets (`set`: rate-limit headers; and the
/// request id, always).
fn put_upstream_headers(out: &mut Vec<u8>, raw: &h1::RawHeaders, set: &HeaderMap, framed: bool) {
    if raw.may_collide {
        for (name, _, line) in raw.lines() {
            let gateways = name.eq_ignore_ascii_case(b"x-request-id")
                || set
                    .keys()
                    .any(|k| name.eq_ignore_ascii_case(k.as_str().as_bytes()));
            if !gateways {
                out.extend_from_slice(line);
            }
        }
    } else {
        out.extend_from_slice(raw.as_bytes());
    }
    if !framed && let Some(n) = raw.content_length {
        out.extend_from_slice(b"content-length: ");
        h1::put_u64(out, n);
        out.extend_from_slice(b"\r\n");
    }
}

/// A gateway-made answer on a connection that then closes.
pub(super) async fn respond_and_close<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &Conn<S>,
    wbuf: &mut Vec<u8>,
    resp: Response<ProxyBody>,
    timer: &mut Timer,
    stall: Duration,
) -> io::Result<()> {
    let out = Out {
        request_id: None,
        version: Version::HTTP_11,
        head_request: false,
        keep: false,
        stall,
        upgrade: None,
    };
    write_response(conn, wbuf, resp, out, timer).await?;
    close(conn, true).await;
    Ok(())
}

/// Closes the connection: shuts down the write side and, when the client may still be
/// sending, reads and drops what it sends for up to [`LINGER`], so the response is not lost
/// to a reset.
pub(super) async fn close<S: AsyncRead + AsyncWrite + Unpin>(conn: &Conn<S>, linger: bool) {
    let _ = poll_fn(|cx| Pin::new(&mut lock(conn).stream).poll_shutdown(cx)).await;
    if !linger {
        return;
    }
    let drain = poll_fn(|cx| {
        let mut guard = lock(conn);
        let io = &mut *guard;
        loop {
            io.rbuf.consume(io.rbuf.filled().len());
            match io.rbuf.poll_fill(cx, &mut io.stream, BODY_READ) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    });
    let _ = tokio::time::timeout(LINGER, drain).await;
}
