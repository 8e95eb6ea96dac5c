//! An upstream response body, read from its connection as it is polled.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::pool::{self, Conn, MAX_RESPONSE_HEAD};
use super::target::Key;
use crate::h1::{self, BodyDecoder, ReadError};

/// An upstream response body, read from its connection as it is polled; the connection
/// returns to the pool once the body has been read to its end (or, an empty one, when the
/// body is dropped). Two words: what it is reading lives in the boxed connection.
#[derive(Debug)]
pub struct UpBody {
    pub(super) conn: Option<Box<Conn>>,
    pub(super) key: Key,
}

impl UpBody {
    /// The upstream's response headers as received (until the body is over).
    pub fn headers(&self) -> Option<&h1::RawHeaders> {
        self.conn.as_ref().map(|c| &c.headers)
    }

    /// Appends to `out` what the connection has already buffered of a `Content-Length` body
    /// (a small response arrives with its head): written with the head, no frame made.
    pub fn read_buffered_into(&mut self, out: &mut Vec<u8>) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let BodyDecoder::Length(left) = &mut conn.body.decoder else {
            return;
        };
        let filled = conn.rbuf.filled();
        let n = filled
            .len()
            .min(usize::try_from(*left).unwrap_or(usize::MAX));
        if n == 0 {
            return;
        }
        out.extend_from_slice(&filled[..n]);
        conn.rbuf.consume(n);
        *left -= n as u64;
        if *left == 0 {
            self.finish();
        }
    }

    /// The connection of a `101 Switching Protocols`, for a tunnel: the socket and the bytes
    /// the upstream already sent past the head.
    pub fn into_upgraded(mut self) -> Option<(super::Stream, Vec<u8>)> {
        let mut conn = self.conn.take()?;
        let early = conn.rbuf.take_filled();
        Some((conn.io, early))
    }

    /// Pools the connection if its body is over and it can be reused; else it closes.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && conn.body.reusable
            && conn.body.decoder.is_done()
            && conn.rbuf.is_empty()
        {
            pool::release(self.key, conn);
        }
    }
}

impl Drop for UpBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let body = &mut conn.body;
        let read = h1::poll_body(
            cx,
            &mut body.decoder,
            &mut conn.rbuf,
            &mut conn.io,
            MAX_RESPONSE_HEAD,
        );
        match read {
            Poll::Ready(Ok(Some(data))) => {
                if body.decoder.is_done() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Ok(None)) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                this.conn = None;
                Poll::Ready(Some(Err(match e {
                    ReadError::Malformed(e) => {
                        io::Error::new(io::ErrorKind::InvalidData, format!("upstream body: {e}"))
                    }
                    ReadError::Closed => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection mid-body",
                    ),
                    ReadError::Io(e) => e,
                })))
            }
            Poll::Pending => {
                let deadline = body.stalled.deadline(conn.rbuf.read_total(), body.stall);
                if conn.timer.timed_out(deadline, cx) {
                    this.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the upstream sent no body bytes within the route's timeout",
                    ))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.as_ref().is_none_or(|c| c.body.decoder.is_done())
    }

    fn size_hint(&self) -> SizeHint {
        match self.conn.as_ref().map(|c| c.body.decoder.remaining()) {
            None => SizeHint::with_exact(0),
            Some(Some(n)) => SizeHint::with_exact(n),
            Some(None) => SizeHint::default(),
        }
    }
}
