//! A connection's read buffer: what was read from a socket and not yet consumed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncRead;

/// Bytes read from a socket at a time once the buffer has room for no more.
const READ_CHUNK: usize = 16 * 1024;

/// A connection's read buffer: bytes `start..end` are read and not yet consumed. It is zeroed
/// once when grown and reused for every message on the connection.
#[derive(Debug)]
pub struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes read into it over its life (progress, for a stall timeout).
    read: u64,
}

impl ReadBuf {
    pub fn new() -> ReadBuf {
        ReadBuf {
            data: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            read: 0,
        }
    }

    /// Bytes read into the buffer over its life: it grows while bytes arrive.
    pub fn read_total(&self) -> u64 {
        self.read
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
    pub fn poll_fill<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut R,
        limit: usize,
    ) -> Poll<io::Result<usize>> {
        if !self.make_room(limit) {
            return Poll::Ready(Err(io::ErrorKind::OutOfMemory.into()));
        }
        let mut rb = tokio::io::ReadBuf::new(&mut self.data[self.end..]);
        ready!(Pin::new(io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.end += n;
        self.read += n as u64;
        Poll::Ready(Ok(n))
    }
}

impl Default for ReadBuf {
    fn default() -> Self {
        ReadBuf::new()
    }
}
