//! The upstream connection pool: HTTP/1.1 keep-alive connections per target authority, one
//! pool per worker thread (no locks; a connection is only ever used by the thread that made
//! it).
//!
//! Idle connections sit in the pool unpolled; one the upstream closed (or that holds stray
//! bytes) is seen as readable when checked out and dropped. Idle for [`IDLE`] or beyond
//! [`MAX_IDLE`] per target, they are closed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::task::Context;
use std::time::Duration;

use tokio::time::Instant;

use tokio::net::TcpStream;

use super::target::Key;
use crate::h1::{self, BodyDecoder, ReadBuf};
use crate::time::{Stall, Timer};

/// An idle pooled connection is closed after this long.
const IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per target per worker; more are closed when released.
const MAX_IDLE: usize = 512;
/// The largest response head accepted from an upstream.
pub(super) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// One upstream connection, its buffers, its timer and the state of the response it is
/// reading. Boxed: it is moved in and out of the pool and through every response body, a
/// pointer is cheaper to move (and the response's state rides along without being copied).
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) io: TcpStream,
    pub(super) rbuf: ReadBuf,
    /// Pooled and unused until then: closed (set when pooled, [`IDLE`] after use).
    pub(super) idle_until: Instant,
    pub(super) timer: Timer,
    /// The request being written (kept for the connection's next request).
    pub(super) wbuf: Vec<u8>,
    /// The current response's headers (their buffer kept for the next response).
    pub(super) headers: h1::RawHeaders,
    pub(super) body: BodyState,
}

/// Where the current response's body is.
#[derive(Debug)]
pub(super) struct BodyState {
    pub(super) decoder: BodyDecoder,
    /// The connection can carry another exchange after this body.
    pub(super) reusable: bool,
    /// When the exchange began (the connection's idle time counts from it once pooled).
    pub(super) began: Instant,
    /// No body bytes for this long fails the body (the route's timeout).
    pub(super) stall: Duration,
    /// The deadline while no body bytes come.
    pub(super) stalled: Stall,
}

impl Conn {
    /// A fresh connection over `io`, with no response read yet.
    pub(super) fn new(io: TcpStream) -> Box<Conn> {
        let now = Instant::now();
        Box::new(Conn {
            io,
            rbuf: ReadBuf::new(),
            idle_until: now + IDLE,
            timer: Timer::default(),
            wbuf: Vec::with_capacity(1024),
            headers: h1::RawHeaders::default(),
            body: BodyState {
                decoder: BodyDecoder::Length(0),
                reusable: false,
                began: now,
                stall: Duration::ZERO,
                stalled: Stall::default(),
            },
        })
    }

    /// Still usable: nothing to read (the upstream has not closed it nor sent stray bytes).
    pub(super) fn is_quiet(&mut self, cx: &mut Context<'_>) -> bool {
        self.rbuf.is_empty()
            && self
                .rbuf
                .poll_fill(cx, &mut self.io, MAX_RESPONSE_HEAD)
                .is_pending()
    }
}

thread_local! {
    /// Idle connections by [`Key`].
    static POOL: RefCell<Vec<VecDeque<Box<Conn>>>> = const { RefCell::new(Vec::new()) };
}

/// Takes the most recently used live idle connection of slot `key`.
pub(super) fn checkout(key: Key, now: Instant, cx: &mut Context<'_>) -> Option<Box<Conn>> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.get_mut(key.0)?;
        while let Some(mut c) = list.pop_back() {
            if c.idle_until <= now {
                // The rest are older still.
                list.clear();
                return None;
            }
            if c.is_quiet(cx) {
                return Some(c);
            }
        }
        None
    })
}

/// Puts a connection whose exchange is complete back in the pool. `now`: when the exchange
/// began (idle expiry is 90 s: the request's own duration does not matter, a clock read does).
pub(super) fn release(key: Key, mut conn: Box<Conn>, now: Instant) {
    conn.idle_until = now + IDLE;
    // `try_with`: a body dropped while its thread shuts down (the pool already gone) just
    // closes its connection.
    let _ = POOL.try_with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return;
        };
        if p.len() <= key.0 {
            p.resize_with(key.0 + 1, VecDeque::new);
        }
        let list = &mut p[key.0];
        while list.front().is_some_and(|c| c.idle_until <= now) {
            list.pop_front();
        }
        if list.len() < MAX_IDLE {
            list.push_back(conn);
        }
    });
}
