//! Writing: heads and chunks into a reused buffer, and the pump that moves a message and its
//! body's frames to a socket in as few writes as it allows.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, StatusCode};

use super::framing::Framing;

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
