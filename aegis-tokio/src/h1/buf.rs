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

use http::HeaderMap;
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
    /// Emptied request header maps (their allocations: a head's dozen headers take ~2 KiB).
    static SPARE_HEADERS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// A header map with room, from the thread's spares, for a head about to be parsed into
/// `headers` when it has none (it was parked while its connection was idle).
pub fn unpark_headers(headers: &mut HeaderMap) {
    if headers.capacity() == 0
        && let Some(spare) = SPARE_HEADERS
            .try_with(|s| s.borrow_mut().pop())
            .ok()
            .flatten()
    {
        *headers = spare;
    }
}

/// Gives a connection's header map to the thread's spares while the connection waits idle,
/// leaving an empty one (no allocation) in its place.
pub fn park_headers(headers: &mut HeaderMap) {
    if headers.capacity() == 0 {
        return;
    }
    let mut map = std::mem::take(headers);
    map.clear();
    let _ = SPARE_HEADERS.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARES {
            s.push(map);
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_parks_its_header_map_and_the_next_head_takes_one_back() {
        let mut headers = HeaderMap::with_capacity(16);
        headers.insert(http::header::HOST, http::HeaderValue::from_static("a"));
        park_headers(&mut headers);
        assert_eq!(
            headers.capacity(),
            0,
            "an idle connection holds no header map"
        );
        let mut next = HeaderMap::new();
        unpark_headers(&mut next);
        assert!(next.capacity() >= 16, "the spare is reused");
        assert!(next.is_empty(), "and comes back empty");
        // A map that still has room keeps its own.
        let mut busy = HeaderMap::with_capacity(4);
        let before = busy.capacity();
        unpark_headers(&mut busy);
        assert_eq!(busy.capacity(), before);
    }
}
