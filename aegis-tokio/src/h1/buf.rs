//! A connection's read buffer: what was read from a socket and not yet consumed; and the
//! worker's spare buffers, so that an idle connection holds none.
//!
//! A connection takes a buffer from its thread's spares when it reads and parks it (gives it
//! back) when it goes idle with nothing left unconsumed: an idle keep-alive connection costs
//! no buffer, and a busy worker reuses the same few without allocating or zeroing. Write buffers are lent the same way ([`take_write_buf`]).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncRead;

/// Bytes read from a socket at a time once the buffer has room for no more.
const READ_CHUNK: usize = 16 * 1024;
/// Spare buffers a worker keeps (more are freed).
const SPARES: usize = 256;
/// A write buffer kept as a spare is at most this large (a larger one is freed).
const MAX_SPARE_WRITE: usize = 128 * 1024;

thread_local! {
    /// Zero-filled read buffers of `READ_CHUNK` bytes, and empty write buffers.
    static SPARE_READ: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static SPARE_WRITE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty write buffer from the thread's spares (or a new one).
pub fn take_write_buf() -> Vec<u8> {
    SPARE_WRITE
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Gives a write buffer back to the thread's spares.
pub fn give_write_buf(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > MAX_SPARE_WRITE {
        return;
    }
    buf.clear();
    let _ = SPARE_WRITE.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARES {
            s.push(buf);
        }
    });
}

/// A connection's read buffer: bytes `start..end` are read and not yet consumed. It holds an
/// allocation only while it reads or holds bytes (see the module's notes).
#[derive(Debug)]
pub struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes read into it over its life (progress, for a stall timeout).
    read: u64,
}

impl ReadBuf {
    /// An empty buffer; it allocates when it first reads.
    pub fn new() -> ReadBuf {
        ReadBuf {
            data: Vec::new(),
            start: 0,
            end: 0,
            read: 0,
        }
    }

    /// Gives the allocation back to the thread's spares when nothing is left in it: for a
    /// connection about to wait idle (between requests; pooled). It takes one again when it
    /// next reads.
    pub fn park(&mut self) {
        if self.start != self.end || self.data.is_empty() {
            return;
        }
        let data = std::mem::take(&mut self.data);
        self.start = 0;
        self.end = 0;
        if data.len() != READ_CHUNK {
            return;
        }
        let _ = SPARE_READ.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARES {
                s.push(data);
            }
        });
    }

    fn acquire(&mut self) {
        self.data = SPARE_READ
            .try_with(|s| s.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| vec![0; READ_CHUNK]);
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
        if self.data.is_empty() {
            self.acquire();
        }
        if !self.make_room(limit) {
            return Poll::Ready(Err(io::ErrorKind::OutOfMemory.into()));
        }
        let mut rb = tokio::io::ReadBuf::new(&mut self.data[self.end..]);
        if Pin::new(io).poll_read(cx, &mut rb)?.is_pending() {
            return Poll::Pending;
        }
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
