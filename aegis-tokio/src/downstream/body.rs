//! A client's request body, read from its connection as the upstream exchange polls it; a
//! `100 Continue` goes out when it is first polled.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::{Conn, lock};
use crate::h1::{self, BodyDecoder, ReadError};

/// Bytes read per body frame.
pub(super) const BODY_READ: usize = 16 * 1024;

/// A client's request body, read from its connection as it is polled.
#[derive(Debug)]
pub struct ReqBody<S> {
    conn: Option<Conn<S>>,
    /// Bytes still to come when the framing says (Content-Length).
    size: Option<u64>,
}

impl<S> ReqBody<S> {
    pub(super) fn empty() -> ReqBody<S> {
        ReqBody {
            conn: None,
            size: Some(0),
        }
    }

    /// The body of the request whose head was just read: `decoder` is put on the connection.
    pub(super) fn new(conn: &Conn<S>, decoder: BodyDecoder, expect_continue: bool) -> ReqBody<S> {
        let size = decoder.remaining();
        let mut io = lock(conn);
        io.body = Some(decoder);
        if expect_continue {
            io.continue_left = b"HTTP/1.1 100 Continue\r\n\r\n";
        }
        ReqBody {
            conn: Some(conn.clone()),
            size,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Body for ReqBody<S> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let Some(conn) = &this.conn else {
            return Poll::Ready(None);
        };
        let mut guard = lock(conn);
        let io = &mut *guard;
        while !io.continue_left.is_empty() {
            match ready!(Pin::new(&mut io.stream).poll_write(cx, io.continue_left)) {
                Ok(n) if n > 0 => io.continue_left = &io.continue_left[n..],
                Ok(_) => return Poll::Ready(Some(Err(io::ErrorKind::WriteZero.into()))),
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
        let Some(decoder) = io.body.as_mut() else {
            drop(guard);
            this.conn = None;
            return Poll::Ready(None);
        };
        match ready!(h1::poll_body(
            cx,
            decoder,
            &mut io.rbuf,
            &mut io.stream,
            BODY_READ
        )) {
            Ok(Some(data)) => {
                this.size = decoder.remaining();
                if decoder.is_done() {
                    io.body = None;
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(None) => {
                io.body = None;
                drop(guard);
                this.conn = None;
                Poll::Ready(None)
            }
            Err(ReadError::Malformed(e)) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("request body: {e}"),
            )))),
            Err(ReadError::Closed) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed the connection mid-body",
            )))),
            Err(ReadError::Io(e)) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.size == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.size {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
