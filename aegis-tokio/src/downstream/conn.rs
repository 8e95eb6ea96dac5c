//! A client connection's I/O state, shared by its loop and its request body: both run in the
//! connection's one task (spawned on the worker's `LocalSet`), so no lock and no atomics.

use std::cell::{RefCell, RefMut};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::h1::{BodyDecoder, ReadBuf};

/// The connection's socket (any byte stream: TCP, or an in-memory pipe in tests) and read
/// state.
#[derive(Debug)]
pub(super) struct Io<S> {
    pub(super) stream: S,
    pub(super) rbuf: ReadBuf,
    /// The current request's body still to be read (`None`: read, or there was none).
    pub(super) body: Option<BodyDecoder>,
    /// `100 Continue` bytes still to send before the body is read.
    pub(super) continue_left: &'static [u8],
}

pub(super) type Conn<S> = Rc<RefCell<Io<S>>>;

pub(super) fn new<S>(stream: S) -> Conn<S> {
    Rc::new(RefCell::new(Io {
        stream,
        rbuf: ReadBuf::new(),
        body: None,
        continue_left: b"",
    }))
}

pub(super) fn lock<S>(c: &Conn<S>) -> RefMut<'_, Io<S>> {
    c.borrow_mut()
}

/// A socket with some of its bytes already read: those are read again first.
#[derive(Debug)]
pub(super) struct Prefixed<S> {
    pub(super) prefix: Vec<u8>,
    pub(super) pos: usize,
    pub(super) io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
